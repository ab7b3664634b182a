"""The demo's process handling and summary, without a broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamscore.core.config import KafkaSettings, RegistrySettings
from streamscore.dev.demo import Demo, DemoSettings
from streamscore.dev.report import print_summary
from streamscore.dev.supervise import (
    BACKGROUND_NICE,
    BACKGROUND_THREADS_ENV,
    group_settled,
    lower_priority,
)

# A child that starts a thread, says so, then (on a line from us) starts another and
# prints the nice value of every thread it has.
_CHILD = r"""
import os, sys, threading
ev = threading.Event()
threading.Thread(target=ev.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
threading.Thread(target=ev.wait, daemon=True).start()  # returns once it runs
for tid in sorted(os.listdir("/proc/self/task")):
    print(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16], flush=True)
ev.set()
"""


def _demo(tmp_path: Path) -> Demo:
    return Demo(DemoSettings(results_dir=tmp_path), KafkaSettings(), RegistrySettings(), None)


def test_lower_priority_reaches_every_thread_and_the_session_autogroup() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    want = min(19, own + BACKGROUND_NICE)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as the demo starts its children
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"  # two threads by now
        applied = lower_priority(child.pid)
        assert "nice" in applied
        autogroup = Path(f"/proc/{child.pid}/autogroup")
        # the CPU share between sessions: without this the nice value does nothing. A
        # kernel without autogroups (CONFIG_SCHED_AUTOGROUP) has no such file, and then
        # lower_priority must not claim to have set one.
        if Path("/proc/self/autogroup").exists():
            assert "autogroup" in applied
            assert autogroup.read_text().split()[-1] == str(want)
        else:
            assert "autogroup" not in applied and not autogroup.exists()
        child.stdin.write("go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    nices = [int(n) for n in out.split()]
    assert len(nices) == 3  # main, the thread from before, the thread started after
    assert nices == [want] * 3
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the demo itself is untouched


def test_lower_priority_of_a_finished_process_is_harmless() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    child.wait()
    assert "nice" not in lower_priority(child.pid)


def test_background_children_run_single_threaded_workers_keep_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("STREAMSCORE_SIGNING_KEY", "the-caller-s-own-secret")
    demo = _demo(tmp_path)
    bg = demo._child_env(background=True)
    fg = demo._child_env()
    for name, value in BACKGROUND_THREADS_ENV.items():
        assert bg[name] == value == "1"
    assert fg["OMP_NUM_THREADS"] == "8"
    assert "OPENBLAS_NUM_THREADS" not in fg
    # both get the demo's cluster, topics and per-run public key; only publishers (the
    # training runs, the auto-promoting feedback worker) get its private key
    for env in (bg, fg):
        assert env["STREAMSCORE_PUBLIC_KEY_FILE"] == str(demo.keys.public_file)
        assert env["STREAMSCORE_TOPIC_EVENTS"] == demo.topics.events
    assert "STREAMSCORE_SIGNING_KEY_FILE" not in fg
    assert "STREAMSCORE_SIGNING_KEY" not in fg and "STREAMSCORE_SIGNING_KEY" not in bg
    pub = demo._child_env(background=True, publisher=True)
    assert pub["STREAMSCORE_SIGNING_KEY_FILE"] == str(demo.keys.private_file)


def test_summary_splits_latency_by_training_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _demo(tmp_path)
    t0 = demo.t0
    # 100 predictions a second for 10 s, 20 ms each; 300 ms while training (t0+4 .. t0+6)
    for i in range(1000):
        t = t0 + i / 100
        slow = t0 + 4 <= t <= t0 + 6
        demo.obs.rows.append((t, 1, 0.1, 0.3 if slow else 0.02))
    demo.obs.predictions = 1000
    demo.training_runs.append((t0 + 4, t0 + 6))
    s = demo.summary()
    assert s["latency_ms_while_training"]["n"] == 201
    assert s["latency_ms_while_training"]["p50"] == pytest.approx(300)
    assert s["latency_ms_otherwise"]["n"] == 799
    assert s["latency_ms_otherwise"]["p99"] == pytest.approx(20)
    assert s["latency_p99_ms"] == pytest.approx(300)  # over everything, as before
    assert s["training_runs_s"] == [(4.0, 6.0)]
    print_summary({**s, "plot": None})
    out = capsys.readouterr().out
    assert re.search(r"while a training run was going +300\.0 / 300\.0 \(201 predictions\)", out)
    assert re.search(r"otherwise +20\.0 / 20\.0 \(799 predictions\)", out)


def test_summary_without_training_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = _demo(tmp_path)
    demo.obs.rows.append((demo.t0 + 1, 1, 0.1, 0.02))
    demo.obs.predictions = 1
    s = demo.summary()
    assert s["latency_ms_while_training"] == {"p50": None, "p99": None, "n": 0}
    assert s["latency_ms_otherwise"]["n"] == 1
    print_summary({**s, "plot": None})
    assert re.search(r"while a training run was going +-\n", capsys.readouterr().out)


def test_group_settled_only_when_every_worker_owns_partitions() -> None:
    from confluent_kafka import ConsumerGroupState

    stable = ConsumerGroupState.STABLE
    parts = {("events", p) for p in range(4)}
    half = [{("events", 0), ("events", 1)}, {("events", 2), ("events", 3)}]
    assert group_settled(stable, half, parts, members=2)
    # the first worker alone, before the second joins
    assert not group_settled(stable, [parts], parts, members=2)
    # cooperative-sticky, between the two rounds: two partitions revoked, not yet reassigned
    assert not group_settled(stable, [{("events", 2), ("events", 3)}, set()], parts, members=2)
    assert not group_settled(ConsumerGroupState.PREPARING_REBALANCING, half, parts, members=2)
    assert not group_settled(ConsumerGroupState.COMPLETING_REBALANCING, half, parts, members=2)
    # more workers than partitions: the extra one idles, and that is settled
    one = {("events", 0)}
    assert group_settled(stable, [one, set()], one, members=2)


def test_metrics_are_read_with_the_exposition_parser() -> None:
    """What the demo reads of its workers' /metrics, from the series the workers export."""
    from prometheus_client import CollectorRegistry

    from streamscore.dev import observe
    from streamscore.metrics.series import Metrics, serve

    m = Metrics(CollectorRegistry())
    server = serve(m.registry, "127.0.0.1", 0)
    try:
        assert not observe.model_loaded(server.port)
        assert observe.active_models(server.port) == ""
        m.model_loaded.set(1)
        m.model_info.labels("demo", "2", "shadow").set(1)
        m.model_info.labels("demo", "1", "primary").set(1)
        m.model_info.labels("demo", "0", "canary").set(0)  # retired: not active
        from streamscore.metrics.series import LIVE_FAMILIES

        live: list[list[tuple[tuple[str, ...], float]]] = [[] for _ in LIVE_FAMILIES]
        live[[n for n, _ in LIVE_FAMILIES].index("mae")] = [
            (("1", "primary"), 0.5),
            (("2", "shadow"), 0.025),
        ]
        m.live.bind(lambda: [*live, []])
        assert observe.model_loaded(server.port)
        assert observe.active_models(server.port) == "primary v1, shadow v2"
        assert observe.feedback_mae(server.port) == {"v1/primary": 0.5, "v2/shadow": 0.025}
        assert observe.scrape(server.port, "streamscore_no_such_series") == []
    finally:
        server.stop()
    # nothing answers on the port any more: no samples, no error
    assert observe.scrape(server.port, "streamscore_model_loaded") == []
    assert not observe.model_loaded(server.port)


def test_run_background_streams_each_line_and_registers_the_child() -> None:
    from streamscore.dev.supervise import run_background

    children: list[subprocess.Popen[str]] = []
    seen: list[str] = []
    rc, out = run_background(
        ["--help"], dict(os.environ), children, timeout_s=120, on_line=seen.append
    )
    assert rc == 0 and "usage: streamscore" in out
    assert "".join(seen) == out and len(seen) > 3  # line by line, as they came
    assert len(children) == 1 and children[0].poll() == 0  # stopped with the others


def test_run_background_kills_a_run_past_its_timeout() -> None:
    from streamscore.dev.supervise import run_background

    children: list[subprocess.Popen[str]] = []
    with pytest.raises(subprocess.TimeoutExpired):
        # far less than the interpreter needs to start and import the CLI
        run_background(["--help"], dict(os.environ), children, timeout_s=0.005)
    assert children[0].poll() is not None  # killed, not left running
