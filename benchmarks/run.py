"""``make bench``: throughput, latency and memory of one score worker on a real broker.

Run: ``python -m benchmarks.run [--quick] [--batch-size N] [--out results/bench.json]``.

Uses the local Kafka + registry (started if it is not running, and then stopped at the
end) or the cluster named by ``STREAMSCORE_BOOTSTRAP`` / ``STREAMSCORE_REGISTRY_URL``.
Every run creates its own topics (prefix ``bench.<run id>.``) and deletes them at the end.

What is measured, per model (a 100-tree HistGradientBoostingClassifier and a
StandardScaler + LogisticRegression pipeline, ten numeric features, ONNX in the worker):

1. **Throughput** draining a pre-filled events topic with ONE ``streamscore score``
   process. Source: the broker's own timestamps. The predictions topics are created with
   ``message.timestamp.type=LogAppendTime``, so every prediction carries the time the
   broker appended it; throughput is the central 90 % of a run's predictions divided by
   the time they took (``sustained``), and all of them first-to-last (``overall``).
   Median over ``repeats`` runs.
2. **End-to-end latency** on a live topic: the prediction's broker append time minus the
   event's own ``event_time`` (stamped by the benchmark's producer as it makes the event,
   so producer batching is included), split into the producer's share (the event's own
   broker append time, its topic is ``LogAppendTime`` too, minus ``event_time``) and the
   worker's (prediction appended minus event appended). Two offered loads, each after a
   paced warm-up that is not measured (the first seconds after a worker or a broker
   starts are slow: connections, JIT): a producer sending as fast as one Python process
   can (``full``: on a 2-CPU machine it takes a CPU from the worker and the broker, so
   the worker falls behind and the figure is mostly queueing), and a paced producer at
   a fixed rate (``paced``, 2,000/s).
3. **CPU and memory** of the worker process from ``/proc/<pid>/stat`` (utime + stime
   while draining, per 1,000 events) and ``/proc/<pid>/status`` (``VmHWM`` peak RSS,
   ``VmRSS``), for a short and a long run, to show that memory does not grow with the
   number of events processed.
4. **Naive baseline**, in this process: per message one ``poll``, one Avro decode, one
   scikit-learn ``predict_proba`` (the same fitted estimator the bundle was built from),
   one Avro encode and one ``produce``; same broker, same events. Reported with the
   worker/naive throughput ratio.

Prints a table and writes JSON (``results/bench.json`` by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamscore.cli import settings_from_env
from streamscore.core.config import (
    SIGNING_ENV,
    KafkaSettings,
    RegistrySettings,
    ScoringSettings,
    TopicSettings,
)
from streamscore.core.records import Role
from streamscore.kafka.admin import TopicSpec, create_topics
from streamscore.kafka.clients import reader_consumer
from streamscore.models.publish import ModelTopic
from streamscore.models.signing import Ed25519Signer, keygen
from streamscore.serde import schemas
from streamscore.serde.message import AvroDeserializer, AvroSerializer
from streamscore.serde.wire import WriterSchemaCache, registry_client
from tests.processes import launch, sample, worker_env

from . import naive, traffic, workload
from .measure import (
    Sample,
    high_watermarks,
    latency_figures,
    machine_jiffies,
    overall,
    proc_cpu_s,
    proc_mem_kb,
    read_topic,
    stage_us,
    sustained,
    tail,
)
from .report import print_table, summarize
from .results import FULL, QUICK, LatencyRun, NaiveRun, Profile, Results, WorkerRun

KEY_ID = "bench"
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}


# ------------------------------------------------------------------------ the bench


class Bench:
    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        profile: Profile,
        batch_size: int,
        workdir: Path,
        worker_args: tuple[str, ...] = (),
    ) -> None:
        self.worker_args = worker_args
        self.kafka = kafka
        self.registry_settings = registry
        self.p = profile
        self.batch_size = batch_size
        self.workdir = workdir
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(3)}"
        # a key pair per run: the bench publishes with the private key, workers get the
        # public key only
        self._keys_dir = tempfile.TemporaryDirectory(prefix="streamscore-bench-keys-")
        self.keys = keygen(Path(self._keys_dir.name), KEY_ID)
        self.key = Ed25519Signer.from_file(self.keys.private_file)
        self.admin = AdminClient({**kafka.client_config(), "log_level": 0})
        self.reg = registry_client(registry.client_config())
        self.created: list[str] = []
        self.schema_id = 0
        self.models: dict[str, workload.BenchModel] = {}
        self.events_topic = self.topic("events")
        # topics every worker of this run shares (events and predictions are per run)
        self.shared = TopicSettings(
            events=self.events_topic,
            telemetry=self.topic("telemetry"),
            feedback=self.topic("feedback"),
            dlq=self.topic("dlq"),
            late=self.topic("late"),
            # a worker refuses to start without each of its outputs (no shadow runs here)
            predictions_shadow=self.topic("predictions.shadow"),
        )
        self._seq = 0
        self.broker_pid: int | None = None  # set when the broker is the local cluster
        self.last_latency: tuple[np.ndarray, ...] | None = None

    # ---- topics
    def topic(self, suffix: str) -> str:
        return f"bench.{self.run_id}.{suffix}"

    def create(self, name: str, partitions: int = 4, **config: str) -> str:
        create_topics(
            self.admin, [TopicSpec(name, partitions, config, replication_factor=1)], exist_ok=False
        )
        self.created.append(name)
        return name

    def delete_topics(self, names: list[str]) -> None:
        if not names:
            return
        for fut in self.admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
        for n in names:
            with contextlib.suppress(ValueError):
                self.created.remove(n)

    def cleanup(self) -> None:
        self.delete_topics(list(self.created))

    # ---- setup
    def setup(self) -> None:
        s = self.shared
        self.create(s.events)
        for t in (s.telemetry, s.dlq, s.late, s.feedback, s.predictions_shadow):
            self.create(t, 1)
        ser = AvroSerializer(self.reg, f"{s.events}-value", workload.event_schema())
        self.schema_id = ser.schema_id
        for kind in workload.MODEL_KINDS:
            t0 = time.perf_counter()
            bm = workload.train(kind)
            self.models[kind] = bm
            topic = self.create(
                self.topic(f"models.{kind}"),
                1,
                **{"cleanup.policy": "compact", "max.message.bytes": str(16 * 1024 * 1024)},
            )
            self.model_topic(topic).publish(
                bm.bundle.to_bytes(),
                Role.PRIMARY,
                key=self.key,
                publisher="bench",
            )
            print(
                f"bench: trained and published {bm.name} ({workload.MODEL_LABELS[kind]}, "
                f"{len(bm.bundle.onnx_bytes) / 1024:.0f} KiB ONNX) in "
                f"{time.perf_counter() - t0:.1f}s",
                flush=True,
            )

    def model_topic(self, topic: str) -> ModelTopic:
        schema = schemas.load("model_envelope")
        return ModelTopic(
            self.kafka,
            topic,
            encode=AvroSerializer(self.reg, f"{topic}-value", schema),
            decode=AvroDeserializer(WriterSchemaCache(self.reg), schema),
            max_message_bytes=16 * 1024 * 1024,
        )

    def fill(self, topic: str, n: int) -> None:
        traffic.fill(self.kafka, self.schema_id, topic, n)

    # ---- worker processes
    def worker_topics(self, kind: str, events: str, predictions: str) -> TopicSettings:
        s = self.shared
        return TopicSettings(
            events=events,
            predictions=predictions,
            predictions_shadow=s.predictions_shadow,
            telemetry=s.telemetry,
            models=self.topic(f"models.{kind}"),
            feedback=s.feedback,
            dlq=s.dlq,
            late=s.late,
        )

    @contextlib.contextmanager
    def worker(
        self, kind: str, topics: TopicSettings
    ) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
        self._seq += 1
        env = worker_env(
            {k: v for k, v in os.environ.items() if k not in SIGNING_ENV},
            self.kafka.bootstrap_servers,
            self.registry_settings.url,
            topics,
            STREAMSCORE_PUBLIC_KEY_FILE=str(self.keys.public_file),
        )
        w = launch(
            "score",
            "--batch-size",
            str(self.batch_size),
            "--reader-schema",
            str(workload.SCHEMA_PATH),
            *self.worker_args,
            worker_id=f"bench-{self._seq}",
            group_id=self.topic(f"group.{self._seq}"),
            env=env,
            log_path=self.workdir / f"worker-{self._seq:02d}-{kind}.log",
        )
        try:
            yield w.proc, w.metrics_port, w.log_path
        finally:
            w.terminate()
            w.close()

    def wait_loaded(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{tail(log)}")
            try:
                if sample(port, "streamscore_model_loaded") == 1.0:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"worker never loaded its model:\n{tail(log)}")

    def wait_assigned(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{tail(log)}")
            if re.search(r"assigned \[\(", log.read_text(errors="replace")):
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker never got its partitions:\n{tail(log)}")

    # ---- 1 + 3: drain a pre-filled topic
    def drain(self, kind: str, n_target: int, label: str) -> WorkerRun:
        preds = self.create(self.topic(f"predictions.{label}.{self._seq + 1}"), 4, **LOG_APPEND)
        topics = self.worker_topics(kind, self.events_topic, preds)
        watcher = Consumer(reader_consumer(self.kafka, self.topic("watch")))
        samples: list[Sample] = []
        t_start = time.monotonic()
        try:
            with self.worker(kind, topics) as (proc, port, log):
                last_progress = time.monotonic()
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited {proc.returncode}:\n{tail(log)}")
                    count = high_watermarks(watcher, preds)
                    now = time.monotonic()
                    mem = proc_mem_kb(proc.pid)
                    samples.append(
                        Sample(
                            now,
                            count,
                            proc_cpu_s(proc.pid),
                            mem["VmRSS"],
                            mem["VmHWM"],
                            proc_cpu_s(self.broker_pid) if self.broker_pid else 0.0,
                            machine_jiffies(),
                        )
                    )
                    if len(samples) > 1 and count > samples[-2].count:
                        last_progress = now
                    if count >= n_target:
                        break
                    if now - last_progress > 90:
                        raise RuntimeError(
                            f"no progress for 90s at {count:,}/{n_target:,}:\n{tail(log)}"
                        )
                    time.sleep(0.1)
                stages = stage_us(port)
        finally:
            watcher.close()
        wall = time.monotonic() - t_start
        ts, _ = read_topic(self.kafka, self.topic("reader"), preds)
        self.delete_topics([preds])
        # CPU per 1k: from the last sample before the first prediction to the end
        first = next(i for i, s in enumerate(samples) if s.count > 0)
        s0, s1 = samples[max(0, first - 1)], samples[-1]
        done = max(1, s1.count - s0.count)
        cpu_per_1k = (s1.cpu_s - s0.cpu_s) / done * 1000
        broker_per_1k = (s1.broker_cpu_s - s0.broker_cpu_s) / done * 1000
        all_j, idle_j = (a - b for a, b in zip(s1.machine, s0.machine, strict=True))
        machine_busy = (1 - idle_j / all_j) * (os.cpu_count() or 1) if all_j else float("nan")
        rss_at = {}
        for frac in (0.25, 0.5, 1.0):
            s = next((x for x in samples if x.count >= frac * n_target), samples[-1])
            rss_at[f"{int(frac * 100)}%"] = s.rss_kb / 1024
        return WorkerRun(
            model=kind,
            label=label,
            events=n_target,
            predictions=int(ts.size),
            sustained_eps=sustained(ts),
            overall_eps=overall(ts),
            cpu_s_per_1k=cpu_per_1k,
            broker_cpu_s_per_1k=broker_per_1k if self.broker_pid else float("nan"),
            machine_busy_cpus=machine_busy,
            peak_rss_mb=s1.hwm_kb / 1024,
            rss_mb_end=s1.rss_kb / 1024,
            rss_mb_at=rss_at,
            stage_us_per_event=stages,
            wall_s=wall,
        )

    # ---- 2: latency on a live topic
    def latency(self, kind: str, mode: str, n: int | None, rate: float | None) -> LatencyRun:
        """Offer events to a live topic (paced at ``rate``, or ``n`` as fast as possible)
        after a paced warm-up; latency is measured on the events after the warm-up."""
        events = self.create(self.topic(f"live.{kind}.{mode}"), 4, **LOG_APPEND)
        preds = self.create(self.topic(f"predictions.live.{kind}.{mode}"), 4, **LOG_APPEND)
        topics = self.worker_topics(kind, events, preds)
        enc = workload.EventEncoder(self.schema_id)
        rng = np.random.default_rng(5)
        with self.worker(kind, topics) as (proc, port, log):
            self.wait_loaded(proc, port, log)
            self.wait_assigned(proc, log)
            p = traffic.producer(self.kafka, **{"linger.ms": 1})
            warm = traffic.paced(p, events, enc, rng, self.p.paced_rate, self.p.warmup_seconds, 0)
            t0 = time.perf_counter()
            if rate is None:
                assert n is not None
                sent = traffic.burst(p, events, enc, rng, n, warm)
            else:
                sent = traffic.paced(p, events, enc, rng, rate, self.p.paced_seconds, warm)
            p.flush(60)
            produce_s = time.perf_counter() - t0
            watcher = Consumer(reader_consumer(self.kafka, self.topic("watch")))
            try:
                deadline = time.monotonic() + 300
                while high_watermarks(watcher, preds) < warm + sent:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited {proc.returncode}:\n{tail(log)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"latency run did not finish:\n{tail(log)}")
                    time.sleep(0.1)
            finally:
                watcher.close()
        decode = AvroDeserializer(WriterSchemaCache(self.reg), schemas.load("prediction"))
        ts_all, vals = read_topic(self.kafka, self.topic("reader"), preds, decode)
        ev_decode = AvroDeserializer(WriterSchemaCache(self.reg), workload.event_schema())
        ev_ts, ev_vals = read_topic(self.kafka, self.topic("reader"), events, ev_decode)
        self.delete_topics([events, preds])
        run, self.last_latency = latency_figures(
            kind, mode, sent / produce_s, warm, (ts_all, vals), (ev_ts, ev_vals)
        )
        return run

    # ---- 4: the naive baseline
    def naive(self, kind: str, n: int) -> NaiveRun:
        preds = self.create(self.topic(f"predictions.naive.{kind}.{secrets.token_hex(2)}"), 4)
        try:
            group = self.topic(f"naive.{secrets.token_hex(3)}")
            return naive.run(
                self.kafka, self.reg, self.models[kind], self.events_topic, preds, group, n
            )
        finally:
            self.delete_topics([preds])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=ScoringSettings.batch_size,
        help="worker --batch-size (default: the worker's own)",
    )
    ap.add_argument("--out", default="results/bench.json")
    ap.add_argument("--events", type=int, help="events of the long runs (default per profile)")
    ap.add_argument("--repeats", type=int, help="long runs per model (default per profile)")
    ap.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra `streamscore score` argument, e.g. --worker-arg=--no-drift (repeatable)",
    )
    ap.add_argument(
        "--only",
        choices=["throughput", "latency", "naive"],
        action="append",
        help="run only these parts (repeatable; default all)",
    )
    args = ap.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.events or args.repeats:
        n_long = args.events or profile.n_long
        profile = replace(
            profile,
            name=f"{profile.name}, custom",
            n_long=n_long,
            n_short=min(profile.n_short, n_long // 3),
            repeats=args.repeats or profile.repeats,
        )
    parts = set(args.only or ["throughput", "latency", "naive"])
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])

    env = settings_from_env(os.environ)
    external = "STREAMSCORE_BOOTSTRAP" in os.environ
    cluster = None
    started = False
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = out.parent / "bench-logs"
    workdir.mkdir(parents=True, exist_ok=True)
    res = Results(
        profile=profile.name,
        batch_size=args.batch_size,
        host={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "command": command.strip(),
        },
    )
    t_all = time.monotonic()
    bench: Bench | None = None
    try:
        if not external:
            from streamscore.dev.localcluster import LocalCluster

            cluster = LocalCluster(env.cluster, TopicSettings())
            if not cluster.status().running:
                print("bench: starting the local cluster…", flush=True)
                started = True
                cluster.up()
        bench = Bench(
            env.kafka, env.registry, profile, args.batch_size, workdir, tuple(args.worker_arg)
        )
        if cluster is not None:
            bench.broker_pid = cluster.status().kafka_pid
        bench.setup()
        if parts & {"throughput", "naive"}:
            bench.fill(bench.events_topic, profile.n_long)
        if "naive" in parts:
            for kind in workload.MODEL_KINDS:
                for _ in range(profile.naive_repeats):
                    nr = bench.naive(kind, profile.naive_events)
                    res.naive.append(nr)
                    print(f"bench: naive {kind}: {nr.eps:,.0f} ev/s", flush=True)
        if "throughput" in parts:
            for kind in workload.MODEL_KINDS:
                runs = [("short", profile.n_short)] + [("long", profile.n_long)] * profile.repeats
                for label, n in runs:
                    wr = bench.drain(kind, n, label)
                    res.throughput.append(wr)
                    print(
                        f"bench: {kind} {label} {n:,}: {wr.sustained_eps:,.0f} ev/s sustained, "
                        f"{wr.cpu_s_per_1k:.3f} CPU s/1k, peak RSS {wr.peak_rss_mb:.1f} MB",
                        flush=True,
                    )
        if "latency" in parts:
            for kind in workload.MODEL_KINDS:
                modes: list[tuple[str, int | None, float | None]] = [
                    ("full", profile.burst_events, None),
                    ("paced", None, profile.paced_rate),
                ]
                for mode, n_events, rate in modes:
                    lr = bench.latency(kind, mode, n_events, rate)
                    res.latency.append(lr)
                    print(
                        f"bench: latency {kind} {mode}: offered {lr.offered_eps:,.0f} ev/s, "
                        f"p50 {lr.broker_p50_ms:.1f} ms, p99 {lr.broker_p99_ms:.1f} ms",
                        flush=True,
                    )
    finally:
        if bench is not None:
            with contextlib.suppress(Exception):
                bench.cleanup()
        if started and cluster is not None:
            print("bench: stopping the local cluster (this run started it)", flush=True)
            cluster.down()
    summarize(res, profile)
    res.host["wall_s"] = time.monotonic() - t_all
    out.write_text(json.dumps(asdict(res), indent=2, default=float))
    print_table(res, command.strip())
    print(f"\nwrote {out} ({res.host['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
