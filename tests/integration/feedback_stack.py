"""Feedback-loop helpers for integration tests: a feedback worker process factory,
label producers, ``streamscore train`` runs and store inspection."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamscore.core.config import GroundTruthSettings, Secret
from streamscore.dev import synthetic
from streamscore.dev.s3proxy import S3Endpoint
from streamscore.feedback import groundtruth
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from tests.processes import WorkerProcess, launch, wait_until
from tests.records import prediction_record

from .stack import Stack

FEEDBACK_MODULE = "streamscore.cli"


#: a ground-truth location in tests: a local directory, or settings (an S3 table)
Store = Path | GroundTruthSettings


def gt_settings(store: Store) -> GroundTruthSettings:
    return store if isinstance(store, GroundTruthSettings) else GroundTruthSettings(str(store))


def s3_table(endpoint: S3Endpoint, prefix: str) -> GroundTruthSettings:
    """A table under ``prefix`` of the test session's S3 server."""
    opts = {k: Secret(v) for k, v in endpoint.storage_options().items()}
    return GroundTruthSettings(f"s3://{endpoint.bucket}/{prefix}", storage=opts)


def store_env(store: Store) -> dict[str, str]:
    """What a streamscore process needs to reach ``store``: on S3 the usual AWS_*
    variables (so the local credentials never sit on a command line)."""
    gt = gt_settings(store)
    if gt.location.scheme != "s3":
        return {}
    o = gt.storage_options()
    return {
        "AWS_ENDPOINT_URL": o["endpoint"],
        "AWS_ACCESS_KEY_ID": o["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": o["secret_access_key"],
        "AWS_REGION": o["region"],
        "AWS_ALLOW_HTTP": "true",
    }


@dataclass
class FeedbackProcess(WorkerProcess):
    store_dir: Store = field(default_factory=Path)

    def labels_outcomes(self) -> dict[str, float]:
        return {
            o: self.sample("streamscore_feedback_labels_total", {"outcome": o})
            for o in ("joined", "unmatched", "duplicate", "released")
        }


@pytest.fixture(name="make_feedback")
def make_feedback_fixture(stack: Stack) -> Iterator[Callable[..., FeedbackProcess]]:
    started: list[FeedbackProcess] = []

    def start(
        store_dir: Store,
        *args: str,
        group_id: str | None = None,
        state_dir: Path | None = None,
    ) -> FeedbackProcess:
        """A feedback worker; ``state_dir`` (its join state) defaults to one of its own,
        as on another host."""
        f = launch(
            "feedback",
            "--groundtruth",
            gt_settings(store_dir).uri,
            "--state-dir",
            str(state_dir or stack.tmp / f"state-{len(started)}"),
            "--checkpoint-s",
            "0.5",
            *args,
            worker_id=f"fb{len(started)}",
            group_id=group_id or f"{stack.group_id}-feedback",
            env={**stack.env(publisher=True), **store_env(store_dir)},
            log_path=stack.tmp / f"feedback-{len(started)}.log",
            cls=FeedbackProcess,
            store_dir=store_dir,
        )
        started.append(f)
        f.wait_ready()
        return f

    yield start
    for f in started:
        f.close()


@pytest.fixture(name="table", params=["local", "s3"])
def table_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: Callable[[str], str]
) -> Store:
    """The ground-truth location of a test: a local directory, or a table on the
    session's S3 server (S3Proxy)."""
    if request.param == "local":
        return tmp_path / "gt"
    return s3_table(request.getfixturevalue("s3"), unique_name("gt"))


def produce_world(stack: Stack, n: int, seed: int) -> dict[str, float]:
    """``n`` v2 events (a, b and c); returns event id -> true y = 10a + 3b + c."""
    ser = stack.event_serializer(2)
    rng = np.random.default_rng(seed)
    truth: dict[str, float] = {}
    items = []
    for e, _y in synthetic.events(n, rng, with_c=True):
        truth[e["event_id"]] = 10.0 * e["a"] + 3.0 * e["b"] + e["c"]  # from the event itself
        items.append((e["key"].encode(), ser(e)))
    stack.produce_raw(items)
    return truth


def produce_predictions(stack: Stack, preds: list[tuple[str, int]]) -> None:
    """Primary predictions ``(event id, event time ms)`` straight onto the predictions
    topic (as a score worker writes them), for tests that steer event time."""
    ser = AvroSerializer(
        stack.registry, f"{stack.topics.predictions}-value", schemas.load("prediction")
    )
    stack.produce_raw(
        (
            (
                f"k-{eid}".encode(),
                ser(
                    prediction_record(eid, event_time_ms=t)
                    | {"key": f"k-{eid}", "scored_time": t, "value": 1.0}
                ),
            )
            for eid, t in preds
        ),
        topic=stack.topics.predictions,
    )


def produce_labels(
    stack: Stack, labels: dict[str, float], *, observed_ms: int | None = None
) -> None:
    ser = AvroSerializer(stack.registry, f"{stack.topics.feedback}-value", schemas.load("feedback"))
    now = int(time.time() * 1000) if observed_ms is None else observed_ms
    stack.produce_raw(
        (
            (eid.encode(), ser({"event_id": eid, "label": y, "observed_time": now}))
            for eid, y in labels.items()
        ),
        topic=stack.topics.feedback,
    )


