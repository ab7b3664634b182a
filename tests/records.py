"""Records both test tiers build: predictions as a score worker writes them (v2 and v3
shapes), for the feedback side's tests."""

from __future__ import annotations

from typing import Any

from streamscore.core.records import Feedback, JoinedRow, Prediction, Role


def prediction_record(eid: str, *, event_time_ms: int = 1_700_000_000_000) -> dict[str, Any]:
    """A valid prediction (schema v2) of a regressor, for the feedback side's tests."""
    return {
        "event_id": eid,
        "key": "k",
        "event_time": event_time_ms,
        "scored_time": event_time_ms + 5,
        "model_name": "demo",
        "model_version": 1,
        "role": "primary",
        "value": 2.0,
        "label": None,
        "probabilities": [],
        "classes": [],
        "degraded": False,
        "late": False,
        "feature_names": ["a"],
        "features": [1.0],
        "inputs": {},
    }


#: the prediction fields that v3 nests in ``detail``
DETAIL_FIELDS = ("probabilities", "classes", "feature_names", "features", "inputs")


def nest_detail(record: dict[str, Any]) -> dict[str, Any]:
    """A v2-shaped prediction (:func:`prediction_record`) in the v3 shape: the arrays and
    the inputs in ``detail``, ``score`` the value or the top probability."""
    out = {k: v for k, v in record.items() if k not in DETAIL_FIELDS}
    probs = record.get("probabilities") or []
    score = record.get("value") if not probs else (probs[1] if len(probs) == 2 else max(probs))
    return out | {"score": score, "detail": {k: record[k] for k in DETAIL_FIELDS if k in record}}


def joined_row(
    eid: str,
    event_time_ms: int,
    *,
    label: float | str,
    value: float | None = 1.0,
    key: str | None = None,
    feature_names: tuple[str, ...] = ("a", "b"),
    features: tuple[float, ...] = (-30.0, 40.0),
    inputs: dict[str, Any] | None = None,
    observed_after_ms: int = 500,
    joined_after_ms: int = 600,
) -> JoinedRow:
    """A ground-truth row as the join makes it (a primary regressor's answer, model
    ``demo`` v1), for the ground-truth store's tests."""
    p = Prediction(
        event_id=eid,
        key=f"k-{eid}" if key is None else key,
        event_time_ms=event_time_ms,
        model_name="demo",
        model_version=1,
        role=Role.PRIMARY,
        value=value,
        label=None,
        probabilities=(),
        classes=(),
        feature_names=feature_names,
        features=features,
        inputs=inputs or {},
    )
    lab = Feedback(eid, label, event_time_ms + observed_after_ms)
    return JoinedRow(lab, p, event_time_ms + joined_after_ms, {})
