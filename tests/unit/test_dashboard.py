"""The provisioned Grafana dashboard parses, has the operator panels, and every metric its
queries (and the alert rules) name is defined in :class:`streamscore.metrics.series.Metrics`.

The helpers live in tests/metric_refs.py: tests/integration/test_prometheus_scrape.py runs
the same name check against live workers' /metrics."""

from __future__ import annotations

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from streamscore.metrics.series import Metrics
from tests.metric_refs import (
    GRAFANA,
    dashboard,
    dashboard_exprs,
    exposed_names,
    panels,
    referenced_metric_names,
    rule_exprs,
)


def defined_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return exposed_names(generate_latest(registry).decode())


def test_dashboard_parses_and_has_the_operator_panels() -> None:
    d = dashboard()
    assert d["uid"] == "streamscore-overview"
    titles = {p["title"] for p in panels(d["panels"])}
    for wanted in (
        "Throughput",
        "End-to-end latency percentiles",
        "Consumer lag",
        "Dead letters by reason",
        "Active model versions",
        "Feature drift (PSI)",
        "Live MAE vs holdout, per version",
        "Live accuracy per version",
        "Model updates",
    ):
        assert wanted in titles
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids))
    for p in panels(d["panels"]):
        assert p["datasource"]["uid"] == "prometheus"  # the provisioned datasource's uid
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"])


def test_dashboard_queries_name_only_defined_metrics() -> None:
    names = referenced_metric_names(dashboard_exprs())
    assert {
        "streamscore_events_consumed_total",
        "streamscore_end_to_end_latency_seconds_bucket",
        "streamscore_consumer_lag",
        "streamscore_dead_letters_total",
        "streamscore_model_info",
        "streamscore_feature_drift_psi",
        "streamscore_live_mae",
        "streamscore_live_accuracy",
        "streamscore_live_roc_auc",
        "streamscore_live_macro_f1",
        "streamscore_model_updates_rejected_total",
    } <= names
    assert sorted(names - defined_names()) == []


def test_alert_rules_name_only_defined_metrics() -> None:
    names = referenced_metric_names(rule_exprs())
    assert "streamscore_model_holdout_metric" in names
    assert sorted(names - defined_names()) == []


def test_a_renamed_metric_would_be_caught() -> None:
    assert "streamscore_predictions_total" in defined_names()
    assert "streamscore_prediction_total" not in defined_names()
    assert referenced_metric_names(["rate(streamscore_x_total[5m]) > on(a) streamscore_y"]) == {
        "streamscore_x_total",
        "streamscore_y",
    }


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamscore.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