def store_rows(store_dir: Store) -> list[dict[str, Any]]:
    return groundtruth.read_rows(gt_settings(store_dir))


def wait_rows(store_dir: Store, n: int, timeout: float = 120.0, proc: Any = None) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = store_rows(store_dir)
        if len(rows) >= n:
            return rows
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"feedback worker died:\n{proc.log()}")
        time.sleep(0.3)
    raise AssertionError(f"store has {len(rows)} rows, expected {n}")


#: the demo's project file: its features and training recipe (the stack's topics, set
#: in the environment, win over the file's)
DEMO_PROJECT = Path(__file__).resolve().parents[2] / "examples" / "demo" / "streamscore.toml"


def run_train(stack: Stack, store_dir: Store, *args: str) -> subprocess.CompletedProcess[str]:
    uri = gt_settings(store_dir).uri
    return subprocess.run(
        [sys.executable, "-m", FEEDBACK_MODULE, "train", "--groundtruth", uri, *args],
        env={
            **stack.env(publisher=True),
            **store_env(store_dir),
            "STREAMSCORE_CONFIG": str(DEMO_PROJECT),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _committed(stack: Stack, members: str, tps: list[TopicPartition]) -> list[Any] | None:
    """Group ``members``' committed offsets of ``tps``; None when the coordinator did not
    answer in time (a busy machine: ask again)."""
    probe = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": members})
    try:
        return list(probe.committed(tps, timeout=10))
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._TIMED_OUT:
            raise
        return None
    finally:
        probe.close()


def _partitions(stack: Stack, topic: str) -> list[TopicPartition]:
    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"probe-{topic}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [TopicPartition(topic, p) for p in sorted(parts)]
    finally:
        c.close()


def wait_join_committed(stack: Stack, group: str, timeout: float = 120.0) -> None:
    """Until the joiners of ``group`` have committed some offset of the join topic (a
    checkpoint: state, rows and offsets together)."""
    from streamscore.feedback.router import join_topic_for

    tps = _partitions(stack, join_topic_for(group))

    def committed() -> bool:
        got = _committed(stack, group, tps)
        return got is not None and any(tp.offset > 0 for tp in got)

    wait_until(committed, timeout, f"{group}'s first commit on the join topic")


def count_join_labels(stack: Stack, group: str) -> int:
    """The label records on ``group``'s join topic now (what the router routed, a crash's
    re-routed tail included)."""
    from streamscore.feedback.router import join_topic_for

    msgs = stack.read_to_end(join_topic_for(group))
    return sum(1 for m in msgs if dict(m.headers() or []).get("streamscore.kind") == b"label")


def wait_group_caught_up(stack: Stack, group: str, timeout: float = 120.0) -> None:
    """Until the feedback workers of ``group`` have processed everything their input holds
    now (call it after the producers flushed): the router (group ``<group>.router``) has
    committed the high watermarks of the predictions and feedback topics, and then the
    joiners (``group``) the join topic's, read once the router is done. The loop commits
    only after the store made the rows of what it settled durable, so from here on the
    store holds every row that input can cause, duplicates included."""
    from streamscore.feedback.router import join_topic_for

    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"{group}-probe"})
    try:

        def high(topic: str) -> dict[TopicPartition, int]:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            out = {}
            for p in parts:
                tp = TopicPartition(topic, p)
                out[tp] = c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            return out

        def caught_up(members: str, want: dict[TopicPartition, int]) -> bool:
            got = _committed(stack, members, list(want))
            return got is not None and all(
                tp.offset >= want[TopicPartition(tp.topic, tp.partition)] > 0
                or want[TopicPartition(tp.topic, tp.partition)] == 0  # never written to
                for tp in got
            )

        t = stack.topics
        sources = high(t.predictions) | high(t.predictions_shadow) | high(t.feedback)
        wait_until(lambda: caught_up(f"{group}.router", sources), timeout, "the router")
        join = high(join_topic_for(group))
        wait_until(lambda: caught_up(group, join), timeout, f"{group} on the join topic")
    finally:
        c.close()


def wait_join_group_settled(stack: Stack, group: str, members: int, timeout: float = 90.0) -> None:
    """Until the join group ``group`` is stable with ``members`` members that each own
    some of the join topic's partitions (and together all of them)."""
    from confluent_kafka.admin import AdminClient

    from streamscore.dev.supervise import group_settled
    from streamscore.feedback.router import join_topic_for

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    topic = join_topic_for(group)

    def settled() -> bool:
        md = admin.list_topics(topic, timeout=10).topics[topic]
        parts = {(topic, p) for p in md.partitions}
        (fut,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        desc = fut.result()
        owned = [
            {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} for m in desc.members
        ]
        return bool(parts) and group_settled(desc.state, owned, parts, members)

    wait_until(settled, timeout, f"join group {group} settled with {members} members")
