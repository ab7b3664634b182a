"""positional_maker: the same frozen record as the class's own __init__, and only for
classes it can build that way. Prediction.raw_inputs: NaN features as None, and the same
column-wise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from streamscore.core.records import (
    Feedback,
    Prediction,
    Role,
    positional_maker,
    raw_input_columns,
)
from streamscore.feedback.promotion import PairScore, Task


def test_it_builds_what_the_class_builds() -> None:
    args = ("e1", "k", 5, "m", 3, Role.SHADOW, None, "b", (0.2, 0.8), ("a", "b"),
            ("x",), (1.5,), {"z": 1}, ("t", 0, 9))  # fmt: skip
    made = positional_maker(Prediction)(*args)
    assert made == Prediction(*args) and type(made) is Prediction
    assert made.role is Role.SHADOW and made.position == ("t", 0, 9)
    with pytest.raises(AttributeError):
        made.value = 1.0  # type: ignore[misc]  # still frozen
    fb = positional_maker(Feedback)("e1", "fraud", 7, None)
    assert fb == Feedback("e1", "fraud", 7) and hash(fb) == hash(Feedback("e1", "fraud", 7))
    score = positional_maker(PairScore)(Task.REGRESSION, 0.5, "", "", 0.1, 0.2, False, False)
    assert score == PairScore(Task.REGRESSION, error=0.5, p_true=0.1, confidence=0.2)
    with pytest.raises(TypeError):
        positional_maker(Feedback)("e1", "fraud")  # every field, in order


@dataclass(frozen=True, slots=True)
class _Checked:
    x: int

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("negative")


@dataclass(slots=True)
class _Mutable:
    x: int


@dataclass(frozen=True)
class _NoSlots:
    x: int


@dataclass(frozen=True, slots=True)
class _Derived:
    x: int
    y: list[int] = field(init=False, default_factory=list)


@pytest.mark.parametrize("cls", [_Checked, _Mutable, _NoSlots, _Derived])
def test_it_refuses_classes_it_would_build_differently(cls: type) -> None:
    with pytest.raises(TypeError):
        positional_maker(cls)


@pytest.mark.parametrize(
    ("features", "want"),
    [
        ((1.5, 2.0), {"a": 1.5, "b": 2.0}),
        ((float("nan"), 2.0), {"a": None, "b": 2.0}),  # a missing value: None
        ((float("inf"), float("-inf")), {"a": float("inf"), "b": float("-inf")}),  # sum NaN
    ],
)
def test_raw_inputs_turn_nan_features_into_none_and_keep_infinities(
    features: tuple[float, float], want: dict[str, float | None]
) -> None:
    p = Prediction("e1", "k", 5, "m", 3, Role.PRIMARY, 1.0, None, (), (), ("a", "b"),
                   features, {"c": "x", "a": 7})  # fmt: skip
    assert p.raw_inputs() == {**want, "a": 7, "c": "x"}  # inputs overlay the features
    q = Prediction("e1", "k", 5, "m", 3, Role.PRIMARY, 1.0, None, (), (), ("a", "b"),
                   features, {})  # fmt: skip
    assert q.raw_inputs() == want


def _pred(
    names: tuple[str, ...], features: tuple[float, ...], inputs: dict[str, Any]
) -> Prediction:
    return Prediction("e", "k", 5, "m", 3, Role.PRIMARY, 1.0, None, (), (), names,
                      features, inputs)  # fmt: skip


def test_raw_input_columns_are_raw_inputs_column_wise() -> None:
    nan, inf = float("nan"), float("inf")
    preds = [
        _pred(("a", "b"), (1.5, 2.0), {}),
        _pred(("a", "b"), (nan, 2.0), {"c": "x"}),  # NaN: None; an input beyond the features
        _pred(("b", "d"), (3.0, inf), {"a": 7, "event_id": "skip", "key": "k"}),  # overlay
        _pred(("a", "b"), (1.0,), {}),  # shorter than its names: b absent, as raw_inputs reads
        _pred((), (), {"segment": None}),
        _pred(("a", "b"), (inf, -inf), {}),  # the sum is NaN, yet nothing is NaN
    ]
    cols = raw_input_columns(preds)
    rows = [p.raw_inputs() for p in preds]
    names = {k for r in rows for k in r}
    assert set(cols) == names == {"a", "b", "c", "d", "segment"}
    for name, col in cols.items():
        assert len(col) == len(preds)
        for r, v in zip(rows, col, strict=True):
            assert r.get(name) == v  # (a NaN kept would be unequal to raw_inputs' None)
    assert cols["a"] == [1.5, None, 7, 1.0, None, inf]
    assert cols["b"] == [2.0, 2.0, 3.0, None, None, -inf]
    assert cols["c"] == [None, "x", None, None, None, None]
