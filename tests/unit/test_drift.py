"""DriftMonitor: PSI per feature and for the score over a sliding window of batches."""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamscore.dev import synthetic
from streamscore.metrics.series import Metrics
from streamscore.models.meta import Histogram, ReferenceDistributions, compute_histogram
from streamscore.score.drift import PSI_ALERT_THRESHOLD, SCORE_LABEL, DriftMonitor, psi

NAMES = ("a", "b", "c")


def _score(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 10.0 * x[:, 0] + 3.0 * x[:, 1]  # the demo (a, b) regressor, roughly
    return out


def reference(n: int = 20_000, seed: int = 1) -> ReferenceDistributions:
    s = synthetic.sample(n, np.random.default_rng(seed))
    x = s.matrix(with_c=True)
    feats = {name: compute_histogram(x[:, i]) for i, name in enumerate(NAMES)}
    return ReferenceDistributions(MappingProxyType(feats), compute_histogram(_score(x)))


def feed(
    mon: DriftMonitor, n: int, seed: int, *, b_shift_sd: float = 0.0, batch: int = 500
) -> None:
    x = synthetic.sample(n, np.random.default_rng(seed), b_shift_sd=b_shift_sd).matrix(True)
    for i in range(0, n, batch):
        mon.update(x[i : i + batch], _score(x[i : i + batch]))


def test_psi_of_identical_distribution_is_zero_and_of_disjoint_is_large() -> None:
    assert psi([10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)
    assert psi([100, 0], [0.0, 1.0]) > 5  # empty bins clamped to epsilon: finite, large
    assert math.isfinite(psi([100, 0], [0.0, 1.0]))
    assert math.isnan(psi([0, 0], [0.5, 0.5]))


def test_b_shifted_by_two_sd_alerts_on_b_only() -> None:
    mon = DriftMonitor(reference(), NAMES, window=5000, model_version=3)
    feed(mon, 5000, seed=2, b_shift_sd=2.0)
    rep = mon.report()
    assert rep.features["b"].psi > PSI_ALERT_THRESHOLD
    assert rep.features["b"].psi > 1.0  # two SDs is a very large shift
    assert rep.features["a"].psi < PSI_ALERT_THRESHOLD / 4
    assert rep.features["c"].psi < PSI_ALERT_THRESHOLD / 4
    # score ~ 10a + 3b: a 2-SD shift of b is only ~0.3 SD of the score: moderate drift
    assert rep.score is not None and 0.05 < rep.score.psi < PSI_ALERT_THRESHOLD
    assert rep.drifted() == ["b"]
    assert rep.drifted(threshold=0.05) == ["b", SCORE_LABEL]
    assert rep.model_version == 3 and rep.window_events == 5000


def test_unshifted_stream_stays_below_threshold() -> None:
    mon = DriftMonitor(reference(), NAMES, window=5000)
    feed(mon, 5000, seed=3)
    rep = mon.report()
    for name in NAMES:
        assert rep.features[name].psi < 0.02, name
        assert rep.features[name].missing_share == 0.0
    assert rep.score is not None and rep.score.psi < 0.02
    assert rep.drifted() == []


def test_window_eviction_drops_old_batches() -> None:
    mon = DriftMonitor(reference(), NAMES, window=2000)
    feed(mon, 4000, seed=4, b_shift_sd=2.0)
    assert mon.report().features["b"].psi > PSI_ALERT_THRESHOLD
    # 2 000 normal events push every shifted batch out of the window
    feed(mon, 2000, seed=5)
    rep = mon.report()
    assert rep.window_events == 2000
    assert mon.batches_in_window == 4
    assert rep.features["b"].psi < 0.05
    # the running totals equal a fresh monitor fed the same last batches
    fresh = DriftMonitor(reference(), NAMES, window=2000)
    feed(fresh, 2000, seed=5)
    assert fresh.report() == rep


def test_window_keeps_at_least_window_events_and_evicts_whole_batches() -> None:
    mon = DriftMonitor(reference(), NAMES, window=1000)
    x = synthetic.sample(3000, np.random.default_rng(6)).matrix(True)
    for n in (700, 700, 700):
        mon.update(x[:n], _score(x[:n]))
    # 2 100 events in 3 batches; dropping the oldest leaves 1 400 >= 1 000
    assert mon.window_events == 1400 and mon.batches_in_window == 2
    mon.update(x[:100], _score(x[:100]))  # 1 500 - 700 = 800 < 1 000: nothing evicted
    assert mon.window_events == 1500 and mon.batches_in_window == 3
    big = np.concatenate([x] * 2)
    mon.update(big, _score(big))  # one batch larger than the window replaces everything
    assert mon.window_events == 6000 and mon.batches_in_window == 1


def test_missing_and_out_of_range_shares() -> None:
    ref = ReferenceDistributions(
        MappingProxyType({"a": Histogram((0.0, 1.0, 2.0), (0.5, 0.5))}),
        Histogram((0.0, 10.0), (1.0,)),
    )
    mon = DriftMonitor(ref, ["a", "unreferenced"], window=100)
    x = np.array(
        [[0.5, 1], [1.5, 1], [np.nan, 1], [5.0, 1], [-1.0, 1], [np.inf, 1], [1.0, 1], [0.2, 1]]
    )
    mon.update(x, np.array([1, 2, 3, np.nan, 11, 4, 5, 6.0]))
    rep = mon.report()
    a = rep.features["a"]
    assert set(rep.features) == {"a"}
    assert a.count == 8
    assert a.missing_share == pytest.approx(1 / 8)
    assert a.out_of_range_share == pytest.approx(3 / 8)  # 5.0, -1.0, inf
    # non-missing: bin0 {0.5, -1.0, 0.2}, bin1 {1.5, 5.0, inf, 1.0}
    assert a.psi == pytest.approx(psi([3, 4], [0.5, 0.5]))
    assert rep.score is not None
    assert rep.score.missing_share == pytest.approx(1 / 8)
    assert rep.score.out_of_range_share == pytest.approx(1 / 8)


def test_the_drift_gauges_export_the_report_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    mon = DriftMonitor(reference(), NAMES, window=5000, model_version=7)
    metrics.drift.bind(lambda: mon.report().gauge_rows())
    feed(mon, 5000, seed=2, b_shift_sd=2.0)
    rep = mon.report()

    def get(metric: str, feature: str, version: str = "7") -> float | None:
        return registry.get_sample_value(metric, {"feature": feature, "model_version": version})

    b_psi = get("streamscore_feature_drift_psi", "b")
    assert b_psi is not None and b_psi == pytest.approx(rep.features["b"].psi)
    a_psi = get("streamscore_feature_drift_psi", "a")
    assert a_psi is not None and a_psi < PSI_ALERT_THRESHOLD
    assert get("streamscore_feature_drift_psi", SCORE_LABEL) is not None
    assert get("streamscore_feature_missing_share", "c") == 0.0
    assert get("streamscore_feature_out_of_range_share", "a") == pytest.approx(
        rep.features["a"].out_of_range_share
    )
    assert (
        registry.get_sample_value("streamscore_drift_window_events", {"model_version": "7"}) == 5000
    )
    mon.reset()  # the window as it is when scraped, not as it was
    assert registry.get_sample_value("streamscore_drift_window_events", {"model_version": "7"}) == 0
    empty_psi = get("streamscore_feature_drift_psi", "b")
    assert empty_psi is not None and math.isnan(empty_psi)
    other = DriftMonitor(reference(), NAMES, window=5000, model_version=8)
    metrics.drift.bind(lambda: other.report().gauge_rows())  # the model was replaced
    assert get("streamscore_feature_drift_psi", "b") is None  # no stale series
    assert get("streamscore_feature_missing_share", "b", "8") is not None


def test_from_meta_uses_the_bundles_reference() -> None:
    from streamscore.dev.synthetic import demo_bundle

    meta = demo_bundle("ab", version=4, n=2000).meta
    mon = DriftMonitor.from_meta(meta, window=1000)
    assert mon.variables == ("a", "b", SCORE_LABEL)
    s = synthetic.sample(1000, np.random.default_rng(9), b_shift_sd=2.0)
    mon.update(s.matrix(False), 10 * s.a + 3 * s.b)
    rep = mon.report()
    assert rep.model_version == 4
    assert rep.features["b"].psi > PSI_ALERT_THRESHOLD > rep.features["a"].psi


def test_bad_shapes_are_refused() -> None:
    mon = DriftMonitor(reference(), NAMES, window=10)
    with pytest.raises(ValueError, match="feature matrix"):
        mon.update(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="scores"):
        mon.update(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="pass the scores"):
        mon.update(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="window"):
        DriftMonitor(reference(), NAMES, window=0)


def test_cost_is_per_batch_not_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binning is one sort and one searchsorted per variable (of its few edges among the
    sorted values) per batch, whatever n is, and reading the report does not walk the
    window."""
    calls = {"searchsorted": 0, "sort": 0}
    real_ss, real_sort = np.searchsorted, np.sort

    def ss(*a: Any, **k: Any) -> Any:
        calls["searchsorted"] += 1
        return real_ss(*a, **k)

    def sort(*a: Any, **k: Any) -> Any:
        calls["sort"] += 1
        return real_sort(*a, **k)

    mon = DriftMonitor(reference(), NAMES, window=1_000_000)
    monkeypatch.setattr(np, "searchsorted", ss)  # the module drift.py calls
    monkeypatch.setattr(np, "sort", sort)
    x = synthetic.sample(200_000, np.random.default_rng(8)).matrix(True)
    mon.update(x, _score(x))
    assert calls == {"searchsorted": 4, "sort": 1}
    for _ in range(50):
        mon.update(x[:100], _score(x[:100]))
    calls.update(searchsorted=0, sort=0)
    mon.report()
    assert calls == {"searchsorted": 0, "sort": 0}


def test_batch_counts_match_binning_each_value() -> None:
    """The sorted-batch binning equals putting each value in its bin one at a time
    (edges inclusive on the left), with missing and out-of-range values counted apart,
    on batches with NaN, infinities and values on the edges."""
    ref = reference()
    mon = DriftMonitor(ref, NAMES, window=10)
    hists = [ref.features[n] for n in NAMES if n in ref.features] + [ref.score]
    rng = np.random.default_rng(11)
    for _ in range(25):
        n = int(rng.integers(1, 80))
        x = rng.normal(scale=2.0, size=(n, len(NAMES)))
        edge_hits = rng.random(x.shape) < 0.1  # some values exactly on an interior edge
        for j, h in enumerate(hists[: len(NAMES)]):
            x[edge_hits[:, j], j] = h.edges[1 + int(rng.integers(len(h.edges) - 2))]
        x[rng.random(x.shape) < 0.1] = np.nan
        x[rng.random(x.shape) < 0.05] = np.inf
        s = rng.random(n)
        s[rng.random(n) < 0.1] = np.nan
        values = np.column_stack((x, s))
        want: list[int] = []
        missing, oor = [], []
        for j, h in enumerate(hists):
            bins = [0] * len(h.proportions)
            col = values[:, j]
            for v in col.tolist():
                if not math.isnan(v):
                    bins[sum(1 for e in h.edges[1:-1] if e <= v)] += 1
            want.extend(bins)
            missing.append(int(np.isnan(col).sum()))
            oor.append(int(((col < h.edges[0]) | (col > h.edges[-1])).sum()))
        got = mon._batch_counts(x, s).tolist()
        assert got == want + missing + oor
