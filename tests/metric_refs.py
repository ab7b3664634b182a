"""Which ``streamscore_*`` series the shipped deploy/ files name (the Grafana dashboard's
queries, the Prometheus rules) and which a text exposition carries.

Shared by the unit tier (tests/unit/test_dashboard.py, test_prometheus_rules.py: against
:class:`streamscore.metrics.series.Metrics`) and the integration tier
(tests/integration/test_prometheus_scrape.py: against live workers' /metrics)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamscore.json"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
SCORE_JOB, FEEDBACK_JOB = "streamscore-score", "streamscore-feedback"
_NAME = re.compile(r"\bstreamscore_[a-z0-9_]*[a-z0-9]\b")
# a streamscore_* series in PromQL with its optional {matchers}
_SELECTOR = re.compile(r"\b(streamscore_[a-z0-9_]*[a-z0-9])\b(\{[^}]*\})?")
_JOB = re.compile(r'\bjob="([^"]+)"')


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def panels(items: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))  # rows may nest panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    assert RULES, "no rule files in deploy/prometheus/rules"
    return [
        str(r["expr"])
        for f in RULES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    ]


def referenced_metric_names(exprs: Iterable[str]) -> set[str]:
    """``streamscore_*`` names in PromQL (recording-rule names use ``:`` and never match)."""
    return {m for e in exprs for m in _NAME.findall(e)}


def selected_jobs(expr: str) -> dict[str, set[str | None]]:
    """For each ``streamscore_*`` series named in ``expr``, the job values its selectors
    pin (None for a selector without a ``job="..."`` matcher)."""
    out: dict[str, set[str | None]] = {}
    for name, matchers in _SELECTOR.findall(expr):
        m = _JOB.search(matchers)
        out.setdefault(name, set()).add(m.group(1) if m else None)
    return out


def exposed_names(exposition: str) -> set[str]:
    """Every series name a text exposition can carry, from its ``# TYPE`` lines (present
    even for labelled families with no child yet): counters as ``x_total``, histograms as
    ``x_bucket`` / ``x_sum`` / ``x_count``."""
    out: set[str] = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        out.add(name)
        if kind == "counter":
            base = name.removesuffix("_total")
            out |= {base, f"{base}_total", f"{base}_created"}
        elif kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return out
