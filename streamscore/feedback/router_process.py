"""Where a feedback worker runs its router: a thread of its own process, or a child
process (the default on a machine with two cores or more).

The router (:mod:`streamscore.feedback.router`) and the join (:mod:`streamscore.feedback.loop`)
are two stages, as a Kafka Streams repartition and the task that reads it are. In one
Python process they share one interpreter lock, so every microsecond of the router's
Python is taken from the join. In a child process the router runs beside the join, on
another core.

:class:`RouterProcess`, the parent's handle:

- starts the child as a fresh interpreter (``python -m streamscore.feedback.router_process``:
  no Kafka client, thread or lock is inherited across a fork) and hands it, pickled
  over a pipe of their own, a :class:`RouterSpec`: settings only, the child builds its
  own clients (:func:`build_router`);
- adds the child's counter increments to the worker's own counters, so that a worker
  still exports one ``/metrics`` with everything it counts (:mod:`streamscore.metrics.forward`;
  sent at most every :data:`FORWARD_S` and once more when the router stops);
- stops it (a word on the control pipe; SIGTERM, then SIGKILL, past their deadlines);
- treats a child that exits by itself as a failed router: the worker stops, reporting
  why, as it does when the router thread fails.

The child stops by itself when its parent is gone: the parent's end of the control pipe
closes with it, whatever killed it (SIGKILL included), and the child reads EOF. A
SIGKILLed worker therefore leaves no router behind; the router's uncommitted tail is
routed again by the next one, as after a crash of the thread (at least once, module doc
of :mod:`streamscore.feedback.router`).

:class:`RouterThread` is the same handle over a thread (``--router thread``: one core,
or a test that wants one process).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ..core.config import KafkaSettings, RegistrySettings
from ..core.redact import redact_urls, setup_logging
from ..core.stop import install_stop_signals
from ..kafka.output_limits import OutputLimits
from ..metrics.forward import CounterDeltas, apply_deltas
from ..metrics.series import Metrics
from .memory import tune_malloc
from .router import FeedbackRouter, RouteTopics

log = logging.getLogger(__name__)

#: the most seconds between two forwards of the child's counters
FORWARD_S = 0.2
#: how long a stopping child may take to drain (its sink's outputs) before SIGTERM
STOP_TIMEOUT_S = 30.0
#: how long after a router process's own exit the worker's stop counts as the reason
SIGNAL_GRACE_S = 2.0
_STOP = "stop"
#: the router process's name, as ps and top show it
PROCESS_NAME = "feedback-router"


@dataclass(frozen=True)
class RouterSpec:
    """What a router needs to build itself (picklable: settings, no clients)."""

    kafka: KafkaSettings
    registry: RegistrySettings
    topics: RouteTopics
    #: the label topic's event-id field (the project's ``[labels] id_field``)
    label_id_field: str
    limits: OutputLimits
    group_id: str
    worker_id: str
    batch_size: int
    verbose: bool = False
    #: the worker's ``MALLOC_*`` environment (:func:`~streamscore.feedback.memory.tune_malloc`)
    malloc_env: Mapping[str, str] = field(default_factory=dict)


def build_router(spec: RouterSpec, metrics: Metrics, stop: threading.Event) -> FeedbackRouter:
    """The router of ``spec`` with its own consumer, producer and registry client."""
    from confluent_kafka import Consumer, Producer

    from ..kafka.clients import ROUTER_QUEUE_MESSAGES, plain_producer, router_consumer
    from ..kafka.delivery import AtLeastOnceSink
    from ..serde.event_ids import EventIdReader
    from ..serde.wire import WriterSchemaCache, registry_client

    cache = WriterSchemaCache(registry_client(spec.registry.client_config()))
    consumer = Consumer(router_consumer(spec.kafka, spec.group_id, spec.worker_id))
    producer = Producer(
        plain_producer(
            spec.kafka,
            max_message_bytes=spec.limits.producer_max_bytes(),
            failures_only=True,
            # a bounded queue of re-keyed messages: a full one holds the router
            max_queued=ROUTER_QUEUE_MESSAGES,
        )
    )
    return FeedbackRouter(
        consumer=consumer,
        sink=AtLeastOnceSink(producer, consumer),
        topics=spec.topics,
        event_id=EventIdReader(cache),
        label_id=EventIdReader(cache, spec.label_id_field),
        metrics=metrics,
        worker_id=spec.worker_id,
        stop=stop,
        limits=spec.limits,
        batch_size=spec.batch_size,
    )


class RouterHandle(Protocol):
    """A running router, as the feedback worker sees it."""

    #: why the router failed (None: it did not)
    failure: str | None

    def start(self) -> None: ...

    def close(self) -> None:
        """Stop the router (it drains what it sent) and wait for it."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_urls(str(exc))}"


class RouterThread:
    """The router on a thread of the worker's process. A router that fails sets
    ``stop``: the worker must not go on joining without it."""

    def __init__(self, spec: RouterSpec, metrics: Metrics, stop: threading.Event) -> None:
        self._router = build_router(spec, metrics, stop)
        self._stop = stop
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="feedback-router", daemon=True)

    def _run(self) -> None:
        try:
            self._router.run()
        except BaseException as exc:
            self.failure = _reason(exc)
            log.error("feedback router failed: %s", self.failure)
            self._stop.set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)


