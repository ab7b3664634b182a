"""Retraining from ground-truth rows: holdout by time, comparison, publish gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamscore.core.records import Task
from streamscore.models.container import decode_bundle
from streamscore.models.runtime import LoadedModel
from streamscore.dev import synthetic
from streamscore.train.training import (
    Comparison,
    TooFewRowsError,
    demo_bundle,
    evaluate,
    retrain,
    should_publish,
)

T0 = 1_700_000_000_000


def rows(
    n: int, seed: int = 1, *, with_c_inputs: bool = True, noise: float = 0.0
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (e, y0) in enumerate(synthetic.events(n, rng, with_c=True, event_time_ms=0)):
        y = y0 + noise * float(rng.normal())
        inputs = {k: e[k] for k in ("a", "b", "c", "segment")}
        out.append(
            {
                "event_id": e["event_id"],
                "event_time": T0 + i * 1000,
                "label": y,
                "inputs": inputs if with_c_inputs else {},
                "feature_names": ["a", "b"],
                "features": [e["a"], e["b"]],
            }
        )
    return out


def test_candidate_with_c_beats_v1_and_is_published(load: Callable[..., LoadedModel]) -> None:
    v1 = load(demo_bundle("ab", version=1))
    res = retrain(
        rows(1500),
        synthetic.spec_abc(),
        current=v1,
        name="demo",
        version=2,
        margin=0.05,
        now_ms=T0,
    )
    c = res.comparison
    assert c.current_version == 1 and c.n_holdout == 300
    assert c.current["mae"] > 0.5  # v1 cannot see c: E|c - E c| ~ 0.9
    assert c.candidate["mae"] < 0.01 * c.current["mae"]
    assert res.decision.publish and res.decision.improvement > 0.9
    table = c.table()
    assert "mae" in table and "rmse" in table and "candidate" in table
    meta = decode_bundle(res.bundle.to_bytes()).meta
    assert meta.version == 2 and meta.feature_spec.names == ("a", "b", "c")
    assert meta.train_window == (T0, T0 + 1199 * 1000)  # the older 80 %, by event time
    assert meta.holdout_metrics["mae"] == pytest.approx(c.candidate["mae"])


def test_candidate_no_better_is_not_published(load: Callable[..., LoadedModel]) -> None:
    current = load(demo_bundle("abc", version=3))
    # labels with noise: both models are as good as the noise allows
    res = retrain(
        rows(1000, noise=1.0), synthetic.spec_abc(), current=current, name="demo", version=4
    )
    assert abs(res.comparison.candidate["mae"] - res.comparison.current["mae"]) < 0.05
    assert not res.decision.publish
    assert "< margin" in res.decision.reason


def test_too_few_rows_is_refused_with_a_typed_error() -> None:
    with pytest.raises(TooFewRowsError) as ei:
        retrain(rows(50), synthetic.spec_abc(), current=None, name="demo", version=1, min_rows=100)
    assert ei.value.rows == 50 and ei.value.minimum == 100 and ei.value.reason == "too_few_rows"
    # rows without the raw inputs cannot feed c: all refused by the serving checks
    with pytest.raises(TooFewRowsError, match="0 usable rows"):
        retrain(
            rows(500, with_c_inputs=False),
            synthetic.spec_abc(),
            current=None,
            name="demo",
            version=1,
        )


def test_hgb_estimator_and_no_current_model() -> None:
    res = retrain(
        rows(600), synthetic.spec_abc(), current=None, name="d", version=1, estimator="hgb"
    )
    assert res.decision.publish and res.comparison.current == {}
    assert "-" in res.comparison.table()


def test_should_publish_margins() -> None:
    reg = Comparison(Task.REGRESSION, {"mae": 2.0, "rmse": 2.5}, {"mae": 1.8, "rmse": 2.2}, 100)
    assert should_publish(reg, 0.05).publish  # 10 % better
    assert not should_publish(reg, 0.2).publish
    worse = Comparison(Task.REGRESSION, {"mae": 1.0}, {"mae": 1.2}, 100)
    assert not should_publish(worse, 0.0).publish
    clf = Comparison(Task.CLASSIFICATION, {"accuracy": 0.80}, {"accuracy": 0.83}, 100)
    assert should_publish(clf, 0.02).publish and not should_publish(clf, 0.05).publish


def test_evaluate_classification() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = evaluate(
        Task.CLASSIFICATION,
        np.array(["no", "yes", "yes"]),
        probabilities=probs,
        classes=["no", "yes"],
    )
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4)) / 3)
