"""Retraining from ground-truth rows: holdout by time, comparison, publish gate."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from streamscore.core.records import Task
from streamscore.dev import synthetic
from streamscore.dev.synthetic import demo_bundle
from streamscore.models.container import decode_bundle
from streamscore.models.runtime import LoadedModel
from streamscore.train.recipe import ModelRecipe
from streamscore.train.training import (
    Comparison,
    TooFewRowsError,
    evaluate,
    retrain,
    should_publish,
)

LINEAR = ModelRecipe("sklearn.linear_model.LinearRegression")

T0 = 1_700_000_000_000


def rows(
    n: int, seed: int = 1, *, with_c_inputs: bool = True, noise: float = 0.0
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (e, y0) in enumerate(synthetic.events(n, rng, with_c=True, event_time_ms=0)):
        y = y0 + noise * float(rng.normal())
        # as the table stores them: each raw input a column (without c's inputs, only
        # the scored features a and b were kept)
        names = ("a", "b", "c", "segment") if with_c_inputs else ("a", "b")
        out.append(
            {
                "event_id": e["event_id"],
                "event_time": T0 + i * 1000,
                "label": y,
                **{k: e[k] for k in names},
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
        recipe=LINEAR,
        margin=0.05,
        now_ms=T0,
    )
    c = res.comparison
    assert c.current_version == 1 and c.n_holdout == 300
    assert c.current["mae"] > 0.9  # v1 cannot see c
    # with c, only the world's noise is left (N(0, 0.5): mean absolute value ~0.4): better,
    # never exact
    assert 0.3 < c.candidate["mae"] < 0.5
    assert res.decision.publish and res.decision.improvement > 0.5
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
        rows(1000, noise=1.0),
        synthetic.spec_abc(),
        current=current,
        name="demo",
        version=4,
        recipe=LINEAR,
    )
    assert abs(res.comparison.candidate["mae"] - res.comparison.current["mae"]) < 0.05
    assert not res.decision.publish
    assert "< margin" in res.decision.reason


def test_too_few_rows_is_refused_with_a_typed_error() -> None:
    with pytest.raises(TooFewRowsError) as ei:
        retrain(
            rows(50),
            synthetic.spec_abc(),
            current=None,
            name="demo",
            version=1,
            recipe=LINEAR,
            min_rows=100,
        )
    assert ei.value.rows == 50 and ei.value.minimum == 100 and ei.value.reason == "too_few_rows"
    # rows without the raw inputs cannot feed c: all refused by the serving checks
    with pytest.raises(TooFewRowsError, match="0 usable rows"):
        retrain(
            rows(500, with_c_inputs=False),
            synthetic.spec_abc(),
            current=None,
            name="demo",
            version=1,
            recipe=LINEAR,
        )


def test_hgb_estimator_and_no_current_model() -> None:
    hgb = ModelRecipe(
        "sklearn.ensemble.HistGradientBoostingRegressor", MappingProxyType({"max_iter": 50})
    )
    res = retrain(rows(600), synthetic.spec_abc(), current=None, name="d", version=1, recipe=hgb)
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


def test_evaluate_binary_gives_roc_auc() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array(["benign", "malignant", "malignant", "benign"])
    classes = ["benign", "malignant"]
    m = evaluate(Task.CLASSIFICATION, y, probabilities=probs, classes=classes)
    # malignant scores 0.8, 0.4 vs benign 0.1, 0.7: 3 of 4 pairs ordered right
    assert m["roc_auc"] == pytest.approx(0.75)
    flipped = evaluate(
        Task.CLASSIFICATION, y, probabilities=probs, classes=classes, positive="benign"
    )
    # the probabilities of two classes sum to 1: either class ranks the rows alike
    assert flipped["roc_auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5) and "macro_f1" in m


def test_should_publish_uses_the_recipe_metric_and_its_direction() -> None:
    cur = {"accuracy": 0.9, "log_loss": 0.30, "roc_auc": 0.95, "macro_f1": 0.8}
    cand = {"accuracy": 0.9, "log_loss": 0.25, "roc_auc": 0.94, "macro_f1": 0.85}
    on = lambda metric: Comparison(Task.CLASSIFICATION, cur, cand, 50, 1, metric)  # noqa: E731
    assert should_publish(on("log_loss"), 0.1).publish  # lower is better: 17 % less
    assert not should_publish(on("roc_auc"), 0.0).publish  # higher is better: lower
    assert should_publish(on("macro_f1"), 0.04).publish
    assert not should_publish(on("accuracy"), 0.0).publish  # equal is not better
