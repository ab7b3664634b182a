"""The shipped Prometheus config and rules: `promtool check config`, `check rules` and the
rule unit tests in deploy/prometheus/tests (`promtool test rules`).

promtool is required, not optional: run scripts/install-prometheus.sh (Debian's
`prometheus` package) on a fresh machine. These tests fail, never skip, without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metric_refs import FEEDBACK_JOB, SCORE_JOB, selected_jobs

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
CONFIG = PROM / "prometheus.yml"
RULES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run scripts/install-prometheus.sh "
            "(apt-get install -y prometheus) and re-run the tests",
            pytrace=False,
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, f"promtool {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def alert_rules() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in RULES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            out.extend(r for r in group["rules"] if "alert" in r)
    return out


def test_files_exist() -> None:
    assert CONFIG.is_file()
    assert RULES, "no rule files in deploy/prometheus/rules"
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"


def test_promtool_check_config() -> None:
    res = run("check", "config", str(CONFIG))
    assert "SUCCESS" in res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    run("check", "rules", *map(str, RULES))


def test_promtool_test_rules() -> None:
    res = run("test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in res.stdout + res.stderr


def test_config_loads_the_rule_files_and_scrapes_both_workers() -> None:
    conf = yaml.safe_load(CONFIG.read_text())
    assert conf["rule_files"] == ["rules/*.rules.yml"]
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    targets = {
        name: [t for sc in j["static_configs"] for t in sc["targets"]] for name, j in jobs.items()
    }
    assert targets == {
        "streamscore-score": ["127.0.0.1:9400", "127.0.0.1:9401"],
        "streamscore-feedback": ["127.0.0.1:9500"],
    }


def test_every_alert_has_severity_summary_description_and_for() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    for r in rules:
        labels = r.get("labels")
        ann = r.get("annotations")
        assert isinstance(labels, dict) and labels.get("severity") in {"warning", "critical"}, r
        assert isinstance(ann, dict) and ann.get("summary") and ann.get("description"), r
        assert "Look first" in str(ann["description"]), r["alert"]
        # Only the one-shot "rejected" alert fires at once; every other alert needs a for.
        if r["alert"] != "StreamscoreModelUpdateRejected":
            assert "for" in r, r["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert appears in a promtool test with expected alerts and with none."""
    fired: set[str] = set()
    silent: set[str] = set()
    for f in RULE_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {str(r["alert"]) for r in alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    # a non-firing check may also be an input series that must not appear in exp_alerts
    implicit_negative = {"StreamscoreWorkerDown", "StreamscoreFeatureOutOfRange"}
    assert names - silent - implicit_negative == set(), "alerts never shown silent"


def test_drift_threshold_matches_the_code() -> None:
    from streamscore.score.drift import PSI_ALERT_THRESHOLD

    (rule,) = [r for r in alert_rules() if r["alert"] == "StreamscoreFeatureDrift"]
    m = re.search(
        r"streamscore_feature_drift_psi(?:\{[^}]*\})?\)\s*>\s*([0-9.]+)", str(rule["expr"])
    )
    assert m is not None
    assert float(m.group(1)) == PSI_ALERT_THRESHOLD


def test_every_alert_on_streamscore_series_selects_the_job_that_exports_them() -> None:
    """Both kinds of process share metric names (dead letters, invalid events), and a
    feedback target once exported model_loaded 0: an alert on a streamscore_* series
    without a job selector fires on whichever target has it."""
    checked = 0
    for r in alert_rules():
        for name, jobs in selected_jobs(str(r["expr"])).items():
            assert None not in jobs, f"{r['alert']}: {name} without a job selector"
            assert jobs <= {SCORE_JOB, FEEDBACK_JOB}, (r["alert"], name, jobs)
            checked += 1
    assert checked >= 15
    assert selected_jobs('a{x="1"} streamscore_y') == {"streamscore_y": {None}}  # caught


def test_no_model_loaded_selects_the_score_job() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "StreamscoreNoModelLoaded"]
    assert selected_jobs(str(rule["expr"])) == {"streamscore_model_loaded": {SCORE_JOB}}


def test_every_score_alert_is_fed_feedback_series_in_a_test_that_expects_silence() -> None:
    """For each alert on score-job series, some promtool test feeds the same metric with
    job=streamscore-feedback and expects no alert: the selector is exercised, not just
    present (tests/alerts.test.yml, "feedback-job series fire none ...")."""
    fed: dict[str, set[str]] = {}  # alertname -> metrics fed with the feedback job
    for f in RULE_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            names = {
                name
                for s in t.get("input_series", [])
                for name, jobs in selected_jobs(s["series"]).items()
                if FEEDBACK_JOB in jobs
            }
            for case in t.get("alert_rule_test", []):
                if not case.get("exp_alerts"):
                    fed.setdefault(case["alertname"], set()).update(names)
    score_alerts = 0
    for r in alert_rules():
        jobs = selected_jobs(str(r["expr"]))
        score_series = {n for n, j in jobs.items() if SCORE_JOB in j}
        if not score_series:
            continue
        score_alerts += 1
        assert score_series & fed.get(str(r["alert"]), set()), (
            f"{r['alert']}: no silent case feeds {sorted(score_series)} from {FEEDBACK_JOB}"
        )
    assert score_alerts >= 10
