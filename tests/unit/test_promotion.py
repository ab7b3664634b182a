"""Live quality gauges and the shadow-promotion policy (both ways)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from streamscore.core.records import Feedback, Prediction, Role
from streamscore.feedback.join import JoinedPair
from streamscore.feedback.promotion import (
    LiveQuality,
    PromotionPolicy,
    PromotionSettings,
    better_by,
)
from streamscore.metrics.series import Metrics

T0 = 1_700_000_000_000


def rpred(eid: str, role: Role, version: int, value: float) -> Prediction:
    return Prediction(eid, None, T0, "demo", version, role, value, None, (), (), (), (), {})


def cpred(eid: str, role: Role, version: int, p_yes: float) -> Prediction:
    lab = "yes" if p_yes >= 0.5 else "no"
    return Prediction(
        eid,
        None,
        T0,
        "clf",
        version,
        role,
        None,
        lab,
        (1 - p_yes, p_yes),
        ("no", "yes"),
        (),
        (),
        {},
    )


def pairs_for(eid: str, y: float | str, *preds: Prediction) -> list[JoinedPair]:
    lab = Feedback(eid, y, T0 + 2000)
    return [JoinedPair(lab, p, first_for_label=i == 0) for i, p in enumerate(preds)]


def feed_regression(
    policy: PromotionPolicy, n: int, primary_err: float, shadow_err: float, start: int = 0
) -> None:
    for i in range(start, start + n):
        eid = f"e{i}"
        policy.observe(
            pairs_for(
                eid,
                100.0,
                rpred(eid, Role.PRIMARY, 1, 100.0 + primary_err),
                rpred(eid, Role.SHADOW, 2, 100.0 - shadow_err),
            )
        )


def test_better_by() -> None:
    assert better_by("mae", 2.0, 1.0) == pytest.approx(0.5)
    assert better_by("mae", 1.0, 2.0) == pytest.approx(-1.0)
    assert better_by("accuracy", 0.8, 0.9) == pytest.approx(0.1)
    assert better_by("mae", 0.0, 0.0) == 0.0


def test_better_shadow_is_promoted_once_after_n_labels() -> None:
    pol = PromotionPolicy(PromotionSettings(enabled=True, min_labels=50, margin=0.1))
    feed_regression(pol, 49, primary_err=1.7, shadow_err=0.01)
    assert pol.decide() is None  # not enough evidence yet
    feed_regression(pol, 1, 1.7, 0.01, start=49)
    d = pol.decide()
    assert d is not None and d.promote and d.kind == "promotion"
    assert (d.primary_version, d.shadow_version, d.n_labels) == (1, 2, 50)
    assert d.primary_value == pytest.approx(1.7) and d.shadow_value == pytest.approx(0.01)
    assert "mae" in d.detail and "50 paired labels" in d.detail and "promote" in d.detail
    feed_regression(pol, 200, 1.7, 0.01, start=50)
    assert pol.decide() is None  # final


def test_worse_shadow_is_declined_and_not_redecided_before_n_more() -> None:
    pol = PromotionPolicy(PromotionSettings(enabled=True, min_labels=40, margin=0.05))
    feed_regression(pol, 40, primary_err=1.0, shadow_err=0.98)  # 2 % better < 5 %
    d = pol.decide()
    assert d is not None and not d.promote and d.kind == "promotion_declined"
    assert d.improvement == pytest.approx(0.02)
    feed_regression(pol, 39, 1.0, 0.98, start=40)
    assert pol.decide() is None
    feed_regression(pol, 1, 1.0, 0.98, start=79)
    d2 = pol.decide()
    assert d2 is not None and not d2.promote and d2.n_labels == 80


def test_unpaired_labels_do_not_count_and_disabled_never_decides() -> None:
    pol = PromotionPolicy(PromotionSettings(enabled=True, min_labels=10))
    for i in range(30):  # primary only: nothing to compare
        pol.observe(pairs_for(f"p{i}", 1.0, rpred(f"p{i}", Role.PRIMARY, 1, 2.0)))
    assert pol.decide() is None and pol.paired("demo", 1, 2) == 0
    off = PromotionPolicy(PromotionSettings(enabled=False, min_labels=1))
    feed_regression(off, 10, 1.0, 0.0)
    assert off.decide() is None


def test_classification_uses_accuracy() -> None:
    pol = PromotionPolicy(PromotionSettings(enabled=True, min_labels=20, margin=0.1))
    for i in range(20):
        eid = f"c{i}"
        truth = "yes" if i % 2 else "no"
        p_shadow = 0.9 if truth == "yes" else 0.1  # always right
        pol.observe(
            pairs_for(
                eid, truth, cpred(eid, Role.PRIMARY, 4, 0.7), cpred(eid, Role.SHADOW, 5, p_shadow)
            )
        )
    d = pol.decide()
    assert d is not None and d.metric == "accuracy" and d.promote
    assert d.primary_value == pytest.approx(0.5) and d.shadow_value == pytest.approx(1.0)


def test_failed_promotion_is_retried_after_n_more() -> None:
    pol = PromotionPolicy(PromotionSettings(enabled=True, min_labels=10, margin=0.1))
    feed_regression(pol, 10, 2.0, 0.1)
    d = pol.decide()
    assert d is not None and d.promote
    pol.failed(d)
    assert pol.decide() is None
    feed_regression(pol, 10, 2.0, 0.1, start=10)
    again = pol.decide()
    assert again is not None and again.promote


def test_live_quality_gauges_per_version_and_role() -> None:
    reg = CollectorRegistry()
    q = LiveQuality(Metrics(reg), window=3)
    for i, err in enumerate([1.0, -2.0, 3.0, 4.0]):  # window keeps the last 3
        q.observe(pairs_for(f"e{i}", 10.0, rpred(f"e{i}", Role.PRIMARY, 1, 10.0 - err)))
    q.publish()
    lbl = {"model_version": "1", "role": "primary"}
    assert reg.get_sample_value("streamscore_live_mae", lbl) == pytest.approx(3.0)
    assert reg.get_sample_value("streamscore_live_rmse", lbl) == pytest.approx(
        math.sqrt((4 + 9 + 16) / 3)
    )
    assert reg.get_sample_value("streamscore_live_labelled", lbl) == 3
    assert reg.get_sample_value("streamscore_residual_count", lbl) == 4
    assert reg.get_sample_value("streamscore_feedback_joined_total", lbl) == 4
    assert reg.get_sample_value("streamscore_label_delay_seconds_count") == 4

    for i, (truth, p) in enumerate([("yes", 0.95), ("no", 0.15), ("yes", 0.3)]):
        q.observe(pairs_for(f"c{i}", truth, cpred(f"c{i}", Role.SHADOW, 7, p)))
    q.publish()
    c = {"model_version": "7", "role": "shadow"}
    assert reg.get_sample_value("streamscore_live_accuracy", c) == pytest.approx(2 / 3)
    ll = -(math.log(0.95) + math.log(0.85) + math.log(0.3)) / 3
    assert reg.get_sample_value("streamscore_live_log_loss", c) == pytest.approx(ll)
    top = {**c, "bucket": "0.9"}
    assert reg.get_sample_value("streamscore_live_reliability", {**top, "stat": "count"}) == 1
    assert reg.get_sample_value(
        "streamscore_live_reliability", {**top, "stat": "observed"}
    ) == pytest.approx(1.0)


def test_a_batch_of_regression_pairs_scores_as_pair_by_pair() -> None:
    """One batch of a regressor's pairs (the tight path: non-finite labels skipped, only
    the window's last scores kept) gives the figures and residuals of the same pairs
    observed one at a time (each pair scored by score_pair)."""
    ys = [10.0, math.nan, 7.5, math.inf, 3.0, -2.0, 8.0]
    pairs = [
        p
        for i, y in enumerate(ys)
        for p in pairs_for(f"e{i}", y, rpred(f"e{i}", Role.PRIMARY, 1, 5.0 + i))
    ]
    figures = []
    for batches in ([pairs], [[p] for p in pairs]):
        reg = CollectorRegistry()
        q = LiveQuality(Metrics(reg), window=3)
        for b in batches:
            q.observe(b)
        q.publish()
        lbl = {"model_version": "1", "role": "primary"}
        figures.append(
            (
                q.figures(1, Role.PRIMARY),
                reg.get_sample_value("streamscore_residual_count", lbl),
                reg.get_sample_value("streamscore_residual_sum", lbl),
            )
        )
    assert figures[0] == figures[1]
    assert figures[0][1] == 5 and figures[0][0]["n"] == 3


def _binary(eid: str, role: Role, version: int, p_pos: float) -> Prediction:
    return Prediction(
        eid, None, T0, "clf", version, role, None, "pos" if p_pos >= 0.5 else "neg",
        (1 - p_pos, p_pos), ("neg", "pos"), (), (), {},
    )  # fmt: skip


def _multi(eid: str, role: Role, version: int, label: str) -> Prediction:
    probs = tuple(0.8 if c == label else 0.1 for c in ("a", "b", "c"))
    return Prediction(
        eid, None, T0, "clf", version, role, None, label, probs, ("a", "b", "c"), (), (), {}
    )


def test_live_roc_auc_for_binary_and_macro_f1_for_multiclass() -> None:
    reg = CollectorRegistry()
    q = LiveQuality(Metrics(reg), window=100, positive="pos")
    for i, (truth, p) in enumerate([("pos", 0.9), ("neg", 0.2), ("pos", 0.4), ("neg", 0.6)]):
        q.observe(pairs_for(f"b{i}", truth, _binary(f"b{i}", Role.PRIMARY, 1, p)))
    for i, (truth, pred) in enumerate([("a", "a"), ("b", "b"), ("c", "a"), ("c", "c")]):
        q.observe(pairs_for(f"m{i}", truth, _multi(f"m{i}", Role.SHADOW, 2, pred)))
    b = {"model_version": "1", "role": "primary"}
    m = {"model_version": "2", "role": "shadow"}
    assert reg.get_sample_value("streamscore_live_roc_auc", b) is None  # not published yet
    q.publish()
    # positives 0.9, 0.4 vs negatives 0.2, 0.6: 3 of 4 pairs ordered right
    assert reg.get_sample_value("streamscore_live_roc_auc", b) == pytest.approx(0.75)
    assert reg.get_sample_value("streamscore_live_accuracy", b) == pytest.approx(0.5)
    assert reg.get_sample_value("streamscore_live_macro_f1", b) is None
    # per class F1: a 2/3, b 1, c 2/3
    assert reg.get_sample_value("streamscore_live_macro_f1", m) == pytest.approx(7 / 9)
    assert reg.get_sample_value("streamscore_live_roc_auc", m) is None
    assert reg.get_sample_value("streamscore_live_labelled", m) == 4
    assert q.figures(2, "shadow")["accuracy"] == pytest.approx(0.75)


def test_promotion_on_the_recipe_metric() -> None:
    """Shadow and primary are equally accurate, the shadow ranks better: accuracy (the
    default) declines, roc_auc (the recipe's) promotes; log_loss (lower is better) too."""

    def feed(pol: PromotionPolicy) -> None:
        for i in range(20):
            truth = "pos" if i % 2 else "neg"
            # both predict the right class; the shadow is more confident
            pp = 0.6 if truth == "pos" else 0.45
            ps = 0.95 if truth == "pos" else 0.05
            eid = f"e{i}"
            pol.observe(
                pairs_for(
                    eid,
                    truth,
                    _binary(eid, Role.PRIMARY, 1, pp if i != 3 else 0.3),
                    _binary(eid, Role.SHADOW, 2, ps if i != 3 else 0.3),
                )
            )

    for metric, promote in [(None, False), ("roc_auc", True), ("log_loss", True)]:
        pol = PromotionPolicy(
            PromotionSettings(
                enabled=True, min_labels=20, margin=0.0, metric=metric, positive="pos"
            )
        )
        feed(pol)
        d = pol.decide()
        assert d is not None and d.metric == (metric or "accuracy")
        assert d.promote is promote, d.detail
