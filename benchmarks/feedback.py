"""``make bench-feedback``: labels joined per second by one and by two feedback workers.

Run: ``python -m benchmarks.feedback [--labels N] [--workers 1,2] [--out FILE]``.

Uses the local Kafka + registry (started if it is not running, then stopped at the end)
or the cluster named by ``STREAMSCORE_BOOTSTRAP`` / ``STREAMSCORE_REGISTRY_URL``. For each
worker count k the run creates its own ``predictions`` topic (4 partitions, keyed by
entity key, as score workers write them) and ``feedback`` topic (4 partitions, keyed by
event id), starts k ``streamscore feedback`` processes in a fresh consumer group (so a
fresh join topic, also 4 partitions) with one shared ground-truth store, waits until both
of their groups (router and join) have settled with every member owning partitions, then
produces N predictions and N labels as fast as it can and follows the workers'
``streamscore_feedback_labels_total{outcome="joined"}`` until all N are joined.
Reported: labels per second from the first message produced to the last label joined
(each worker's checkpoint steps too: count and seconds, as its metrics give them),
and each worker's share. The store is then checked: N rows, no event id twice. Every
topic the run created, the join topics included, is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from benchmarks.measure import machine_jiffies, proc_cpu_s, proc_mem_kb
from streamscore.cli import settings_from_env
from streamscore.core.config import TopicSettings
from streamscore.dev.supervise import group_settled
from streamscore.feedback import groundtruth
from streamscore.feedback.router import join_topic_for
from streamscore.kafka.admin import TopicSpec, create_topics
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import registry_client
from tests.processes import WorkerProcess, children, launch, sample, worker_env

JOINED = 'streamscore_feedback_labels_total{outcome="joined"}'


PENDING_LABELS = 'streamscore_feedback_pending{side="label"}'


def look(port: int) -> tuple[float, float]:
    """The worker's labels joined so far, and its labels waiting for their prediction."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0, 0.0
    found = {JOINED: 0.0, PENDING_LABELS: 0.0}
    for line in text.splitlines():
        for name in found:
            if line.startswith(name):
                found[name] = float(line.split()[-1])
    return found[JOINED], found[PENDING_LABELS]


def joined(port: int) -> float:
    return look(port)[0]


def _next_look(last: tuple[float, float] | None, now: float, total: float, n: int) -> float:
    """Seconds until the next look at the workers' metrics: every 50 ms until the first
    join and once the end is near (within 2 s at the rate since the previous look), else
    every 0.5 s. A render of the metrics costs the worker's interpreter about 10 ms: ten
    a second took ~7 % of its samples."""
    if total <= 0:
        return 0.05  # the first join starts the figure
    if last is None or total <= last[1]:
        return 0.5
    rate = (total - last[1]) / max(now - last[0], 1e-3)
    return 0.05 if (n - total) / rate < 2.0 else 0.5


def checkpoint_steps(port: int) -> dict[str, list[float]]:
    """The worker's checkpoint steps so far: {step: [count, seconds]}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[float]] = {}
    for m in re.finditer(
        r'^streamscore_feedback_checkpoint_seconds_(count|sum)\{step="(\w+)"\} (\S+)$',
        text,
        re.M,
    ):
        kind, step, value = m.groups()
        out.setdefault(step, [0.0, 0.0])[0 if kind == "count" else 1] = round(float(value), 3)
    return out


def family(pid: int) -> list[int]:
    """A worker's process and its descendants (its router process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def rss_mb(pid: int) -> float | None:
    """The peak RSS (VmHWM) of a worker, MB: its process's and its router process's (if
    any) added (an upper bound of their peak together)."""
    return added(rss_each_mb(pid))


def added(each: list[float]) -> float | None:
    """Peaks of a worker's processes (:func:`rss_each_mb`) added, MB."""
    return None if not each else round(sum(each), 1)


