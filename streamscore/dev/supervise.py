"""The demo's child processes: started, ranked (CPU priority), waited for, and stopped.

Every child is a ``python -m streamscore.cli`` process in a session of its own (so Ctrl-C
reaches the demo, which stops them in order); :func:`processes` stops every one on exit,
failure and Ctrl-C included. Background work (a training run) is ranked below the score
workers (:func:`lower_priority`) and runs single-threaded (:data:`BACKGROUND_THREADS_ENV`).
:func:`wait_settled` waits for a consumer group to settle before traffic starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
#: How long the children have to stop after SIGTERM before they are killed.
STOP_GRACE_S = 20.0


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


def cli_command(args: Sequence[str]) -> list[str]:
    """``streamscore <args>`` as a child process runs it (this interpreter)."""
    return [sys.executable, "-m", "streamscore.cli", *args]


def start_cli(
    args: Sequence[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """A long-running ``streamscore`` command in a session of its own, its output (stdout
    and stderr) written to ``log_path``."""
    log = open(log_path, "wb")  # noqa: SIM115 (closed by exit)
    return subprocess.Popen(
        cli_command(args),
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_background(
    args: Sequence[str],
    env: Mapping[str, str],
    children: list[subprocess.Popen[Any]],
    *,
    timeout_s: float,
    on_line: Callable[[str], None] = lambda _line: None,
) -> tuple[int, str]:
    """A batch ``streamscore`` command (a training run) below the workers' priority: run
    to its end, in a session of its own, registered in ``children`` (so it is stopped
    with the others, Ctrl-C included). Each line of its output is handed to ``on_line``
    as it comes (the caller can act on what the command has done before it exits).
    Returns its exit status and output; killed after ``timeout_s`` seconds
    (:class:`subprocess.TimeoutExpired`)."""
    proc = subprocess.Popen(
        cli_command(args),
        env={**env, **BACKGROUND_THREADS_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    children.append(proc)
    lower_priority(proc.pid)  # batch work: the score workers come first
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            on_line(line)
        proc.wait()
    finally:
        timer.cancel()
    out = "".join(lines)
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(proc.args, timeout_s, output=out)
    return proc.returncode, out


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list to put child processes in; on exit each is sent SIGTERM, given
    :data:`STOP_GRACE_S` in all to stop, then killed."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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


def wait_settled(
    admin: Any, group_id: str, topic: str, members: int, timeout: float = 30.0
) -> bool:
    """Waits until consumer group ``group_id`` of ``members`` members has settled on
    ``topic`` (:func:`group_settled`); False if it has not within ``timeout`` seconds."""
    from confluent_kafka import KafkaException

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
                return True
        except KafkaException:
            pass
        time.sleep(0.2)
    return False