def child_main(spec: RouterSpec, control: Connection, report: Connection) -> None:
    """The router process: runs the router until the parent says stop or goes away;
    reports its counters' increments and, if it fails, why."""
    setup_logging(verbose=spec.verbose)
    with contextlib.suppress(OSError):  # what ps and top show (Linux; 15 bytes at most)
        Path("/proc/self/comm").write_text(PROCESS_NAME)
    stop = threading.Event()
    install_stop_signals(stop)
    tune_malloc(spec.malloc_env, stop)  # as the worker: librdkafka's buffers churn here too
    metrics = Metrics(CollectorRegistry(), "feedback")
    run_child(lambda: build_router(spec, metrics, stop).run(), metrics, stop, control, report)


def run_child(
    work: Callable[[], object],
    metrics: Metrics,
    stop: threading.Event,
    control: Connection,
    report: Connection,
) -> None:
    """Run ``work()`` in a child process, linked to its parent (see :func:`child_main`);
    exits 1 when it raised."""
    deltas = CounterDeltas(metrics.counters())
    lock = threading.Lock()

    def send(*msg: Any) -> None:
        with lock:
            try:
                report.send((msg[0], deltas()) if msg[0] == "counters" else msg)
            except OSError:  # the parent is gone
                stop.set()

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            control.recv()  # "stop", or EOF: the parent is gone
        stop.set()

    def forward() -> None:
        while not stop.wait(FORWARD_S):
            send("counters")

    threading.Thread(target=watch, name="router-parent", daemon=True).start()
    threading.Thread(target=forward, name="router-counters", daemon=True).start()
    failed = False
    try:
        work()
    except BaseException as exc:
        failed = True
        reason = _reason(exc)
        log.error("feedback router failed: %s", reason)
        send("failed", reason)
    finally:
        stop.set()
        send("counters")
        report.close()
    if failed:
        raise SystemExit(1)


class RouterProcess:
    """The router in a child process (module doc)."""

    def __init__(
        self,
        args: tuple[Any, ...],
        metrics: Metrics,
        stop: threading.Event,
        *,
        target: Any = child_main,
    ) -> None:
        """``target(*args, control, report)`` runs in the child (:func:`child_main`,
        ``args``: the :class:`RouterSpec`); its counters go to ``metrics``; its failure
        sets ``stop``."""
        self._metrics = metrics
        self._stop = stop
        self._target = target
        self._args = args
        self.failure: str | None = None
        self._closing = False
        self._proc: Any = None
        self._control: Connection | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    def start(self) -> None:
        control_r, control_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(control_r), str(report_w)],
                pass_fds=(control_r, report_w),
            )
        except BaseException:
            os.close(control_w)
            os.close(report_r)
            raise
        finally:
            # the child holds these ends: its exit closes the report pipe (EOF here),
            # this process's exit closes the control pipe (EOF there)
            os.close(control_r)
            os.close(report_w)
        self._control = Connection(control_w, readable=False)
        report = Connection(report_r, writable=False)
        self._control.send(list(sys.path))  # where the child finds the target
        self._control.send((self._target.__module__, self._target.__qualname__, self._args))
        self._reader = threading.Thread(
            target=self._read, args=(report,), name="router-reports", daemon=True
        )
        self._reader.start()
        log.info("feedback router started in process %d", self._proc.pid)

    def _read(self, report: Connection) -> None:
        counters = self._metrics.counters()
        while True:
            try:
                msg = report.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "counters":
                if apply_deltas(counters, msg[1]):
                    log.warning("router counts of unknown series dropped: %s", msg[1])
            elif msg[0] == "failed":
                self.failure = str(msg[1])
        report.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(STOP_TIMEOUT_S)
        if self._closing:
            return
        # it exited before it was told to: a failed router, unless the worker is stopping
        # too (a Ctrl-C or a SIGTERM to the process group reaches both: the router may
        # have stopped before the worker's own handler ran)
        if self.failure is None and self._stop.wait(SIGNAL_GRACE_S):
            return
        if self.failure is None:
            self.failure = f"the router process exited with code {self._proc.returncode}"
        log.error("feedback router failed: %s", self.failure)
        self._stop.set()

    def close(self) -> None:
        """Stop the child (drained), then SIGTERM, then SIGKILL past the deadlines."""
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send(_STOP)
            self._control.close()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("feedback router did not stop in %.0f s: SIGTERM", STOP_TIMEOUT_S)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if proc.returncode != 0 and self.failure is None:
            self.failure = f"the router process exited with code {proc.returncode}"


def _child_entry(argv: list[str]) -> None:
    """The child's side of :meth:`RouterProcess.start`: the pipes' descriptors from the
    command line, then the parent's ``sys.path`` and the target to run from the
    control pipe."""
    control = Connection(int(argv[0]), writable=False)
    report = Connection(int(argv[1]), readable=False)
    sys.path[:] = control.recv()
    module, name, args = control.recv()
    target = getattr(importlib.import_module(module), name)
    target(*args, control, report)


if __name__ == "__main__":
    _child_entry(sys.argv[1:])
