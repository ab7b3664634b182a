"""A real Prometheus (Debian's `prometheus`, see scripts/install-prometheus.sh) scrapes a
real score worker with a config derived from deploy/prometheus/prometheus.yml and loads the
shipped rules; the HTTP API then shows the worker's numbers. And every metric named by the
alert rules and the dashboard exists on a live worker's /metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metric_refs import (
    FEEDBACK_JOB,
    SCORE_JOB,
    dashboard_exprs,
    exposed_names,
    referenced_metric_names,
    rule_exprs,
    selected_jobs,
)

from .feedback_stack import FeedbackProcess, make_feedback_fixture  # noqa: F401
from .stack import Stack, WorkerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
N_EVENTS = 300


def derived_config(score_target: str, feedback_target: str) -> dict[str, Any]:
    """The shipped config with a 1 s scrape/evaluation interval, loopback targets and the
    shipped rule files by absolute path."""
    conf: dict[str, Any] = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    conf["global"]["scrape_interval"] = "1s"
    conf["global"]["scrape_timeout"] = "1s"
    conf["global"]["evaluation_interval"] = "1s"
    conf["rule_files"] = [str(PROM_DIR / r) for r in conf["rule_files"]]
    targets = {"streamscore-score": score_target, "streamscore-feedback": feedback_target}
    for job in conf["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [targets[job["job_name"]]]
    return conf


class PromServer:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        if not res:
            return None
        assert len(res) == 1, res
        return float(res[0]["value"][1])

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
            if cond():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], PromServer]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/install-prometheus.sh", pytrace=False)
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any]) -> PromServer:
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.append(proc)
        server = PromServer(f"http://127.0.0.1:{port}", proc, log)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        server.wait(ready, "prometheus /-/ready", timeout=60)
        return server

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def wait_scored(w: WorkerProcess, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if w.sample("streamscore_predictions_total") >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker scored {w.sample('streamscore_predictions_total')} of {n}")


def test_prometheus_scrapes_a_live_worker(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    prometheus: Callable[[dict[str, Any]], PromServer],
) -> None:
    stack.publish("ab", version=1)
    w = make_worker("w1")
    stack.produce_events(N_EVENTS)
    wait_scored(w, N_EVENTS)
    assert w.sample("streamscore_predictions_total") == N_EVENTS
    worker_latency_count = w.sample("streamscore_end_to_end_latency_seconds_count")
    assert 0 < worker_latency_count <= N_EVENTS  # the worker observes a bounded sample

    # the feedback target points at a closed port: up == 0 there, and the alert goes pending
    prom = prometheus(derived_config(f"127.0.0.1:{w.metrics_port}", f"127.0.0.1:{free_port()}"))
    job = 'job="streamscore-score"'
    prom.wait(
        lambda: prom.value(f"sum(streamscore_predictions_total{{{job}}})") == N_EVENTS,
        f"Prometheus to scrape {N_EVENTS} predictions",
    )
    # each target gets its own offset within the scrape interval: the closed feedback port
    # has its first `up` sample only once its own first scrape has been attempted
    prom.wait(
        lambda: prom.value('up{job="streamscore-feedback"}') is not None,
        "the first scrape attempt of the feedback target",
    )
    (pred,) = prom.query(f"streamscore_predictions_total{{{job}}}")
    assert pred["metric"]["model_version"] == "1"
    assert pred["metric"]["role"] == "primary"
    assert pred["metric"]["model_name"] == "demo"
    assert float(pred["value"][1]) == N_EVENTS
    assert prom.value(f"sum(streamscore_events_consumed_total{{{job}}})") == N_EVENTS
    assert prom.value(f"up{{{job}}}") == 1
    assert prom.value('up{job="streamscore-feedback"}') == 0
    assert prom.value(f"streamscore_model_loaded{{{job}}}") == 1

    # the latency histogram: every bucket, cumulative, +Inf == _count == the worker's count
    buckets = prom.query(f"streamscore_end_to_end_latency_seconds_bucket{{{job}}}")
    by_le = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
    assert len(by_le) == 15  # 14 configured buckets + "+Inf"
    assert by_le["+Inf"] == worker_latency_count
    ordered = sorted(by_le.items(), key=lambda kv: float(kv[0]))
    assert [v for _, v in ordered] == sorted(v for _, v in ordered)
    assert prom.value(f"streamscore_end_to_end_latency_seconds_count{{{job}}}") == (
        worker_latency_count
    )
    assert prom.value(f"streamscore_end_to_end_latency_seconds_sum{{{job}}}") == pytest.approx(
        w.sample("streamscore_end_to_end_latency_seconds_sum")
    )

    # the shipped rules are loaded and evaluated against the live series
    groups = prom.get("/api/v1/rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert {"StreamscoreWorkerDown", "StreamscoreFeatureDrift"} <= loaded
    assert all(r.get("health") != "err" for g in groups for r in g["rules"]), groups
    prom.wait(
        lambda: any(
            a["labels"]["alertname"] == "StreamscoreWorkerDown"
            and a["labels"]["job"] == "streamscore-feedback"
            for a in prom.get("/api/v1/alerts")["alerts"]
        ),
        "StreamscoreWorkerDown pending for the closed feedback port",
    )
    active = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["alerts"]}
    assert "StreamscoreNoModelLoaded" not in active
    assert w.terminate() == 0


def test_metrics_named_in_rules_and_dashboard_exist_on_live_workers(
    stack: Stack,
    make_worker: Callable[..., WorkerProcess],
    make_feedback: Callable[..., FeedbackProcess],
    tmp_path: Path,
) -> None:
    stack.publish("ab", version=1)
    w = make_worker("w1")
    fb = make_feedback(tmp_path / "gt")
    score, feedback = exposed_names(w.metrics_text()), exposed_names(fb.metrics_text())
    wanted = referenced_metric_names(rule_exprs()) | referenced_metric_names(dashboard_exprs())
    assert len(wanted) >= 10
    # each kind of process exports the families it sets (labelled ones with no samples
    # until set); together they export every name deploy/ uses
    missing = sorted(wanted - score - feedback)
    assert missing == [], f"named in deploy/ but not exported by a live worker: {missing}"
    # a series a rule pins to a job is exported by that job's process
    exporter = {SCORE_JOB: score, FEEDBACK_JOB: feedback}
    pinned = 0
    for expr in rule_exprs():
        for name, jobs in selected_jobs(expr).items():
            for job in jobs - {None}:
                assert job is not None and name in exporter[job], (name, job)
                pinned += 1
    assert pinned >= 15
    # the feedback worker loads no model: it has no model_loaded gauge stuck at 0
    assert "streamscore_model_loaded" in score
    assert "streamscore_model_loaded" not in feedback
    assert "streamscore_live_mae" in feedback and "streamscore_live_mae" not in score
    assert w.terminate() == 0
    assert fb.terminate() == 0