def rss_each_mb(pid: int) -> list[float]:
    """The peak RSS (VmHWM) of the worker's process, then of its router process, MB."""
    out = []
    for p in family(pid):
        with contextlib.suppress(OSError, KeyError):
            out.append(round(proc_mem_kb(p)["VmHWM"] / 1024, 1))
    return out


class RssWatch:
    """The peak of a worker's RSS, its processes' (its router's) added at the same
    moment, sampled every ``every_s`` on a thread of its own until :meth:`stop`. Each
    process's own peak (VmHWM, exact) is :func:`rss_each_mb`; their sum (:func:`rss_mb`)
    adds peaks of different moments (the router's while it routes a backlog, the
    join's at its largest state)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.peak_mb = 0.0
        self._pid = pid
        self._done = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every_s):
            total = 0
            for p in family(self._pid):
                with contextlib.suppress(OSError, KeyError):
                    total += proc_mem_kb(p)["VmRSS"]
            self.peak_mb = max(self.peak_mb, round(total / 1024, 1))

    def stop(self) -> float:
        self._done.set()
        self._thread.join(5)
        return self.peak_mb


def usage(pids: list[int]) -> tuple[float, tuple[int, int]]:
    """The CPU seconds the workers have used (their threads and their router processes
    included), and the machine's (all, idle) jiffies: two readings give CPU per label
    and how busy the machine was in between."""
    return sum(proc_cpu_s(p) for pid in pids for p in family(pid)), machine_jiffies()


def between(
    start: tuple[float, tuple[int, int]], end: tuple[float, tuple[int, int]], n: int
) -> dict[str, float]:
    """What two :func:`usage` readings say: the workers' CPU seconds, their CPU
    milliseconds per 1,000 labels, and the machine's busy cores (the broker and the
    bench included) over the same time."""
    cpu = end[0] - start[0]
    all_j = end[1][0] - start[1][0]
    idle_j = end[1][1] - start[1][1]
    busy = (1 - idle_j / all_j) * (os.cpu_count() or 1) if all_j > 0 else 0.0
    return {
        "worker_cpu_s": round(cpu, 2),
        "cpu_ms_per_1k_labels": round(cpu * 1e6 / n, 1),
        "machine_busy_cores": round(busy, 2),
    }


def prediction(eid: str, key: str, t_ms: int, i: int) -> dict[str, Any]:
    return {
        "event_id": eid,
        "key": key,
        "event_time": t_ms,
        "scored_time": t_ms + 3,
        "model_name": "bench",
        "model_version": 1,
        "role": "primary",
        "value": float(i % 97),
        "score": float(i % 97),
        "label": None,
        "degraded": False,
        "late": False,
        "detail": {
            "probabilities": [],
            "classes": [],
            "feature_names": ["a", "b"],
            "features": [float(i % 13), float(i % 7)],
            "inputs": {},
        },
    }


class FeedbackBench:
    def __init__(self, kafka: Any, registry: Any, workdir: Path) -> None:
        self.kafka = kafka
        self.registry = registry
        self.workdir = workdir
        self.run_id = f"{time.strftime('%Y%m%d%H%M%S')}.{os.getpid()}"
        self.admin = AdminClient({**kafka.client_config(), "log_level": 0})
        self.reg = registry_client(registry.client_config())
        self.created: list[str] = []
        self.topics = TopicSettings(
            events=self.topic("events"),
            predictions=self.topic("predictions"),
            predictions_shadow=self.topic("predictions.shadow"),
            telemetry=self.topic("telemetry"),
            models=self.topic("models"),
            feedback=self.topic("feedback"),
            dlq=self.topic("dlq"),
            late=self.topic("late"),
        )
        self.prefix = ""

    def topic(self, suffix: str) -> str:
        return f"bench.{self.run_id}.{suffix}"

    def create(self, name: str, partitions: int) -> None:
        create_topics(
            self.admin, [TopicSpec(name, partitions, replication_factor=1)], exist_ok=False
        )
        self.created.append(name)

    def setup(self) -> None:
        self.create(self.topics.telemetry, 1)
        self.create(self.topics.dlq, 1)

    def fresh_inputs(self, k: str) -> None:
        """Predictions and feedback topics of their own for one run."""
        self.topics = replace(
            self.topics,
            predictions=self.topic(f"predictions.{k}"),
            predictions_shadow=self.topic(f"predictions.shadow.{k}"),
            feedback=self.topic(f"feedback.{k}"),
        )
        self.create(self.topics.predictions, 4)
        self.create(self.topics.predictions_shadow, 4)
        self.create(self.topics.feedback, 4)
        self.prefix = f"{self.run_id}-k{k}"

    def wait_settled(self, group: str, topics: list[str], members: int, timeout: float) -> None:
        """Until ``group`` is stable with ``members`` members that own every partition of
        ``topics`` (each member some)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                md = self.admin.list_topics(timeout=10).topics
                parts = {(t, p) for t in topics if t in md for p in md[t].partitions}
                (fut,) = self.admin.describe_consumer_groups([group], request_timeout=5).values()
                desc = fut.result()
                owned = [
                    {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
                    for m in desc.members
                ]
                if parts and group_settled(desc.state, owned, parts, members):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"consumer group {group} did not settle in {timeout:.0f}s")

    def fill(self, n: int, *, labels: range | None = None) -> None:
        """``n`` predictions and a label for each of ``labels`` (default: every one)."""
        labelled = range(n) if labels is None else labels
        t0 = time.perf_counter()
        enc_p = AvroSerializer(
            self.reg, f"{self.topics.predictions}-value", schemas.load("prediction")
        )
        enc_f = AvroSerializer(self.reg, f"{self.topics.feedback}-value", schemas.load("feedback"))
        p = Producer(
            {
                **self.kafka.client_config(),
                "linger.ms": 20,
                "queue.buffering.max.messages": 500_000,
                "log_level": 0,
            }
        )
        now = int(time.time() * 1000)
        out: list[tuple[str, str, bytes]] = []
        for i in range(max(n, labelled.stop)):
            eid, key = f"{self.prefix}-{i}", f"entity-{i % 5000}"
            if i < n:
                out.append((self.topics.predictions, key, enc_p(prediction(eid, key, now, i))))
            if i in labelled:
                label = {"event_id": eid, "label": 1.0, "observed_time": now}
                out.append((self.topics.feedback, eid, enc_f(label)))
            for topic, k, v in out:
                while True:
                    try:
                        p.produce(topic, v, k.encode())
                        break
                    except BufferError:
                        p.poll(0.05)
            out.clear()
            if i % 10_000 == 0:
                p.poll(0)
        assert p.flush(120) == 0, "the broker did not take every message"
        print(
            f"bench: {n:,} predictions + {len(labelled):,} labels produced in "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )

    def env(self) -> dict[str, str]:
        return worker_env(
            dict(os.environ), self.kafka.bootstrap_servers, self.registry.url, self.topics
        )

    def launch(self, j: int, group: str, store: Path, state_dir: Path, *extra: str) -> Any:
        return launch(
            "feedback",
            "--groundtruth",
            str(store),
            "--window",
            "1h",
            "--state-dir",
            str(state_dir),
            *extra,
            worker_id=f"fb-{j}",
            group_id=group,
            env=self.env(),
            log_path=self.workdir / f"feedback-{group.rsplit('.', 1)[-1]}-{j}.log",
        )

    def run(
        self,
        k: int,
        n: int,
        timeout_s: float,
        *,
        backlog: bool = False,
        profile: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """``n`` labels joined by ``k`` workers. Live (default): the workers are up and
        settled, then the bench produces (the figure is bounded by the producer, on the
        same machine). ``backlog``: everything is produced first, then the workers start;
        the figure runs from the first label joined to the last (startup and the group
        join are reported apart)."""
        tag = f"{k}{'b' if backlog else ''}.{len(self.created)}"
        self.fresh_inputs(tag)
        group = self.topic(f"fb{tag}")
        self.created.append(join_topic_for(group))
        self.created.append(join_topic_for(group) + ".changelog")
        store = self.workdir / f"gt-{group}"
        procs: list[WorkerProcess] = []
        watches: list[RssWatch] = []
        spy: subprocess.Popen[bytes] | None = None
        t0: float | None = None
        at_t0: tuple[float, tuple[int, int]] | None = None  # usage() when the clock starts
        at_done: tuple[float, tuple[int, int]] | None = None  # ... and when it stops
        peak_pending = 0.0  # labels waiting for their prediction, at the looks
        if backlog:
            self.fill(n)
        try:
            t_start = time.monotonic()
            for j in range(k):
                procs.append(self.launch(j, group, store, self.workdir / f"state-{group}", *extra))
                watches.append(RssWatch(procs[-1].proc.pid))
            if profile is not None:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "100",
                     "--threads", "-f", "raw", "-o", str(profile),
                     "--pid", str(procs[0].proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            if not backlog:
                t = self.topics  # every topic the router reads (the shadows' too)
                sources = [t.predictions, t.predictions_shadow, t.feedback]
                self.wait_settled(f"{group}.router", sources, k, 120)
                self.wait_settled(group, [join_topic_for(group)], k, 120)
                t0 = time.monotonic()
                at_t0 = usage([w.proc.pid for w in procs])
                self.fill(n)
            done_t = None
            deadline = time.monotonic() + timeout_s
            last: tuple[float, float] | None = None  # (time, joined) at the previous look
            while time.monotonic() < deadline:
                for w in procs:
                    if w.proc.poll() is not None:
                        raise RuntimeError(f"a feedback worker exited {w.proc.returncode}")
                looks = [look(w.metrics_port) for w in procs]
                total = sum(j for j, _ in looks)
                peak_pending = max(peak_pending, sum(p for _, p in looks))
                now = time.monotonic()
                if t0 is None and total > 0:
                    t0 = now
                    at_t0 = usage([w.proc.pid for w in procs])
                if total >= n:
                    done_t = now
                    at_done = usage([w.proc.pid for w in procs])
                    break
                time.sleep(_next_look(last, now, total, n))
                last = (now, total)
            if done_t is None or t0 is None or at_t0 is None or at_done is None:
                raise RuntimeError(f"{k} worker(s) did not join {n:,} labels in {timeout_s}s")
            per_worker = [joined(w.metrics_port) for w in procs]
            rss_each = [rss_each_mb(w.proc.pid) for w in procs]
            rss = [added(e) for e in rss_each]
            steps = [checkpoint_steps(w.metrics_port) for w in procs]
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
            together = [watch.stop() for watch in watches]
            for w in procs:
                w.proc.terminate()  # all at once, then wait for each
            for w in procs:
                w.terminate()
                w.close()
        rows = groundtruth.read_rows(store)
        ids = {r["event_id"] for r in rows}
        return {
            "workers": k,
            "mode": "backlog" if backlog else "live",
            "labels": n,
            "total_s": round(done_t - t0, 2),
            "labels_per_s": round(n / (done_t - t0)),
            "start_to_first_join_s": round(t0 - t_start, 2) if backlog else None,
            "joined_per_worker": per_worker,
            **between(at_t0, at_done, n),
            "peak_pending_labels": int(peak_pending),
            "rss_mb": rss,
            "rss_mb_by_process": rss_each,
            # each worker's processes together at their largest (sampled every 0.2 s)
            "rss_mb_together": together,
            "checkpoint_steps": steps,
            "rows": len(rows),
            "rows_unique": len(ids),
        }

    def restart(self, n: int, timeout_s: float, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """``n`` pending predictions joined in by one worker (through Kafka), SIGTERM;
        a label for the oldest produced, the worker started again on its state directory:
        seconds from the process start to that label joined. Then the same on an empty
        state directory (a fresh host): restored from the changelog, the rate read from
        the worker's log."""
        self.fresh_inputs(f"restart.{len(self.created)}")
        group = self.topic(f"fbr{len(self.created)}")
        self.created += [join_topic_for(group), join_topic_for(group) + ".changelog"]
        store, state_dir = self.workdir / f"gt-{group}", self.workdir / f"state-{group}"
        pending = "streamscore_feedback_pending"
        self.fill(n, labels=range(0))
        w = self.launch(0, group, store, state_dir, *extra)
        watch = RssWatch(w.proc.pid)
        t0 = time.monotonic()
        try:
            w.wait_until(
                lambda: sample(w.metrics_port, pending, {"side": "prediction"}) >= n,
                f"{n:,} pending predictions",
                timeout=timeout_s,
            )
            fill_s = time.monotonic() - t0
            rss_each = rss_each_mb(w.proc.pid)
            rss = added(rss_each)
            assert w.terminate(120) == 0, w.log()
        finally:
            together = watch.stop()
            w.close()
        result: dict[str, Any] = {
            "pending": n,
            "joined_in_s": round(fill_s, 1),
            # the worker's processes together at their largest (sampled every 0.2 s)
            "peak_rss_mb_filling": together,
            # each process's own peak (exact), the worker's then its router's, and their sum
            "peak_rss_mb_filling_by_process": rss_each,
            "peak_rss_mb_filling_sum_of_peaks": rss,
        }
        for i, (name, where) in enumerate(
            (("local", state_dir), ("fresh_host", self.workdir / f"state-{group}-fresh"))
        ):
            self.fill(0, labels=range(i, i + 1))  # the oldest pending (then the next)
            w = self.launch(1 + i, group, store, where, *extra)
            t0 = time.monotonic()
            try:
                w.wait_until(lambda w=w: joined(w.metrics_port) >= 1, "the label joined", timeout_s)
                result[f"{name}_start_to_join_s"] = round(time.monotonic() - t0, 2)
                result[f"{name}_pending_after"] = sample(
                    w.metrics_port, pending, {"side": "prediction"}
                )
                result[f"{name}_peak_rss_mb"] = rss_mb(w.proc.pid)  # the restore included
                assert w.terminate(120) == 0, w.log()
                text = w.log_path.read_text(errors="replace")
            finally:
                w.close()
            applied = [
                (int(m.group(1)), float(m.group(2)))
                for m in re.finditer(r"(\d+) changelog records applied in ([\d.]+)s", text)
            ]
            records = sum(a for a, _ in applied)
            secs = sum(s for _, s in applied)
            result[f"{name}_changelog_records"] = records
            result[f"{name}_restore_s"] = round(secs, 2)
            if name == "fresh_host" and secs > 0:
                result["restore_records_per_s"] = round(records / secs)
        return result

    def cleanup(self) -> None:
        if not self.created:
            return
        for fut in self.admin.delete_topics(self.created, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()


def state_bench(n: int, workdir: Path, commit_every: int = 50_000) -> dict[str, Any]:
    """The join state alone (no Kafka): ``n`` pending predictions fed to one partition's
    RocksDB state (read ahead per 1,000 and committed every ``commit_every`` changes, as
    the loop does per consumed batch and when the changes outgrow the cache), peak RSS,
    a label for the oldest, then a restart from the local store and a restore into an
    empty directory from the records a compacted changelog would hold (streamed from the
    first store, never held in memory)."""
    import io
    import resource
    import shutil
    import threading

    import fastavro

    from streamscore.core.records import Feedback, Prediction, Role
    from streamscore.feedback.join import JoinState
    from streamscore.feedback.memory import tune_malloc
    from streamscore.feedback.state import PartitionState, relax_gc

    tune_malloc(os.environ, threading.Event())  # as the feedback worker does
    relax_gc()
    schema = fastavro.parse_schema(schemas.load("prediction"))

    def wire(eid: str, t: int) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00\x00\x00\x00\x01")
        fastavro.schemaless_writer(buf, schema, prediction(eid, "k", t, 1))
        return buf.getvalue()

    def decode(raw: bytes) -> Prediction:
        rec = fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema, None)
        return Prediction.from_avro(cast(dict[str, Any], rec))

    tp = ("bench.join", 0)
    root = workdir / f"state-bench-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    commits = [0]

    def commit(state: PartitionState) -> None:
        commits[0] += len(state.seal())  # the changelog offsets they would take
        state.applied(commits[0] - 1)

    join = JoinState(30 * 86_400_000, decode_prediction=decode)
    state = PartitionState(root / "p0", cache_entries=100_000)
    join.open_partition(tp, state)
    t0_ms = 1_700_000_000_000
    raw = wire("e0", t0_ms)
    t0 = time.perf_counter()
    for i in range(n):
        if i % 1000 == 0:  # the loop reads each consumed batch's entries in one multi-get
            join.prefetch(tp, [f"e{j}" for j in range(i, min(i + 1000, n))])
        pos = (tp[0], tp[1], i)
        p = Prediction(
            f"e{i}", "k", t0_ms + i, "bench", 1, Role.PRIMARY, 1.0, None, (), (), ("a", "b"),
            (1.0, 2.0), {}, pos,
        )  # fmt: skip
        join.add_prediction(p, raw)
        join.consumed(pos)
        if state.dirty >= commit_every:
            commit(state)
    commit(state)
    feed_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    out = join.add_label(Feedback("e0", 1.0, t0_ms + 86_400_000, (tp[0], tp[1], n)))
    oldest_ms = (time.perf_counter() - t1) * 1000
    assert [r["event_id"] for r in out.rows] == ["e0"], "the oldest did not join"
    join.consumed((tp[0], tp[1], n))
    commit(state)
    join.close_partition(tp)
    t2 = time.perf_counter()
    again = PartitionState(root / "p0", cache_entries=100_000)
    join.open_partition(tp, again)
    out = join.add_label(Feedback("e1", 1.0, t0_ms + 86_400_000, (tp[0], tp[1], n + 1)))
    restart_s = time.perf_counter() - t2
    assert [r["event_id"] for r in out.rows] == ["e1"] and again.meta.input_offset == n + 1
    join.consumed((tp[0], tp[1], n + 1))
    commit(again)
    t3 = time.perf_counter()
    fresh = PartitionState(root / "fresh", cache_entries=100_000)
    applied = fresh.restore((i, k, v) for i, (k, v) in enumerate(again.snapshot()))
    restore_s = time.perf_counter() - t3
    assert fresh.meta.pending_predictions == n - 2 and fresh.get(f"e{n - 1}") is not None
    fresh.close()
    join.close_partition(tp)
    disk_mb = sum(f.stat().st_size for f in (root / "p0").rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(root, ignore_errors=True)
    return {
        "pending": n,
        "feed_s": round(feed_s, 1),
        "feed_per_s": round(n / feed_s),
        "peak_rss_mb": round(rss_mb),
        "oldest_label_join_ms": round(oldest_ms, 2),
        "restart_from_local_s": round(restart_s, 3),
        "restore_records": applied,
        "restore_records_per_s": round(applied / restore_s),
        "disk_mb": round(disk_mb),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feedback", description=__doc__)
    ap.add_argument(
        "--state-pending",
        type=int,
        default=0,
        help="instead: the join-state bench (no Kafka) with this many pending predictions",
    )
    ap.add_argument("--labels", type=int, default=60_000)
    ap.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument(
        "--mode",
        default="backlog,live",
        help="backlog (produced first, then the workers drain it) and/or live (produced "
        "while the workers run; bounded by the bench's producer on the same machine)",
    )
    ap.add_argument(
        "--restart-pending",
        type=int,
        default=0,
        help="instead: the restart bench through Kafka with this many pending predictions",
    )
    ap.add_argument("--runs", type=int, default=1, help="repeat each measurement (medians)")
    ap.add_argument("--profile", default=None, help="py-spy raw profile of the first worker")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra feedback flag")
    ap.add_argument("--out", default="results/bench-feedback.json")
    args = ap.parse_args(argv)
    if args.state_pending:
        r = state_bench(args.state_pending, Path(args.out).parent)
        print(json.dumps(r, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(f".state-{args.state_pending}.json").write_text(json.dumps(r))
        return 0 if r["peak_rss_mb"] < 500 else 1
    counts = [int(x) for x in args.workers.split(",") if x]
    env = settings_from_env(os.environ)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = out.parent / "bench-logs"
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = None
    started = False
    bench: FeedbackBench | None = None
    results: list[dict[str, Any]] = []
    try:
        if "STREAMSCORE_BOOTSTRAP" not in os.environ:
            from streamscore.dev.localcluster import LocalCluster

            cluster = LocalCluster(env.cluster, TopicSettings())
            if not cluster.status().running:
                print("bench: starting the local cluster…", flush=True)
                started = True
                cluster.up()
        bench = FeedbackBench(env.kafka, env.registry, workdir)
        bench.setup()
        if args.restart_pending:
            r = bench.restart(args.restart_pending, args.timeout_s, tuple(args.worker_arg))
            print(json.dumps(r, indent=2), flush=True)
            out.with_suffix(f".restart-{args.restart_pending}.json").write_text(json.dumps(r))
            return 0
        modes = [m for m in args.mode.split(",") if m]
        for k, mode, run in [(k, m, i) for k in counts for m in modes for i in range(args.runs)]:
            r = bench.run(
                k,
                args.labels,
                args.timeout_s,
                backlog=mode == "backlog",
                profile=Path(f"{args.profile}.{k}.{mode}.{run}") if args.profile else None,
                extra=tuple(args.worker_arg),
            )
            results.append(r)
            print(
                f"bench: {k} feedback worker(s), {mode}: {r['labels_per_s']:,} labels/s, "
                f"{r['total_s']}s; joined per worker {r['joined_per_worker']}; "
                f"store {r['rows']:,} rows, {r['rows_unique']:,} event ids",
                flush=True,
            )
    finally:
        if bench is not None:
            bench.cleanup()
        if started and cluster is not None:
            cluster.down()
    print()
    print(
        "| workers | mode | labels | labels/s | seconds | worker CPU ms / 1k labels "
        "| machine busy cores | joined per worker | peak RSS MB (worker + router: together; "
        "each) | store rows / unique |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        shares = " / ".join(f"{x:,.0f}" for x in r["joined_per_worker"])
        print(
            f"| {r['workers']} | {r['mode']} | {r['labels']:,} | {r['labels_per_s']:,} "
            f"| {r['total_s']} | {r['cpu_ms_per_1k_labels']} | {r['machine_busy_cores']} "
            f"| {shares} | {r['rss_mb_together']}; {r['rss_mb_by_process']} "
            f"| {r['rows']:,} / {r['rows_unique']:,} |"
        )
    for k in counts:
        for mode in modes:
            rates = sorted(
                r["labels_per_s"] for r in results if (r["workers"], r["mode"]) == (k, mode)
            )
            if rates:
                cpu = sorted(
                    r["cpu_ms_per_1k_labels"]
                    for r in results
                    if (r["workers"], r["mode"]) == (k, mode)
                )
                print(
                    f"median {k} worker(s) {mode}: {statistics.median(rates):,.0f} labels/s "
                    f"{rates}; {statistics.median(cpu)} worker CPU ms per 1k labels {cpu}"
                )
    host = {
        "cpus": os.cpu_count(),
        "command": "python -m benchmarks.feedback "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out.write_text(json.dumps({"host": host, "runs": results}, indent=2))
    print(f"written to {out}")
    ok = all(r["rows"] == r["rows_unique"] == args.labels for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
