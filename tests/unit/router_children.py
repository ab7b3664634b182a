"""What the router-process tests run in the child (spawned: importable by name)."""

from __future__ import annotations

import os
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamscore.feedback.router_process import run_child
from streamscore.metrics.series import Metrics


def counting(routed: int, control: Connection, report: Connection) -> None:
    """Counts ``routed`` labels and one dead letter, then runs until told to stop; then
    counts one more label (counted while stopping: the last forward carries it)."""
    metrics = Metrics(CollectorRegistry(), "feedback")
    stop = threading.Event()

    def work() -> None:
        metrics.feedback_routed.labels("label").inc(routed)
        metrics.dead_letters.labels("truncated").inc()
        stop.wait(120)
        metrics.feedback_routed.labels("label").inc()

    run_child(work, metrics, stop, control, report)


def failing(message: str, control: Connection, report: Connection) -> None:
    """Fails at once with ``message``."""

    def work() -> None:
        raise RuntimeError(message)

    run_child(work, Metrics(CollectorRegistry(), "feedback"), threading.Event(), control, report)


def quitting(control: Connection, report: Connection) -> None:
    """Returns at once, without being told to stop."""
    run_child(
        lambda: None, Metrics(CollectorRegistry(), "feedback"), threading.Event(), control, report
    )


def waiting(pid_file: str, control: Connection, report: Connection) -> None:
    """Writes its pid, runs until told to stop (or its parent is gone), then writes
    ``stopped`` next to the pid."""
    stop = threading.Event()

    def work() -> None:
        Path(pid_file).write_text(str(os.getpid()))
        stop.wait(120)
        Path(pid_file + ".stopped").write_text("stopped")

    run_child(work, Metrics(CollectorRegistry(), "feedback"), stop, control, report)


if __name__ == "__main__":  # a parent for the test that kills it: starts `waiting`
    import importlib

    from streamscore.feedback.router_process import RouterProcess

    # the target by its module's name (here it is ``__main__``, which the child is not)
    target = importlib.import_module("tests.unit.router_children").waiting
    handle = RouterProcess(
        (sys.argv[1],), Metrics(CollectorRegistry(), "feedback"), threading.Event(), target=target
    )
    handle.start()
    threading.Event().wait()  # until killed
