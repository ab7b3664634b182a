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
from confluent_kafka import Consumer, TopicPartition

from streamscore.feedback import groundtruth
from streamscore.serde import schemas
from streamscore.serde.message import AvroSerializer
from streamscore.train import synthetic
from tests.processes import WorkerProcess, launch, wait_until

from .stack import Stack

FEEDBACK_MODULE = "streamscore.cli"


@dataclass
class FeedbackProcess(WorkerProcess):
    store_dir: Path = field(default_factory=Path)

    def labels_outcomes(self) -> dict[str, float]:
        return {
            o: self.sample("streamscore_feedback_labels_total", {"outcome": o})
            for o in ("joined", "unmatched", "duplicate", "released")
        }


@pytest.fixture(name="make_feedback")
def make_feedback_fixture(stack: Stack) -> Iterator[Callable[..., FeedbackProcess]]:
    started: list[FeedbackProcess] = []

    def start(store_dir: Path, *args: str, group_id: str | None = None) -> FeedbackProcess:
        f = launch(
            "feedback",
            "--store-dir",
            str(store_dir),
            "--checkpoint-s",
            "0.5",
            *args,
            worker_id=f"fb{len(started)}",
            group_id=group_id or f"{stack.group_id}-feedback",
            env=stack.env(publisher=True),
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


def produce_labels(stack: Stack, labels: dict[str, float]) -> None:
    ser = AvroSerializer(stack.registry, f"{stack.topics.feedback}-value", schemas.load("feedback"))
    now = int(time.time() * 1000)
    stack.produce_raw(
        (
            (eid.encode(), ser({"event_id": eid, "label": y, "observed_time": now}))
            for eid, y in labels.items()
        ),
        topic=stack.topics.feedback,
    )


def store_rows(store_dir: Path) -> list[dict[str, Any]]:
    return groundtruth.read_rows(store_dir)


def wait_rows(store_dir: Path, n: int, timeout: float = 120.0, proc: Any = None) -> list[Any]:
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


def run_train(stack: Stack, store_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", FEEDBACK_MODULE, "train", "--store-dir", str(store_dir), *args],
        env=stack.env(publisher=True),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


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
            probe = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": members})
            try:
                got = probe.committed(list(want), timeout=10)
            finally:
                probe.close()
            return all(
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
