"""Feedback-loop helpers for integration tests: a feedback worker process factory,
label producers, ``streamscore train`` runs and store inspection."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamscore import groundtruth, schemas, serde, synthetic

from .stack import Stack, WorkerProcess, free_port

FEEDBACK_MODULE = "streamscore.cli"


@dataclass
class FeedbackProcess(WorkerProcess):
    store_dir: Path = field(default_factory=Path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"feedback worker exited {self.proc.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
                ):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"feedback worker never served /metrics:\n{self.log()}")

    def labels_outcomes(self) -> dict[str, float]:
        return {
            o: self.sample("streamscore_feedback_labels_total", {"outcome": o})
            for o in ("joined", "unmatched", "duplicate", "released")
        }


@pytest.fixture(name="make_feedback")
def make_feedback_fixture(stack: Stack) -> Iterator[Callable[..., FeedbackProcess]]:
    started: list[FeedbackProcess] = []

    def start(store_dir: Path, *args: str, group_id: str | None = None) -> FeedbackProcess:
        port = free_port()
        log_path = stack.tmp / f"feedback-{len(started)}.log"
        log = log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            FEEDBACK_MODULE,
            "feedback",
            "--group-id",
            group_id or f"{stack.group_id}-feedback",
            "--worker-id",
            f"fb{len(started)}",
            "--store-dir",
            str(store_dir),
            "--metrics-port",
            str(port),
            "--checkpoint-s",
            "0.5",
            *args,
        ]
        proc = subprocess.Popen(cmd, env=stack.env(), stdout=log, stderr=subprocess.STDOUT)
        f = FeedbackProcess(f"fb{len(started)}", proc, port, log_path, log, store_dir=store_dir)
        started.append(f)
        f.wait_ready()
        return f

    yield start
    for f in started:
        f.kill()
        f._log.close()


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
    ser = serde.AvroSerializer(
        stack.registry, f"{stack.topics.feedback}-value", schemas.load("feedback")
    )
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
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
