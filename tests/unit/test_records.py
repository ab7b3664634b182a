"""positional_maker: the same frozen record as the class's own __init__, and only for
classes it can build that way. Prediction.raw_inputs: NaN features as None."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streamscore.core.records import Feedback, Prediction, Role, positional_maker
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
