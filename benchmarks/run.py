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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamscore.cli import settings_from_env
from streamscore.core.config import KafkaSettings, RegistrySettings, TopicSettings
from streamscore.core.records import Role
from streamscore.kafka.admin import TopicSpec, create_topics
from streamscore.kafka.clients import reader_consumer
from streamscore.models.publish import ModelTopic
from streamscore.serde import codec as serde
from streamscore.serde import schemas
from tests.processes import launch, sample, worker_env

from . import workload

KEY_ID = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Profile:
    name: str
    n_short: int  # events of the short run (memory / CPU comparison)
    n_long: int  # events pre-filled; the long runs drain all of them
    repeats: int  # long runs per model (throughput = median)
    naive_events: int  # events per naive run
    naive_repeats: int
    burst_events: int  # full-speed latency run
    paced_rate: float  # events/s of the paced latency run
    paced_seconds: float
    warmup_seconds: float  # paced traffic before each latency measurement (not measured)


FULL = Profile("full", 200_000, 600_000, 3, 10_000, 3, 150_000, 2000.0, 30.0, 5.0)
QUICK = Profile("quick", 20_000, 60_000, 1, 1_000, 1, 20_000, 2000.0, 5.0, 2.0)


# --------------------------------------------------------------------------- helpers


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def machine_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def percentile(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


@dataclass
class Sample:
    t: float  # monotonic seconds
    count: int  # predictions acknowledged by the broker (sum of high watermarks)
    cpu_s: float
    rss_kb: int
    hwm_kb: int
    broker_cpu_s: float  # the local broker's utime + stime (0 when not known)
    machine: tuple[int, int]  # /proc/stat: (all jiffies, idle jiffies)


@dataclass
class WorkerRun:
    model: str
    label: str
    events: int
    predictions: int
    sustained_eps: float
    overall_eps: float
    cpu_s_per_1k: float
    broker_cpu_s_per_1k: float  # the local broker's CPU over the same window
    machine_busy_cpus: float  # CPUs busy (all processes) over the same window
    peak_rss_mb: float  # VmHWM at the end of the run
    rss_mb_end: float
    rss_mb_at: dict[str, float]  # VmRSS when a fraction of the events was done
    stage_us_per_event: dict[str, float]  # from the worker's own histograms
    wall_s: float


@dataclass
class LatencyRun:
    model: str
    mode: str
    offered_eps: float
    events: int
    drained_eps: float
    broker_p50_ms: float
    broker_p99_ms: float
    broker_max_ms: float
    broker_p99_incl_warmup_ms: float
    producer_p99_ms: float  # event appended - event_time (the benchmark's producer)
    worker_p50_ms: float  # prediction appended - event appended (consume, score, produce)
    worker_p99_ms: float
    scored_p50_ms: float
    scored_p99_ms: float


@dataclass
class NaiveRun:
    model: str
    events: int
    eps: float
    cpu_s_per_1k: float


@dataclass
class Results:
    profile: str
    batch_size: int
    host: dict[str, Any]
    throughput: list[WorkerRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)
    naive: list[NaiveRun] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


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
        self.key = secrets.token_hex(32)  # per run, handed to the worker by env only
        self.admin = AdminClient({**kafka.client_config(), "log_level": 0})
        self.reg = serde.registry_client(registry.client_config())
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
        for t in (s.telemetry, s.dlq, s.late, s.feedback):
            self.create(t, 1)
        ser = serde.AvroSerializer(self.reg, f"{s.events}-value", workload.event_schema())
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
                key=self.key.encode(),
                key_id=KEY_ID,
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
            encode=serde.AvroSerializer(self.reg, f"{topic}-value", schema),
            decode=serde.AvroDeserializer(serde.WriterSchemaCache(self.reg), schema),
            max_message_bytes=16 * 1024 * 1024,
        )

    def producer(self, **extra: Any) -> Producer:
        conf = {
            **self.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "log_level": 0,
        }
        conf.update(extra)
        return Producer(conf)

    def fill(self, topic: str, n: int) -> None:
        """Pre-fill ``topic`` with ``n`` events (event_time = when each was encoded)."""
        t0 = time.perf_counter()
        enc = workload.EventEncoder(self.schema_id)
        p = self.producer()
        rng = np.random.default_rng(11)
        produce, poll = p.produce, p.poll
        for i, e in enumerate(workload.events(n, rng)):
            value, key = enc.encode(e), e["key"].encode()
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)
            if i % 5000 == 0:
                poll(0)
        left = p.flush(120)
        if left:
            raise RuntimeError(f"{left} events not acknowledged while filling {topic}")
        print(
            f"bench: filled {topic} with {n:,} events in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )

    # ---- worker processes
    def worker_topics(self, kind: str, events: str, predictions: str) -> TopicSettings:
        s = self.shared
        return TopicSettings(
            events=events,
            predictions=predictions,
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
            dict(os.environ),
            self.kafka.bootstrap_servers,
            self.registry_settings.url,
            topics,
            STREAMSCORE_SIGNING_KEY=self.key,
            STREAMSCORE_SIGNING_KEY_ID=KEY_ID,
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

    def high_watermarks(self, c: Consumer, topic: str, partitions: int = 4) -> int:
        """Messages in ``topic`` now (acknowledged by the broker). Retries while a freshly
        created topic's leaders are still settling."""
        for attempt in range(50):
            try:
                total = 0
                for p in range(partitions):
                    _lo, hi = c.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=5, cached=False
                    )
                    total += max(0, hi)
                return total
            except KafkaException:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def read_topic(
        self, topic: str, decode: Callable[[bytes | None], dict[str, Any]] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Every message of ``topic``: broker timestamps (ms) and, with ``decode``, values."""
        c = Consumer(reader_consumer(self.kafka, self.topic(f"reader.{secrets.token_hex(3)}")))
        try:
            md = c.list_topics(topic, timeout=10).topics[topic]
            his = {}
            for p in md.partitions:
                _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                his[p] = hi
            c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
            want = sum(his.values())
            ts: list[int] = []
            values: list[dict[str, Any]] = []
            idle = 0
            while len(ts) < want and idle < 20:
                batch = c.consume(num_messages=10_000, timeout=0.5)
                if not batch:
                    idle += 1
                    continue
                idle = 0
                for m in batch:
                    if m.error() is not None:
                        continue
                    ts.append(m.timestamp()[1])
                    if decode is not None:
                        values.append(decode(m.value()))
        finally:
            c.close()
        return np.asarray(ts, dtype=np.int64), values

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
                    count = self.high_watermarks(watcher, preds)
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
        ts, _ = self.read_topic(preds)
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
            p = self.producer(**{"linger.ms": 1})
            warm = paced(p, events, enc, rng, self.p.paced_rate, self.p.warmup_seconds, 0)
            t0 = time.perf_counter()
            if rate is None:
                assert n is not None
                chunk = 1000
                for start in range(warm, warm + n, chunk):
                    batch = workload.events(min(chunk, warm + n - start), rng, start=start)
                    for e in batch:  # event_time is taken as each event is made
                        value, key = enc.encode(e), e["key"].encode()
                        while True:
                            try:
                                p.produce(events, value, key)
                                break
                            except BufferError:
                                p.poll(0.01)
                    p.poll(0)
                sent = n
            else:
                sent = paced(p, events, enc, rng, rate, self.p.paced_seconds, warm)
            p.flush(60)
            produce_s = time.perf_counter() - t0
            watcher = Consumer(reader_consumer(self.kafka, self.topic("watch")))
            try:
                deadline = time.monotonic() + 300
                while self.high_watermarks(watcher, preds) < warm + sent:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited {proc.returncode}:\n{tail(log)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"latency run did not finish:\n{tail(log)}")
                    time.sleep(0.1)
            finally:
                watcher.close()
        decode = serde.AvroDeserializer(
            serde.WriterSchemaCache(self.reg), schemas.load("prediction")
        )
        ts_all, vals = self.read_topic(preds, decode)
        ev_decode = serde.AvroDeserializer(
            serde.WriterSchemaCache(self.reg), workload.event_schema()
        )
        ev_ts, ev_vals = self.read_topic(events, ev_decode)
        self.delete_topics([events, preds])
        # when the broker appended each event: splits the latency into the producer's
        # share (event append - event_time) and the worker's (prediction - event append)
        appended = dict(zip((v["event_id"] for v in ev_vals), ev_ts.tolist(), strict=True))
        ev_append = np.fromiter(
            (appended.get(v["event_id"], -1) for v in vals), dtype=np.int64, count=len(vals)
        )
        ev_all = np.fromiter((v["event_time"] for v in vals), dtype=np.int64, count=len(vals))
        sc_all = np.fromiter((v["scored_time"] for v in vals), dtype=np.int64, count=len(vals))
        self.last_latency = (ev_all, sc_all, ts_all, ev_append)  # raw times, for digging
        # event ids count up from 0: the first ``warm`` are the warm-up's
        measured = np.fromiter((int(v["event_id"], 16) >= warm for v in vals), dtype=bool)
        ev, sc, ts = ev_all[measured], sc_all[measured], ts_all[measured]
        broker = (ts - ev).astype(np.float64)
        scored = (sc - ev).astype(np.float64)
        app = ev_append[measured]
        producer_share = (app - ev).astype(np.float64)[app >= 0]
        worker_share = (ts - app).astype(np.float64)[app >= 0]
        return LatencyRun(
            model=kind,
            mode=mode,
            offered_eps=sent / produce_s,
            events=int(ts.size),
            drained_eps=overall(ts),
            broker_p50_ms=percentile(broker, 50),
            broker_p99_ms=percentile(broker, 99),
            broker_max_ms=float(broker.max()) if broker.size else float("nan"),
            broker_p99_incl_warmup_ms=percentile((ts_all - ev_all).astype(np.float64), 99),
            producer_p99_ms=percentile(producer_share, 99),
            worker_p50_ms=percentile(worker_share, 50),
            worker_p99_ms=percentile(worker_share, 99),
            scored_p50_ms=percentile(scored, 50),
            scored_p99_ms=percentile(scored, 99),
        )

    # ---- 4: the naive baseline
    def naive(self, kind: str, n: int) -> NaiveRun:
        bm = self.models[kind]
        est = bm.estimator
        preds = self.create(self.topic(f"predictions.naive.{kind}.{secrets.token_hex(2)}"), 4)
        decode = serde.AvroDeserializer(serde.WriterSchemaCache(self.reg), workload.event_schema())
        encode = serde.AvroSerializer(self.reg, f"{preds}-value", schemas.load("prediction"))
        encode.schema_id  # noqa: B018 - register before timing
        c = Consumer(
            {
                **self.kafka.client_config(),
                "group.id": self.topic(f"naive.{secrets.token_hex(3)}"),
                "auto.offset.reset": "earliest",
                "log_level": 0,
            }
        )
        p = Producer({**self.kafka.client_config(), "log_level": 0})
        c.subscribe([self.events_topic])
        classes = [str(x) for x in est.classes_]
        names = list(workload.FEATURES)
        done = 0
        t0 = 0.0
        cpu0 = 0.0
        try:
            while done < n:
                m = c.poll(1.0)
                if m is None or m.error() is not None:
                    continue
                if done == 0:
                    t0, cpu0 = time.perf_counter(), time.process_time()
                e = decode(m.value())
                feats = [float(e[f]) for f in names]
                proba = est.predict_proba(np.array([feats]))[0]
                record = {
                    "event_id": e["event_id"],
                    "key": e["key"],
                    "event_time": e["event_time"],
                    "scored_time": int(time.time() * 1000),
                    "model_name": bm.name,
                    "model_version": 1,
                    "role": "primary",
                    "value": None,
                    "label": classes[int(np.argmax(proba))],
                    "probabilities": [float(x) for x in proba],
                    "classes": classes,
                    "degraded": False,
                    "late": False,
                    "feature_names": names,
                    "features": feats,
                }
                while True:
                    try:
                        p.produce(preds, encode(record), m.key())
                        break
                    except BufferError:
                        p.poll(0.05)
                p.poll(0)
                done += 1
            p.flush(60)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        finally:
            c.close()
        self.delete_topics([preds])
        return NaiveRun(kind, n, n / elapsed, cpu / n * 1000)


LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}


def paced(
    p: Producer,
    topic: str,
    enc: workload.EventEncoder,
    rng: np.random.Generator,
    rate: float,
    seconds: float,
    start: int,
) -> int:
    """Produce ``rate`` events/s for ``seconds`` (event_time = when each is sent)."""
    total = int(rate * seconds)
    gen = workload.events(total, rng, start=start)
    sent = 0
    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            e = next(gen)
            e["event_time"] = int(time.time() * 1000)
            p.produce(topic, enc.encode(e), e["key"].encode())
            sent += 1
        p.poll(0)
        time.sleep(0.0005)
    return sent


def sustained(ts: np.ndarray) -> float:
    """Events/s over the central 90 % of the predictions (by broker time)."""
    if ts.size < 20:
        return float("nan")
    s = np.sort(ts)
    lo, hi = int(s.size * 0.05), int(s.size * 0.95)
    span = (s[hi] - s[lo]) / 1000.0
    return (hi - lo) / span if span > 0 else float("nan")


def overall(ts: np.ndarray) -> float:
    if ts.size < 2:
        return float("nan")
    span = (int(ts.max()) - int(ts.min())) / 1000.0
    return ts.size / span if span > 0 else float("nan")


def stage_us(port: int) -> dict[str, float]:
    """Per-event microseconds per stage, from the worker's own stage histograms."""
    consumed = sample(port, "streamscore_events_consumed_total")
    if consumed <= 0:
        return {}
    return {
        stage: sample(port, "streamscore_stage_seconds_sum", {"stage": stage}) / consumed * 1e6
        for stage in ("decode", "validate", "features", "predict", "encode", "produce")
    }


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# --------------------------------------------------------------------------- report


def summarize(res: Results, p: Profile) -> None:
    summary: dict[str, Any] = {}
    targets = {"hgb": 50_000.0, "lr": 100_000.0}
    for kind in workload.MODEL_KINDS:
        longs = [r for r in res.throughput if r.model == kind and r.label == "long"]
        shorts = [r for r in res.throughput if r.model == kind and r.label == "short"]
        naive = [r.eps for r in res.naive if r.model == kind]
        eps = median([r.sustained_eps for r in longs])
        naive_eps = median(naive)
        lat = {r.mode: r for r in res.latency if r.model == kind}
        paced = lat.get("paced")
        s: dict[str, Any] = {
            "throughput_eps_median": eps,
            "throughput_target_eps": targets[kind],
            "throughput_target_met": eps >= targets[kind],
            "naive_eps_median": naive_eps,
            "worker_over_naive": eps / naive_eps if naive_eps else float("nan"),
            "ratio_target_met": bool(naive_eps) and eps / naive_eps >= 10,
            "cpu_s_per_1k_long": median([r.cpu_s_per_1k for r in longs]),
            "cpu_s_per_1k_short": median([r.cpu_s_per_1k for r in shorts]),
            "peak_rss_mb_short": median([r.peak_rss_mb for r in shorts]),
            "peak_rss_mb_long": median([r.peak_rss_mb for r in longs]),
        }
        if shorts and longs:
            growth = s["peak_rss_mb_long"] - s["peak_rss_mb_short"]
            s["peak_rss_growth_mb"] = growth
            s["rss_flat"] = growth < 0.1 * s["peak_rss_mb_short"]
        if paced is not None:
            s["paced_p99_ms"] = paced.broker_p99_ms
            s["paced_p99_target_met"] = paced.broker_p99_ms < 50.0
            s["paced_worker_p99_ms"] = paced.worker_p99_ms
        summary[kind] = s
    res.summary = summary


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_table(res: Results, command: str) -> None:
    print()
    print(f"streamscore bench ({res.profile}, batch size {res.batch_size}) — {command}")
    print(f"host: {res.host['cpus']} CPUs, {res.host['python']}, {res.host['machine']}")
    print()
    hdr = (
        f"{'model':<5} {'run':<6} {'events':>8} {'sustained ev/s':>15} {'overall ev/s':>13} "
        f"{'CPU s/1k':>9} {'broker s/1k':>11} {'busy CPUs':>9} {'peak RSS MB':>12} "
        f"{'RSS 25/50/100%':>15}"
    )
    print(
        "1+3. drain a pre-filled topic (one worker; throughput from the broker's LogAppendTime "
        "of the predictions)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in res.throughput:
        rss = "/".join(f"{v:.0f}" for v in r.rss_mb_at.values())
        print(
            f"{r.model:<5} {r.label:<6} {r.events:>8,} {r.sustained_eps:>15,.0f} "
            f"{r.overall_eps:>13,.0f} {r.cpu_s_per_1k:>9.4f} {r.broker_cpu_s_per_1k:>11.4f} "
            f"{r.machine_busy_cpus:>9.2f} {r.peak_rss_mb:>12.1f} {rss:>15}"
        )
    print()
    print("   worker stage times (its own histograms), us/event:")
    for r in res.throughput:
        if r.label == "long":
            print(
                f"   {r.model:<5} "
                + "  ".join(f"{k} {v:.2f}" for k, v in r.stage_us_per_event.items())
            )
    print()
    print(
        "2. end-to-end latency, ms, after a paced warm-up: prediction's broker append time - "
        "event_time;\n   split into the producer's share (event appended - event_time) and the "
        "worker's (prediction appended - event appended)"
    )
    hdr = (
        f"{'model':<5} {'offered':<7} {'offered ev/s':>12} {'events':>8} {'drained ev/s':>13} "
        f"{'p50':>7} {'p99':>7} {'max':>7} {'producer p99':>13} {'worker p50/p99':>15} "
        f"{'p99 incl. warm-up':>18}"
    )
    print(hdr)
    print("-" * len(hdr))
    for lr in res.latency:
        worker = f"{lr.worker_p50_ms:.1f}/{lr.worker_p99_ms:.1f}"
        print(
            f"{lr.model:<5} {lr.mode:<7} {lr.offered_eps:>12,.0f} {lr.events:>8,} "
            f"{lr.drained_eps:>13,.0f} {lr.broker_p50_ms:>7.1f} {lr.broker_p99_ms:>7.1f} "
            f"{lr.broker_max_ms:>7.0f} {lr.producer_p99_ms:>13.1f} {worker:>15} "
            f"{lr.broker_p99_incl_warmup_ms:>18.1f}"
        )
    print()
    print("4. naive baseline (poll/decode/sklearn predict/encode/produce per message)")
    for nr in res.naive:
        print(
            f"   {nr.model:<5} {nr.events:>7,} events  {nr.eps:>9,.0f} ev/s  "
            f"{nr.cpu_s_per_1k:.3f} CPU s/1k"
        )
    print()
    print("targets")
    if res.profile != "full":
        print(
            "   (a smoke run: short runs, often on a broker that has just started and is still "
            "compiling; judge the targets on the full run)"
        )
    for kind, s in res.summary.items():
        print(
            f"   {kind:<4} throughput {s['throughput_eps_median']:,.0f} ev/s "
            f"(target {s['throughput_target_eps']:,.0f}: {met(s['throughput_target_met'])}); "
            f"worker/naive {s['worker_over_naive']:.1f}x (>= 10x: {met(s['ratio_target_met'])})"
        )
        if "paced_p99_ms" in s:
            print(
                f"        p99 at 2,000 ev/s offered {s['paced_p99_ms']:.1f} ms "
                f"(< 50 ms: {met(s['paced_p99_target_met'])}; the worker's share "
                f"{s['paced_worker_p99_ms']:.1f} ms)"
            )
        if "rss_flat" in s:
            print(
                f"        peak RSS short/long {s['peak_rss_mb_short']:.1f}/"
                f"{s['peak_rss_mb_long']:.1f} MB (flat: {met(s['rss_flat'])})"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    ap.add_argument("--batch-size", type=int, default=500, help="worker --batch-size")
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
