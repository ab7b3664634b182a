"""The demo's synthetic world, shared by the demo, the tests and the benchmark.

a ~ N(-30, 6), b ~ N(40, 3), c ~ 55 * Beta(5, 100), y = 10a + 3b + c + noise, with the
noise ~ N(0, 0.5) that no feature explains. Version 1 events carry a and b; version 2
events also carry c. A model trained on (a, b) alone has an MAE of about 1.0; one that
also sees c about 0.4 (the noise's mean absolute value): better, never exact.

The demo's project file is ``examples/demo/streamscore.toml``; nothing outside ``dev/``
and the tests knows these field names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy

if TYPE_CHECKING:
    from ..models.container import Bundle

SEGMENTS = ("retail", "pro", "internal")
#: the standard deviation of the part of y that no feature explains
NOISE_SD = 0.5


def spec_ab() -> FeatureSpec:
    return FeatureSpec(
        (
            FeatureField("a", minimum=-200.0, maximum=200.0),
            FeatureField("b", minimum=-200.0, maximum=300.0),
        )
    )


def spec_abc() -> FeatureSpec:
    return FeatureSpec(
        (
            FeatureField("a", minimum=-200.0, maximum=200.0),
            FeatureField("b", minimum=-200.0, maximum=300.0),
            FeatureField("c", minimum=0.0, maximum=55.0, missing=MissingPolicy.REJECT),
        )
    )


def spec_segment() -> FeatureField:
    return FeatureField(
        "segment",
        kind=FeatureKind.CATEGORICAL,
        categories=SEGMENTS,
        missing=MissingPolicy.IMPUTE,
        impute_value=-1.0,
    )


def target(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    out: np.ndarray = 10.0 * a + 3.0 * b + c
    return out


@dataclass(frozen=True)
class Sample:
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    noise: np.ndarray

    @property
    def y(self) -> np.ndarray:
        out: np.ndarray = target(self.a, self.b, self.c) + self.noise
        return out

    def matrix(self, with_c: bool) -> np.ndarray:
        cols = [self.a, self.b, self.c] if with_c else [self.a, self.b]
        return np.column_stack(cols)


def sample(n: int, rng: np.random.Generator, *, b_shift_sd: float = 0.0) -> Sample:
    return Sample(
        a=rng.normal(-30.0, 6.0, n),
        b=rng.normal(40.0 + 3.0 * b_shift_sd, 3.0, n),
        c=55.0 * rng.beta(5.0, 100.0, n),
        noise=rng.normal(0.0, NOISE_SD, n),
    )


def events(
    n: int,
    rng: np.random.Generator,
    *,
    with_c: bool,
    n_keys: int = 1000,
    event_time_ms: int | None = None,
    b_shift_sd: float = 0.0,
) -> Iterator[tuple[dict[str, Any], float]]:
    """(event, true y) pairs; events fit the v1 (``with_c=False``) or v2 event schema.
    The world always has c: v1 events just do not carry it, so their y still includes it."""
    s = sample(n, rng, b_shift_sd=b_shift_sd)
    y = s.y
    keys = rng.integers(0, n_keys, n)
    segs = rng.integers(0, len(SEGMENTS) + 1, n)
    for i in range(n):
        e: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "key": f"entity-{keys[i]}",
            "event_time": event_time_ms if event_time_ms is not None else int(time.time() * 1000),
            "a": float(s.a[i]),
            "b": float(s.b[i]),
            "segment": SEGMENTS[segs[i]] if segs[i] < len(SEGMENTS) else None,
        }
        if with_c:
            e["c"] = float(s.c[i])
        yield e, float(y[i])


def demo_bundle(
    kind: str, *, name: str = "demo", version: int = 1, seed: int = 7, n: int = 5000
) -> Bundle:
    """A linear regressor on the demo's synthetic data, with (``abc``) or without c."""
    from sklearn.linear_model import LinearRegression

    from ..models.convert import build_bundle

    rng = np.random.default_rng(seed)
    s = sample(n, rng)
    with_c = kind == "abc"
    x = s.matrix(with_c)
    n_train = int(n * 0.8)
    est = LinearRegression().fit(x[:n_train], s.y[:n_train])
    mae = float(np.mean(np.abs(est.predict(x[n_train:]) - s.y[n_train:])))
    now = int(time.time() * 1000)
    return build_bundle(
        est,
        name=name,
        version=version,
        feature_spec=spec_abc() if with_c else spec_ab(),
        X_train=x[:n_train],
        X_reference=x[n_train:],
        created_at_ms=now,
        train_window=(now, now),
        holdout_metrics={"mae": mae},
    )
