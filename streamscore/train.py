"""Training: fit on data, build a bundle. One feature code path with serving."""

from __future__ import annotations

import time

import numpy as np
from sklearn.linear_model import LinearRegression

from . import synthetic
from .bundle import Bundle, build_bundle


def demo_bundle(
    kind: str, *, name: str = "demo", version: int = 1, seed: int = 7, n: int = 5000
) -> Bundle:
    """A linear regressor on the demo's synthetic data, with (``abc``) or without c."""
    rng = np.random.default_rng(seed)
    s = synthetic.sample(n, rng)
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
        feature_spec=synthetic.spec_abc() if with_c else synthetic.spec_ab(),
        X_train=x[:n_train],
        X_reference=x[n_train:],
        created_at_ms=now,
        train_window=(now, now),
        holdout_metrics={"mae": mae},
    )
