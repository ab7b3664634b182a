"""A shortened `streamscore demo`, end to end, as a user runs it (a separate process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from streamscore.core import errors


def test_short_demo_reconciles_and_swaps_to_the_better_model(
    cluster_endpoints: Any, tmp_path: Path
) -> None:
    env = dict(os.environ)
    env.update(
        {
            "STREAMSCORE_BOOTSTRAP": cluster_endpoints.bootstrap_servers,
            "STREAMSCORE_REGISTRY_URL": cluster_endpoints.registry_url,
        }
    )
    env.pop("STREAMSCORE_SIGNING_KEY", None)  # the demo makes its own per-run key
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamscore.cli",
            "demo",
            "--duration",
            "40",  # promotion needs labels, a training run at low priority and N labels more
            "--rate",
            "300",
            "--results-dir",
            str(results),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout[-2500:])
    assert "streamscore demo summary" in proc.stdout
    summary = json.loads((results / "summary.json").read_text())
    dead = sum(summary["dead_letters"].values())
    # every event produced is accounted for: predicted or dead-lettered, nothing else
    assert summary["events_produced"] == summary["predictions"] + dead
    assert dead == summary["malformed_produced"] > 0
    # the demo injects cut-short messages: each is reported as a truncation (a length that
    # claims more bytes than are left is one of its kinds)
    for name in summary["dead_letters"]:
        assert issubclass(getattr(errors, name), errors.TruncatedMessageError), name
    # labels flowed, the candidate trained on them went out as shadow, was promoted by the
    # feedback worker's policy, and is the one answering at the end
    assert summary["labels_sent"] == summary["events_produced"] - summary["malformed_produced"]
    texts = [text for _t, text in summary["timeline_s"]]
    assert any("out as shadow" in t for t in texts), texts
    assert any("answer with v2 (promoted)" in t for t in texts), texts
    # in the order they happened
    assert [t for t in texts if "shadow" in t or "promoted" in t] == [
        "v2 (a, b, c) trained on the ground truth, out as shadow",
        "workers answer with v2 (promoted)",
    ]
    assert "primary v2" in summary["active_at_end"]
    assert set(summary["model_versions_first_seen_s"]) == {"1", "2"}
    mae = {int(k): v for k, v in summary["live_mae_by_version"].items()}
    # the world's noise (y + N(0, 0.5): a perfect model's MAE is about 0.4) bounds v2 from
    # below; v1, blind to c, is off by about 1.0
    assert 0.2 < mae[2] < mae[1] / 2
    fb = summary["live_mae_feedback_worker"]
    assert 0.2 < fb["v2/primary"] < fb["v1/primary"] / 2
    assert (results / "demo.png").stat().st_size > 10_000
    # the training run is timed, and the latency of what was scored meanwhile reported apart
    assert summary["training_runs_s"], summary
    during, otherwise = summary["latency_ms_while_training"], summary["latency_ms_otherwise"]
    assert during["n"] > 0 and otherwise["n"] > 0
    assert during["n"] + otherwise["n"] == summary["predictions"]
    # no worker process is left behind
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(results) not in ps and "demo-1" not in ps


def _demo_children() -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [
        line
        for line in ps.splitlines()
        if "streamscore.cli" in line
        and any(k in line for k in ("--worker-id demo-", "demo-feedback-", "demo-retrain"))
    ]


def test_ctrl_c_mid_run_stops_every_process_it_started(
    cluster_endpoints: Any, tmp_path: Path
) -> None:
    import signal
    import time

    assert _demo_children() == []
    env = dict(os.environ)
    env.update(
        {
            "STREAMSCORE_BOOTSTRAP": cluster_endpoints.bootstrap_servers,
            "STREAMSCORE_REGISTRY_URL": cluster_endpoints.registry_url,
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamscore.cli",
            "demo",
            "--duration",
            "60",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until it is in full swing: workers and traffic up
            if "trained on the ground truth" in line or time.monotonic() > deadline:
                break
        assert len(_demo_children()) >= 3
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        deadline = time.monotonic() + 10
        while _demo_children() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.returncode == 130  # interrupted, and said so
        assert _demo_children() == []
    finally:  # whatever happened above, leave nothing running for the next tests
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        for line in _demo_children():
            os.kill(int(line.split()[0]), signal.SIGKILL)
