"""`streamscore demo`: the whole loop on the local cluster, with a picture at the end.

Starts the local cluster, publishes a signed v1 model trained without feature c, starts
two score workers and a feedback worker (auto-promotion on) as separate processes, and
produces events at a steady rate: v1 events first, then v2 events carrying c (schema
evolution live), plus a small share of malformed messages. A labeller sends each event's
true y to the feedback topic after a delay. Midway, `streamscore train` fits a candidate
with c on the ground truth the feedback worker collected and publishes it as shadow; the
feedback worker promotes it when it beats v1 on live labels, and the score workers swap
to it without a pause. The demo follows the predictions topic to measure live error per
version and end-to-end latency. Every process it starts is stopped on exit, Ctrl-C
included. Traffic starts once the workers' group has settled (and a freshly started broker
has had some warm-up traffic); the training run is background work, at a lower CPU
priority and single-threaded, so that it does not take the workers' cores.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from ..core.config import (
    SIGNING_ENV,
    ClusterSettings,
    KafkaSettings,
    RegistrySettings,
    TopicSettings,
)
from ..core.records import Role
from ..kafka.clients import reader_consumer
from ..models.publish import ModelTopic
from ..models.signing import Ed25519Signer, keygen
from ..serde import schemas
from ..serde.message import AvroDeserializer, AvroSerializer
from ..serde.wire import WriterSchemaCache, registry_client
from ..train import synthetic
from ..train.training import demo_bundle


@dataclass(frozen=True)
class DemoSettings:
    duration_s: float = 120.0
    rate: float = 400.0  # events per second
    bad_fraction: float = 0.01
    workers: int = 2
    results_dir: Path = Path("results")
    keep_cluster: bool = True
    label_delay_s: float = 1.0
    v2_events_at: float = 0.25  # share of the duration after which events carry c
    train_at: float = 0.45  # share of the duration after which the candidate is trained
    promote_min_labels: int = 300
    # unmeasured traffic before the measured run when the demo has just started the local
    # cluster: a fresh broker compiles its hot paths (JIT) during its first seconds of
    # traffic, at several hundred milliseconds of end-to-end latency
    warmup_s: float = 10.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class DemoTruth:
    """What the demo knows and the workers do not: each event's true y."""

    y: dict[str, float] = field(default_factory=dict)
    produced: int = 0
    malformed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class DemoObservations:
    predictions: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    # (scored_time_s, version, abs_error, latency_s)
    rows: list[tuple[float, int, float, float]] = field(default_factory=list)
    first_seen: dict[int, float] = field(default_factory=dict)


# Background work (the training run) shares the cores with the score workers. It runs at
# a lower CPU priority and single-threaded, so a fit never takes the CPU that the
# latency-critical path (producer -> broker -> score worker) needs; it only uses what the
# workers leave idle.
BACKGROUND_NICE = 10  # added to the demo's own nice value, at most 19
BACKGROUND_THREADS_ENV = {
    "OMP_NUM_THREADS": "1",  # scikit-learn's OpenMP (HistGradientBoosting*)
    "OPENBLAS_NUM_THREADS": "1",  # NumPy / SciPy BLAS
    "MKL_NUM_THREADS": "1",
}


def lower_priority(pid: int, increment: int = BACKGROUND_NICE) -> list[str]:
    """Lowers the CPU priority of ``pid``, started with ``start_new_session=True``.

    Two settings, because either alone may change nothing:

    * the nice value of every thread of the child's process group
      (``setpriority(PRIO_PGRP)``; ``PRIO_PROCESS`` would reach one thread only on Linux).
      Threads and processes the child starts later inherit it.
    * the nice value of the child's session *autogroup* (``/proc/<pid>/autogroup``, Linux).
      With ``kernel.sched_autogroup_enabled=1`` (the default on most distributions, and
      on this project's machines) every session is its own scheduling group and the CPU
      is shared between groups by the group's nice value; a task's own nice value then
      only ranks it within its session. Since each child of the demo has a session of
      its own (for Ctrl-C handling), ``os.nice`` alone would give the workers nothing.

    Done from the parent right after the child starts (not in ``preexec_fn``, which is
    unsafe with the demo's threads running). Best effort: returns what was applied.
    """
    own = os.getpriority(os.PRIO_PROCESS, 0)
    nice = min(19, max(own, own + increment))
    applied = []
    try:
        os.setpriority(os.PRIO_PGRP, pid, nice)
        applied.append("nice")
    except OSError:  # already exited, or not permitted
        pass
    autogroup = Path(f"/proc/{pid}/autogroup")
    for _ in range(50):
        try:
            autogroup.write_text(f"{nice}\n")
            applied.append("autogroup")
            break
        except BlockingIOError:  # unprivileged writes: at most one per 100 ms, system-wide
            time.sleep(0.01)
        except OSError:  # no autogroups (not Linux, or a kernel built without them)
            break
    return applied


