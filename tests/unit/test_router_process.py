"""The feedback router's process (feedback/router_process.py) and the counters it
forwards (metrics/forward.py): real child processes, spawned; no broker (what runs in
the child is a stand-in from ``router_children.py``; the real router in a process runs
in every feedback integration test)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamscore.cli import settings_from_env
from streamscore.cli_feedback import router_mode, usable_cores
from streamscore.feedback.router_process import RouterProcess
from streamscore.metrics.forward import CounterDeltas, apply_deltas
from streamscore.metrics.series import Metrics
from tests.processes import gone, wait_until
from tests.unit import router_children

ROUTED = "streamscore_feedback_routed_total"
DEAD = "streamscore_dead_letters_total"


def _metrics() -> tuple[CollectorRegistry, Metrics]:
    reg = CollectorRegistry()
    return reg, Metrics(reg, "feedback")


# ---------------------------------------------------------------- counter deltas
def test_counter_deltas_are_the_increments_since_the_previous_reading() -> None:
    _, child = _metrics()
    deltas = CounterDeltas(child.counters())
    assert deltas() == []
    child.feedback_routed.labels("label").inc(3)
    child.feedback_routed.labels("prediction").inc(2)
    child.registry_unavailable_batches.inc()
    got = sorted(deltas())
    assert got == [
        ("streamscore_feedback_routed", (("kind", "label"),), 3.0),
        ("streamscore_feedback_routed", (("kind", "prediction"),), 2.0),
        ("streamscore_registry_unavailable_batches", (), 1.0),
    ]
    assert deltas() == []  # nothing new
    child.feedback_routed.labels("label").inc()
    assert deltas() == [("streamscore_feedback_routed", (("kind", "label"),), 1.0)]


def test_deltas_add_to_the_parents_counters_of_the_same_names() -> None:
    _, child = _metrics()
    reg, parent = _metrics()
    parent.dead_letters.labels("truncated").inc(5)  # the parent's own count stays
    deltas = CounterDeltas(child.counters())
    child.dead_letters.labels("truncated").inc(2)
    child.feedback_routed.labels("label").inc(7)
    child.registry_unavailable_batches.inc(4)
    missing = apply_deltas(parent.counters(), deltas())
    assert missing == 0
    assert reg.get_sample_value(DEAD, {"reason": "truncated"}) == 7
    assert reg.get_sample_value(ROUTED, {"kind": "label"}) == 7
    assert reg.get_sample_value("streamscore_registry_unavailable_batches_total") == 4
    # a series the parent does not have is counted as missing, not raised
    assert apply_deltas(parent.counters(), [("streamscore_no_such_series", (), 1.0)]) == 1


def test_every_counter_is_found_by_its_family_name() -> None:
    _, m = _metrics()
    counters = m.counters()
    assert counters["streamscore_feedback_routed"] is m.feedback_routed
    assert counters["streamscore_dead_letters"] is m.dead_letters
    assert "streamscore_feedback_pending" not in counters  # a gauge: not added up


# ------------------------------------------------------------------- settings
def test_settings_pickle_for_a_child_process_with_their_views_still_read_only() -> None:
    env = settings_from_env(
        {"STREAMSCORE_BOOTSTRAP": "127.0.0.1:1", "STREAMSCORE_REGISTRY_URL": "http://r:1"}
    )
    back = pickle.loads(pickle.dumps(env))
    assert back == env
    assert back.kafka.consumer == env.kafka.consumer
    with pytest.raises(TypeError):
        back.kafka.consumer["x"] = "y"  # type: ignore[index]


def test_usable_cores_are_bounded_by_the_cgroup_cpu_limit(tmp_path: Path) -> None:
    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(cpu_max) == mine  # no cgroup file: the affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == mine  # no limit
    cpu_max.write_text("100000 100000\n")
    assert usable_cores(cpu_max) == 1  # a limit of one core
    cpu_max.write_text("150000 100000\n")
    assert usable_cores(cpu_max) == min(2, mine)  # 1.5 cores: rounded up
    cpu_max.write_text("10000 100000\n")
    assert usable_cores(cpu_max) == 1  # a tenth of a core: still one
    cpu_max.write_text("garbage\n")
    assert usable_cores(cpu_max) == mine


def test_auto_runs_the_router_in_a_process_from_two_cores() -> None:
    assert router_mode("auto", cores=1) == "thread"
    assert router_mode("auto", cores=2) == "process"
    assert router_mode("thread", cores=8) == "thread"
    assert router_mode("process", cores=1) == "process"


# ------------------------------------------------------------------- processes
def test_the_childs_counts_reach_the_parent_and_a_close_stops_it_cleanly() -> None:
    reg, metrics = _metrics()
    stop = threading.Event()
    handle = RouterProcess((41,), metrics, stop, target=router_children.counting)
    handle.start()
    try:
        wait_until(
            lambda: reg.get_sample_value(ROUTED, {"kind": "label"}) == 41,
            30,
            "the child's 41 routed labels forwarded",
        )
        assert reg.get_sample_value(DEAD, {"reason": "truncated"}) == 1
        pid = handle.pid
        assert pid is not None and not gone(pid)
    finally:
        handle.close()
    # what it counted while stopping came with its last forward
    assert reg.get_sample_value(ROUTED, {"kind": "label"}) == 42
    assert handle.failure is None
    assert not stop.is_set()  # a close is not a failure
    assert gone(pid)


def test_a_failing_child_stops_the_worker_and_says_why_without_secrets() -> None:
    _, metrics = _metrics()
    stop = threading.Event()
    handle = RouterProcess(
        ("registry https://user:hunter2@registry.example/x refused",),
        metrics,
        stop,
        target=router_children.failing,
    )
    handle.start()
    try:
        assert stop.wait(30), "the worker was not stopped"
    finally:
        handle.close()
    assert handle.failure is not None
    assert handle.failure.startswith("RuntimeError: registry https://***@registry.example/x")
    assert "hunter2" not in handle.failure


def test_a_child_that_exits_by_itself_is_a_failed_router() -> None:
    _, metrics = _metrics()
    stop = threading.Event()
    handle = RouterProcess((), metrics, stop, target=router_children.quitting)
    handle.start()
    try:
        assert stop.wait(30), "the worker was not stopped"
    finally:
        handle.close()
    assert handle.failure == "the router process exited with code 0"


def test_a_child_stopped_with_its_worker_by_one_signal_is_no_failure() -> None:
    """A Ctrl-C reaches the worker and its router (one process group): the router may
    exit before the worker's own handler has run."""
    _, metrics = _metrics()
    stop = threading.Event()
    handle = RouterProcess((), metrics, stop, target=router_children.quitting)
    handle.start()
    try:
        pid = handle.pid
        assert pid is not None
        wait_until(lambda: gone(pid), 30, "the router to exit")
        stop.set()  # the worker's own handler, a moment later
    finally:
        handle.close()
    assert handle.failure is None


def test_the_child_stops_by_itself_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "router.pid"
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.router_children", str(pid_file)], cwd=root
    )
    child = None
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 30, "the child")
        child = int(pid_file.read_text())
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # the child read EOF on its control pipe: it finished its work and exited
        wait_until(lambda: gone(child), 30, "the orphaned router to exit")
        assert (tmp_path / "router.pid.stopped").read_text() == "stopped"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_router_process_imports_no_numpy() -> None:
    """The router's interpreter holds only what routing needs: its metrics (histograms
    included, never observed there) do without NumPy, ~12 MB of private memory."""
    code = (
        "import sys\n"
        "from prometheus_client import CollectorRegistry\n"
        "import streamscore.feedback.router_process\n"
        "from streamscore.kafka import clients, delivery\n"
        "from streamscore.metrics.series import Metrics\n"
        "from streamscore.serde import event_ids, wire\n"
        "m = Metrics(CollectorRegistry(), 'feedback')\n"
        "m.feedback_routed.labels('label').inc()\n"
        "list(m.registry.collect())\n"
        "print(sorted(n for n in ('numpy', 'pyarrow', 'deltalake', 'rocksdict') "
        "if n in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
