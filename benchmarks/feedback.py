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
Reported: labels per second from the first message produced to the last label joined,
and each worker's share. The store is then checked: N rows, no event id twice. Every
topic the run created, the join topics included, is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from streamscore.cli import settings_from_env
from streamscore.core.config import TopicSettings
from streamscore.dev.supervise import group_settled
from streamscore.feedback import groundtruth
from streamscore.feedback.router import join_topic_for
from streamscore.kafka.admin import TopicSpec, create_topics
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.serde.wire import registry_client
from tests.processes import WorkerProcess, launch, worker_env

JOINED = 'streamscore_feedback_labels_total{outcome="joined"}'


def joined(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(JOINED):
            return float(line.split()[-1])
    return 0.0


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

    def fresh_inputs(self, k: int) -> None:
        """Predictions and feedback topics of their own for the run with k workers."""
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

    def fill(self, n: int) -> None:
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
        for i in range(n):
            eid, key = f"{self.prefix}-{i}", f"entity-{i % 5000}"
            for topic, k, v in (
                (self.topics.predictions, key, enc_p(prediction(eid, key, now, i))),
                (
                    self.topics.feedback,
                    eid,
                    enc_f({"event_id": eid, "label": 1.0, "observed_time": now}),
                ),
            ):
                while True:
                    try:
                        p.produce(topic, v, k.encode())
                        break
                    except BufferError:
                        p.poll(0.05)
            if i % 10_000 == 0:
                p.poll(0)
        assert p.flush(120) == 0, "the broker did not take every message"
        print(
            f"bench: {n:,} predictions + {n:,} labels produced in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )

    def env(self) -> dict[str, str]:
        return worker_env(
            dict(os.environ), self.kafka.bootstrap_servers, self.registry.url, self.topics
        )

    def run(self, k: int, n: int, timeout_s: float) -> dict[str, Any]:
        self.fresh_inputs(k)
        group = self.topic(f"fb{k}")
        self.created.append(join_topic_for(group))
        store = self.workdir / f"gt-{self.run_id}-{k}"
        procs: list[WorkerProcess] = []
        try:
            for j in range(k):
                procs.append(
                    launch(
                        "feedback",
                        "--groundtruth",
                        str(store),
                        "--window",
                        "1h",
                        "--state-dir",
                        str(self.workdir / f"state-{self.run_id}-{k}"),
                        worker_id=f"fb{k}-{j}",
                        group_id=group,
                        env=self.env(),
                        log_path=self.workdir / f"feedback-{k}-{j}.log",
                    )
                )
            self.wait_settled(
                f"{group}.router", [self.topics.predictions, self.topics.feedback], k, 120
            )
            self.wait_settled(group, [join_topic_for(group)], k, 120)
            t0 = time.monotonic()
            self.fill(n)
            done_t = None
            deadline = t0 + timeout_s
            while time.monotonic() < deadline:
                for w in procs:
                    if w.proc.poll() is not None:
                        raise RuntimeError(f"a feedback worker exited {w.proc.returncode}")
                total = sum(joined(w.metrics_port) for w in procs)
                now = time.monotonic()
                if total >= n:
                    done_t = now
                    break
                time.sleep(0.1)
            if done_t is None:
                raise RuntimeError(f"{k} worker(s) did not join {n:,} labels in {timeout_s}s")
            per_worker = [joined(w.metrics_port) for w in procs]
        finally:
            for w in procs:
                w.proc.terminate()  # all at once, then wait for each
            for w in procs:
                w.terminate()
                w.close()
        rows = groundtruth.read_rows(store)
        ids = {r["event_id"] for r in rows}
        return {
            "workers": k,
            "labels": n,
            "total_s": round(done_t - t0, 2),
            "labels_per_s": round(n / (done_t - t0)),
            "joined_per_worker": per_worker,
            "rows": len(rows),
            "rows_unique": len(ids),
        }

    def cleanup(self) -> None:
        if not self.created:
            return
        for fut in self.admin.delete_topics(self.created, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()


def state_bench(n: int, workdir: Path) -> dict[str, Any]:
    """The join state alone (no Kafka): ``n`` pending predictions fed to one partition's
    RocksDB state (committed every 50k as the loop does), peak RSS, a label for the
    oldest, then a restart from the local store and a restore on an empty directory
    from the changelog records the commits produced (kept in memory here)."""
    import io
    import resource
    import shutil

    import fastavro

    from streamscore.core.records import Feedback, Prediction, Role
    from streamscore.feedback.join import JoinState
    from streamscore.feedback.state import PartitionState

    schema = fastavro.parse_schema(schemas.load("prediction"))

    def wire(eid: str, t: int) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\x00\x00\x00\x00\x01")
        fastavro.schemaless_writer(buf, schema, prediction(eid, "k", t, 1))
        return buf.getvalue()

    def decode(raw: bytes) -> Prediction:
        return Prediction.from_avro(fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema))

    tp = ("bench.join", 0)
    root = workdir / f"state-bench-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    log: list[tuple[int, bytes | None, bytes | None]] = []

    def commit(state: PartitionState, keep: bool) -> None:
        recs = state.changes()
        if keep:
            log.extend((len(log) + i, k, v) for i, (k, v) in enumerate(recs))
        state.applied(len(log) - 1)

    keep_log = n <= 2_000_000  # the restore figure needs the records in memory
    join = JoinState(30 * 86_400_000, decode_prediction=decode)
    state = PartitionState(root / "p0", cache_entries=100_000)
    join.open_partition(tp, state)
    t0_ms = 1_700_000_000_000
    raw = wire("e0", t0_ms)
    t0 = time.perf_counter()
    for i in range(n):
        t = t0_ms + i
        p = Prediction(
            f"e{i}", "k", t, "bench", 1, Role.PRIMARY, 1.0, None, (), (), ("a", "b"),
            (1.0, 2.0), {}, (tp[0], tp[1], i),
        )  # fmt: skip
        join.add_prediction(p, raw)
        join.consumed((tp[0], tp[1], i))
        if state.dirty >= 50_000:
            commit(state, keep_log)
    commit(state, keep_log)
    feed_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    out = join.add_label(Feedback("e0", 1.0, t0_ms + 86_400_000, (tp[0], tp[1], n)))
    oldest_ms = (time.perf_counter() - t1) * 1000
    assert [r["event_id"] for r in out.rows] == ["e0"], "the oldest did not join"
    join.consumed((tp[0], tp[1], n))
    commit(state, keep_log)
    join.close_partition(tp)
    t2 = time.perf_counter()
    again = PartitionState(root / "p0", cache_entries=100_000)
    join.open_partition(tp, again)
    out = join.add_label(Feedback("e1", 1.0, t0_ms + 86_400_000, (tp[0], tp[1], n + 1)))
    restart_s = time.perf_counter() - t2
    assert [r["event_id"] for r in out.rows] == ["e1"] and again.meta.input_offset == n + 1
    join.close_partition(tp)
    restore_rate = None
    if keep_log:
        t3 = time.perf_counter()
        fresh = PartitionState(root / "fresh", cache_entries=100_000)
        applied = fresh.restore(log)
        restore_s = time.perf_counter() - t3
        assert fresh.meta.pending_predictions == n - 1 and fresh.get(f"e{n - 1}") is not None
        fresh.close()
        restore_rate = round(applied / restore_s)
    disk_mb = sum(f.stat().st_size for f in (root / "p0").rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(root, ignore_errors=True)
    return {
        "pending": n,
        "feed_per_s": round(n / feed_s),
        "peak_rss_mb": round(rss_mb),
        "oldest_label_join_ms": round(oldest_ms, 2),
        "restart_from_local_s": round(restart_s, 3),
        "restore_records_per_s": restore_rate,
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
        for k in counts:
            r = bench.run(k, args.labels, args.timeout_s)
            results.append(r)
            print(
                f"bench: {k} feedback worker(s): {r['labels_per_s']:,} labels/s, "
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
    print("| workers | labels | labels/s | seconds | joined per worker | store rows / unique |")
    print("|---|---|---|---|---|---|")
    for r in results:
        shares = " / ".join(f"{x:,.0f}" for x in r["joined_per_worker"])
        print(
            f"| {r['workers']} | {r['labels']:,} | {r['labels_per_s']:,} | {r['total_s']} "
            f"| {shares} | {r['rows']:,} / {r['rows_unique']:,} |"
        )
    if len(results) >= 2 and results[0]["labels_per_s"]:
        ratio = results[-1]["labels_per_s"] / results[0]["labels_per_s"]
        print(f"\n{results[-1]['workers']} vs {results[0]['workers']} worker(s): {ratio:.2f}x")
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