def group_settled(
    state: object, owned: list[set[tuple[str, int]]], partitions: set[tuple[str, int]], members: int
) -> bool:
    """Whether a consumer group (as ``describe_consumer_groups`` reports it) has settled:
    stable, ``members`` members, every partition owned and, when there are enough
    partitions, every member owning some. With the cooperative-sticky assignor the group is
    briefly stable between the two rebalance rounds with partitions revoked but not yet
    reassigned; that does not count."""
    from confluent_kafka import ConsumerGroupState

    return (
        state == ConsumerGroupState.STABLE
        and len(owned) == members
        and set().union(*owned) == partitions
        and (all(owned) or members > len(partitions))
    )


def _topics(run_id: str) -> TopicSettings:
    return TopicSettings(
        events=f"demo.{run_id}.events",
        predictions=f"demo.{run_id}.predictions",
        telemetry=f"demo.{run_id}.telemetry",
        models=f"demo.{run_id}.models",
        feedback=f"demo.{run_id}.feedback",
        dlq=f"demo.{run_id}.events.dlq",
        late=f"demo.{run_id}.events.late",
    )


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Demo:
    def __init__(
        self,
        settings: DemoSettings,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        cluster: ClusterSettings | None,
    ) -> None:
        self.s = settings
        self.kafka = kafka
        self.registry_settings = registry
        self.cluster = cluster
        self.topics = _topics(settings.run_id)
        # a key pair per run, made on the spot (removed with this object or at exit): the
        # publishers (this process, training, the auto-promoting feedback worker) get the
        # private key's file, the score workers only the public key's
        self._keys_dir = tempfile.TemporaryDirectory(prefix="streamscore-demo-keys-")
        self.keys = keygen(Path(self._keys_dir.name), "demo")
        self.signer = Ed25519Signer.from_file(self.keys.private_file)
        self.truth = DemoTruth()
        self.obs = DemoObservations()
        self.stop = threading.Event()
        self.timeline: list[tuple[float, str]] = []
        self.labels: collections.deque[tuple[float, str, float]] = collections.deque()
        self.labels_sent = 0
        self.t0 = time.time()
        self.store_dir = settings.results_dir / "groundtruth"
        self.children: list[subprocess.Popen[Any]] = []
        self.training_runs: list[tuple[float, float]] = []  # (start, end), wall clock

    def _mark(self, text: str) -> None:
        self.timeline.append((time.time(), text))
        print(f"demo: {text}", flush=True)

    # ---- setup
    def _create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient(self.kafka.client_config())
        model_conf = {
            "cleanup.policy": "compact",
            "max.message.bytes": str(16 * 1024 * 1024 + 65536),
        }
        new = [
            NewTopic(
                t,
                num_partitions=1 if t == self.topics.models else 4,
                replication_factor=1,
                config=model_conf if t == self.topics.models else {},
            )
            for t in self.topics.all()
        ]
        for fut in admin.create_topics(new, operation_timeout=30).values():
            fut.result()

    def _child_env(self, *, background: bool = False, publisher: bool = False) -> dict[str, str]:
        # the caller's own signing settings are not handed on: the children use the demo's
        env = {k: v for k, v in os.environ.items() if k not in SIGNING_ENV}
        if background:
            env.update(BACKGROUND_THREADS_ENV)
        env.update(
            {
                "STREAMSCORE_BOOTSTRAP": self.kafka.bootstrap_servers,
                "STREAMSCORE_REGISTRY_URL": self.registry_settings.url,
                "STREAMSCORE_PUBLIC_KEY_FILE": str(self.keys.public_file),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if publisher:
            env["STREAMSCORE_SIGNING_KEY_FILE"] = str(self.keys.private_file)
        for name in ("events", "predictions", "telemetry", "models", "feedback", "dlq", "late"):
            env[f"STREAMSCORE_TOPIC_{name.upper()}"] = getattr(self.topics, name)
        return env

    def _model_topic(self, reg: Any) -> ModelTopic:
        schema = schemas.load("model_envelope")
        return ModelTopic(
            self.kafka,
            self.topics.models,
            encode=AvroSerializer(reg, f"{self.topics.models}-value", schema),
            decode=AvroDeserializer(WriterSchemaCache(reg), schema),
            max_message_bytes=16 * 1024 * 1024,
        )

    # ---- threads
    def _events_producer(self, reg: Any) -> tuple[dict[int, Any], Producer]:
        """The events' serializers (v1, v2) and producer, connected and with the v1 schema
        registered, so the first measured events do not wait for either."""
        ser = {
            1: AvroSerializer(reg, f"{self.topics.events}-value", schemas.load("event", 1)),
            2: AvroSerializer(reg, f"{self.topics.events}-value", schemas.load("event", 2)),
        }
        p = Producer({**self.kafka.client_config(), "linger.ms": 2, "enable.idempotence": True})
        ((e, _y),) = synthetic.events(1, np.random.default_rng(0), with_c=False)
        ser[1](e)  # registers the v1 schema (v2 is registered when v2 events start)
        p.list_topics(self.topics.events, timeout=10)
        return ser, p

    def _produce(self, ser: dict[int, Any], p: Producer) -> None:
        rng = np.random.default_rng(1)
        interval = 1.0 / self.s.rate
        next_t = time.monotonic()
        v2_from = self.t0 + self.s.duration_s * self.s.v2_events_at
        while not self.stop.is_set() and time.time() - self.t0 < self.s.duration_s:
            version = 1 if time.time() < v2_from else 2
            ((e, y),) = synthetic.events(1, rng, with_c=version == 2)
            if rng.random() < self.s.bad_fraction:
                value = ser[version](e)[: rng.integers(1, 12)]  # truncated on purpose
                with self.truth.lock:
                    self.truth.malformed += 1
            else:
                value = ser[version](e)
                with self.truth.lock:
                    self.truth.y[e["event_id"]] = y
                self.labels.append((time.time() + self.s.label_delay_s, e["event_id"], y))
            p.produce(self.topics.events, value, e["key"].encode())
            with self.truth.lock:
                self.truth.produced += 1
            p.poll(0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p.flush(30)

    def _warm_up(self, ser: dict[int, Any], p: Producer, seconds: float) -> None:
        """Unmeasured v1 traffic at the demo's rate. The events are scored like any other
        but have no truth, so the observer skips their predictions and no label is sent."""
        rng = np.random.default_rng(0)
        interval = 1.0 / self.s.rate
        next_t = time.monotonic()
        end = next_t + seconds
        while not self.stop.is_set() and time.monotonic() < end:
            ((e, _y),) = synthetic.events(1, rng, with_c=False)
            p.produce(self.topics.events, ser[1](e), e["key"].encode())
            p.poll(0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p.flush(30)

    def _wait_settled(self, group_id: str, members: int, timeout: float = 30.0) -> None:
        """Waits until the score workers' group has settled. Otherwise the rebalance that
        follows the second worker's join stalls half the partitions for a second or two
        after traffic starts, about 1 % of a minute's events: the p99 itself."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.kafka.client_config())
        topic = self.topics.events
        md = admin.list_topics(topic, timeout=10).topics[topic]
        partitions = {(topic, p) for p in md.partitions}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                (fut,) = admin.describe_consumer_groups([group_id], request_timeout=5).values()
                desc = fut.result()
                owned = [
                    {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
                    for m in desc.members
                ]
                if group_settled(desc.state, owned, partitions, members):
                    return
            except KafkaException:
                pass
            time.sleep(0.2)
        print(
            f"demo: the score workers' group did not settle in {timeout:.0f}s; starting anyway",
            flush=True,
        )

    def _start(
        self, name: str, args: list[str], *, publisher: bool = False
    ) -> subprocess.Popen[bytes]:
        log = open(self.s.results_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed by exit)
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", *args],
            env=self._child_env(publisher=publisher),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _label(self, reg: Any) -> None:
        """Sends each event's true y to the feedback topic once its delay has passed."""
        ser = AvroSerializer(reg, f"{self.topics.feedback}-value", schemas.load("feedback"))
        p = Producer({**self.kafka.client_config(), "linger.ms": 5, "enable.idempotence": True})
        while True:
            now = time.time()
            stopping = self.stop.is_set()  # on stop, whatever is queued goes out now
            while self.labels and (stopping or self.labels[0][0] <= now):
                _due, event_id, y = self.labels.popleft()
                value = ser({"event_id": event_id, "label": y, "observed_time": int(now * 1000)})
                p.produce(self.topics.feedback, value, event_id.encode())
                self.labels_sent += 1
            p.poll(0)
            if stopping:
                break
            time.sleep(0.05)
        p.flush(30)

    def _observe(self) -> None:
        reg = registry_client(self.registry_settings.client_config())
        dec = AvroDeserializer(WriterSchemaCache(reg), schemas.load("prediction"))
        c = Consumer(reader_consumer(self.kafka, f"demo-observer-{self.s.run_id}"))
        parts = []
        for topic in (self.topics.predictions, self.topics.dlq):
            md = c.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in md.partitions]
        c.assign(parts)
        try:
            while not self.stop.is_set():
                for m in c.consume(num_messages=1000, timeout=0.2):
                    if m.error() is not None:
                        continue
                    if m.topic() == self.topics.dlq:
                        self.obs.dead[_header(m, "streamscore.error.class")] += 1
                        continue
                    pr = dec(m.value())
                    if pr["role"] != "primary":
                        continue
                    with self.truth.lock:
                        y = self.truth.y.get(pr["event_id"])
                    if y is None:
                        continue
                    now = time.time()
                    v = int(pr["model_version"])
                    self.obs.predictions += 1
                    if v not in self.obs.first_seen:
                        self.obs.first_seen[v] = now
                        if v > 1:
                            self._mark(f"workers answer with v{v} (promoted)")
                    self.obs.rows.append(
                        (
                            pr["scored_time"] / 1000.0,
                            v,
                            abs(pr["value"] - y),
                            (pr["scored_time"] - pr["event_time"]) / 1000.0,
                        )
                    )
        finally:
            c.close()

    def _wait_ready(self, procs: list[subprocess.Popen[Any]], timeout: float = 90.0) -> None:
        """Traffic starts once every worker has loaded its model (no warm-up latency)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        for i, p in enumerate(procs):
            url = f"http://127.0.0.1:{9400 + i}/metrics"
            while True:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"score worker {i + 1} exited with {p.returncode}; see "
                        f"{self.s.results_dir}/worker-{i + 1}.log"
                    )
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if "streamscore_model_loaded 1.0" in r.read().decode():
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"score worker {i + 1} did not load a model in {timeout}s")
                time.sleep(0.2)

    @staticmethod
    def _scrape(port: int, metric: str) -> list[tuple[dict[str, str], float]]:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return []
        out = []
        for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
        return out

    def _active_models(self) -> str:
        rows = self._scrape(9400, "streamscore_model_info")
        return ", ".join(
            f"{lab['role']} v{lab['model_version']}"
            for lab, v in sorted(rows, key=lambda r: r[0]["role"])
            if v == 1
        )

    def _feedback_mae(self) -> dict[str, float]:
        return {
            f"v{lab['model_version']}/{lab['role']}": v
            for lab, v in self._scrape(9500, "streamscore_live_mae")
        }

    def _retrain(self) -> bool:
        """Fit a candidate with c on the ground truth and publish it as shadow."""
        cmd = [
            sys.executable,
            "-m",
            "streamscore.cli",
            "train",
            "--store-dir",
            str(self.store_dir),
            "--features",
            "a,b,c",
            "--as",
            "shadow",
            "--name",
            "demo",
            "--min-rows",
            "200",
            "--publisher",
            "demo-retrain",
        ]
        started = time.time()
        proc = subprocess.Popen(
            cmd,
            env=self._child_env(background=True, publisher=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.children.append(proc)  # stopped with the others, Ctrl-C included
        lower_priority(proc.pid)  # batch work: the score workers come first
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            self.training_runs.append((started, time.time()))
        (self.s.results_dir / "train.log").write_text(out)
        if proc.returncode != 0:
            print(
                f"demo: training not published yet (exit {proc.returncode}); retrying", flush=True
            )
            return False
        print(out.rstrip(), flush=True)
        self._mark("v2 (a, b, c) trained on the ground truth, out as shadow")
        return True

    # ---- output
    def _mae_by_version(self, since: float = 0.0) -> dict[int, float]:
        acc: dict[int, list[float]] = defaultdict(list)
        for t, v, err, _lat in self.obs.rows:
            if t >= since:
                acc[v].append(err)
        return {v: float(np.mean(e)) for v, e in sorted(acc.items())}

    def _progress(self) -> str:
        mae = ", ".join(f"v{v}: {m:.3f}" for v, m in self._mae_by_version(time.time() - 10).items())
        fb = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(self._feedback_mae().items()))
        return (
            f"[{time.time() - self.t0:5.0f}s] produced {self.truth.produced:>6}  "
            f"scored {self.obs.predictions:>6}  dead-lettered {sum(self.obs.dead.values()):>3}  "
            f"labels {self.labels_sent:>6} | active: {self._active_models() or '-'} | "
            f"live MAE (feedback worker): {fb or '-'} | demo's own, last 10 s: {mae or '-'}"
        )

    def _latency_ms(self, training: bool | None = None) -> dict[str, float | int | None]:
        """p50/p99 end-to-end latency over all primary predictions (``training=None``), over
        those scored while a training run was going (True), or over the others (False)."""
        runs = self.training_runs
        lat = [
            r[3] * 1000
            for r in self.obs.rows
            if training is None or any(a <= r[0] <= b for a, b in runs) == training
        ]
        if not lat:
            return {"p50": None, "p99": None, "n": 0}
        p50, p99 = np.percentile(lat, [50, 99])
        return {"p50": float(p50), "p99": float(p99), "n": len(lat)}

    def summary(self) -> dict[str, Any]:
        lat = np.array([r[3] for r in self.obs.rows]) if self.obs.rows else np.zeros(1)
        scored = [r[0] for r in self.obs.rows]
        elapsed = max(1e-9, max(scored) - min(scored)) if scored else 1.0
        return {
            "events_produced": self.truth.produced,
            "malformed_produced": self.truth.malformed,
            "predictions": self.obs.predictions,
            "dead_letters": dict(self.obs.dead),
            "model_versions_first_seen_s": {
                str(v): round(t - self.t0, 1) for v, t in sorted(self.obs.first_seen.items())
            },
            "timeline_s": [(round(t - self.t0, 1), text) for t, text in self.timeline],
            "active_at_end": getattr(self, "final_active", ""),
            "live_mae_by_version": self._mae_by_version(),
            "live_mae_feedback_worker": getattr(self, "final_feedback_mae", {}),
            "labels_sent": self.labels_sent,
            "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
            "latency_p99_ms": float(np.percentile(lat, 99) * 1000),
            "latency_ms_while_training": self._latency_ms(training=True),
            "latency_ms_otherwise": self._latency_ms(training=False),
            "training_runs_s": [
                (round(a - self.t0, 1), round(b - self.t0, 1)) for a, b in self.training_runs
            ],
            "scored_per_s": self.obs.predictions / elapsed,
        }

    def plot(self, path: Path) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = np.array(self.obs.rows) if self.obs.rows else np.zeros((0, 4))
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        for v in sorted(set(rows[:, 1].astype(int).tolist())):
            sel = rows[rows[:, 1] == v]
            t = sel[:, 0] - self.t0
            err = sel[:, 2]
            window = max(1, min(200, len(err) // 5))
            rolling = np.convolve(err, np.ones(window) / window, mode="valid")
            ax1.plot(t[window - 1 :], rolling, label=f"model v{v}")
        top = ax1.get_ylim()[1]
        for i, (t, text) in enumerate(self.timeline):
            for ax in (ax1, ax2):
                ax.axvline(t - self.t0, color="k", linestyle="--", linewidth=1)
            ax1.annotate(text, (t - self.t0, top * (0.92 - 0.08 * (i % 4))), fontsize=8)
        ax1.set_ylabel("rolling MAE")
        ax1.legend()
        ax1.set_title("streamscore demo: live error per model version")
        for i, (a, b) in enumerate(self.training_runs):
            ax2.axvspan(
                a - self.t0,
                b - self.t0,
                color="tab:orange",
                alpha=0.15,
                label=f"training run (nice +{BACKGROUND_NICE})" if i == 0 else None,
            )
        ax2.plot(rows[:, 0] - self.t0, rows[:, 3] * 1000, ",", alpha=0.5)
        if self.training_runs:
            ax2.legend(loc="upper right")
        ax2.set_ylabel("end-to-end latency (ms)")
        ax2.set_xlabel("seconds since start")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    # ---- main
    def run(self) -> dict[str, Any]:
        fresh_cluster = False
        if self.cluster is not None:
            from .localcluster import LocalCluster

            print("demo: starting the local cluster (first run downloads it)…", flush=True)
            local = LocalCluster(self.cluster, TopicSettings())
            fresh_cluster = not local.status().running
            local.up()
        self._create_topics()
        reg = registry_client(self.registry_settings.client_config())
        models = self._model_topic(reg)
        models.publish(
            demo_bundle("ab", version=1).to_bytes(),
            Role.PRIMARY,
            key=self.signer,
            publisher="demo",
        )
        shutil.rmtree(self.store_dir, ignore_errors=True)
        with _processes() as procs:
            self.children = procs
            for i in range(self.s.workers):
                procs.append(
                    self._start(
                        f"worker-{i + 1}",
                        [
                            "score",
                            "--worker-id",
                            f"demo-{i + 1}",
                            "--group-id",
                            f"demo-{self.s.run_id}",
                            "--metrics-port",
                            str(9400 + i),
                        ],
                    )
                )
            feedback = self._start(
                "feedback",
                [
                    "feedback",
                    "--group-id",
                    f"demo-feedback-{self.s.run_id}",
                    "--store-dir",
                    str(self.store_dir),
                    "--metrics-port",
                    "9500",
                    "--auto-promote",
                    "--promote-min-labels",
                    str(self.s.promote_min_labels),
                    "--window-s",
                    "600",
                ],
                publisher=True,  # --auto-promote signs what it promotes
            )
            procs.append(feedback)
            workers = list(procs)  # the long-running ones; training runs come and go
            self._wait_ready(workers[: self.s.workers])
            self._wait_settled(f"demo-{self.s.run_id}", self.s.workers)
            print(
                "demo: 2 score workers and a feedback worker are up; metrics on "
                + ", ".join(f"http://127.0.0.1:{9400 + i}/metrics" for i in range(self.s.workers))
                + ", http://127.0.0.1:9500/metrics",
                flush=True,
            )
            ser, producer = self._events_producer(reg)
            if fresh_cluster and self.s.warmup_s > 0:
                print(
                    f"demo: the broker has just started: {self.s.warmup_s:.0f}s of unmeasured "
                    "warm-up traffic first",
                    flush=True,
                )
                self._warm_up(ser, producer, self.s.warmup_s)
            self.t0 = time.time()
            self._mark("v1 (features a, b) published as primary, signed")
            threads = [
                threading.Thread(target=self._produce, args=(ser, producer), daemon=True),
                threading.Thread(target=self._label, args=(reg,), daemon=True),
                threading.Thread(target=self._observe, daemon=True),
            ]
            for t in threads:
                t.start()
            v2_events_at = self.t0 + self.s.duration_s * self.s.v2_events_at
            train_at = self.t0 + self.s.duration_s * self.s.train_at
            v2_events_marked = trained = False
            next_try = train_at
            trainer: threading.Thread | None = None
            train_result: list[bool] = []
            try:
                next_progress = time.time() + 2
                while threads[0].is_alive():
                    # a progress line every 2 s; the switch and the training run on time
                    due = [next_progress]
                    if not v2_events_marked:
                        due.append(v2_events_at)
                    if not trained and trainer is None:
                        due.append(next_try)
                    time.sleep(max(0.05, min(due) - time.time()))
                    if time.time() >= next_progress:
                        print(self._progress(), flush=True)
                        next_progress = time.time() + 2
                    for p in workers:
                        if p.poll() is not None:
                            raise RuntimeError(
                                f"a worker exited with {p.returncode}; see "
                                f"{self.s.results_dir}/*.log"
                            )
                    now = time.time()
                    if not v2_events_marked and now >= v2_events_at:
                        self._mark("producers switch to v2 events (with c)")
                        v2_events_marked = True
                    if trainer is not None and not trainer.is_alive():
                        trainer = None
                        trained = bool(train_result and train_result[-1])
                        if not trained:
                            next_try = now + 3
                    if not trained and trainer is None and now >= next_try:
                        # in the background: progress keeps printing while it trains
                        trainer = threading.Thread(
                            target=lambda: train_result.append(self._retrain()), daemon=True
                        )
                        trainer.start()
                # let the last events and labels drain
                deadline = time.time() + 15
                while time.time() < deadline and (
                    self.obs.predictions + sum(self.obs.dead.values()) < self.truth.produced
                ):
                    time.sleep(0.5)
                time.sleep(self.s.label_delay_s + 2)  # the last labels reach the feedback worker
                self.final_active = self._active_models()
                self.final_feedback_mae = self._feedback_mae()
            finally:
                self.stop.set()
                for t in threads:
                    t.join(10)
        summary = self.summary()
        self.s.results_dir.mkdir(parents=True, exist_ok=True)
        (self.s.results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot = self.plot(self.s.results_dir / "demo.png")
        summary["plot"] = str(plot) if plot else None
        return summary


def _header(msg: Any, name: str) -> str:
    for k, v in msg.headers() or []:
        if k == name:
            return bytes(v).decode()
    return "?"


def _p50_p99(lat: dict[str, Any] | None) -> str:
    if not lat or not lat.get("n"):
        return "-"
    return f"{lat['p50']:.1f} / {lat['p99']:.1f} ({lat['n']} predictions)"


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("events produced", summary["events_produced"]),
        ("  of which malformed", summary["malformed_produced"]),
        ("primary predictions", summary["predictions"]),
        ("dead letters", ", ".join(f"{k}: {v}" for k, v in summary["dead_letters"].items()) or 0),
        ("labels sent", summary["labels_sent"]),
        ("model versions first answering (s)", summary["model_versions_first_seen_s"]),
        ("active at the end", summary["active_at_end"]),
        (
            "live MAE by version (demo)",
            {k: round(v, 4) for k, v in summary["live_mae_by_version"].items()},
        ),
        (
            "live MAE (feedback worker)",
            {k: round(v, 4) for k, v in summary["live_mae_feedback_worker"].items()},
        ),
        (
            "end-to-end latency p50 / p99 (ms)",
            f"{summary['latency_p50_ms']:.1f} / {summary['latency_p99_ms']:.1f}",
        ),
        *(
            (f"  {label}", _p50_p99(summary.get(key)))
            for label, key in (
                ("while a training run was going", "latency_ms_while_training"),
                ("otherwise", "latency_ms_otherwise"),
            )
        ),
        ("scored per second (bound by the offered rate)", f"{summary['scored_per_s']:.0f}"),
        ("plot", summary.get("plot")),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n== streamscore demo summary ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("timeline (s):")
    for t, text in summary["timeline_s"]:
        print(f"  {t:6.1f}  {text}")
