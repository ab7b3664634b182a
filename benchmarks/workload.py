"""The benchmark's synthetic world: a ten-feature event schema, the two models (a 100-tree
HistGradientBoostingClassifier and a StandardScaler + LogisticRegression pipeline) and a
fast generator of wire-format events. Shared by ``benchmarks.run`` and
``benchmarks.hotpath``; needs no broker."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.core.records import FeatureField, FeatureSpec
from streamscore.models.container import Bundle
from streamscore.models.convert import build_bundle
from streamscore.serde import codec as serde

SCHEMA_PATH = Path(__file__).with_name("bench_event.avsc")
N_FEATURES = 10
FEATURES = tuple(f"f{i}" for i in range(N_FEATURES))
N_KEYS = 10_000
MODEL_KINDS = ("hgb", "lr")
MODEL_LABELS = {
    "hgb": "HistGradientBoostingClassifier (100 trees)",
    "lr": "StandardScaler + LogisticRegression",
}


def event_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def feature_spec() -> FeatureSpec:
    return FeatureSpec(tuple(FeatureField(name, minimum=-50.0, maximum=50.0) for name in FEATURES))


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): ten standard-normal features and a noisy binary target."""
    x = rng.normal(size=(n, N_FEATURES))
    z = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3] + 0.3 * x[:, 4]
    y = (z + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return x, y


def estimator(kind: str) -> Any:
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0)
    if kind == "lr":
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
    raise ValueError(f"unknown model kind {kind!r}")


@dataclass(frozen=True)
class BenchModel:
    kind: str
    estimator: Any  # the fitted scikit-learn object (the naive baseline predicts with it)
    bundle: Bundle

    @property
    def name(self) -> str:
        return self.bundle.meta.name


def train(kind: str, *, version: int = 1, seed: int = 3, n: int = 20_000) -> BenchModel:
    x, y = sample(n, np.random.default_rng(seed))
    n_train = int(n * 0.8)
    est = estimator(kind).fit(x[:n_train], y[:n_train])
    now = int(time.time() * 1000)
    acc = float(np.mean(est.predict(x[n_train:]) == y[n_train:]))
    b = build_bundle(
        est,
        name=f"bench-{kind}",
        version=version,
        feature_spec=feature_spec(),
        X_train=x[:n_train],
        X_reference=x[n_train:],
        created_at_ms=now,
        train_window=(now, now),
        holdout_metrics={"accuracy": acc},
    )
    return BenchModel(kind, est, b)


class EventEncoder:
    """Wire-format bench events (magic byte, schema id, Avro body) with fastavro."""

    def __init__(self, schema_id: int) -> None:
        self._header = serde.HEADER.pack(serde.MAGIC_BYTE, schema_id)
        self._parsed = serde.parse(event_schema())

    def encode(self, event: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, event)
        return buf.getvalue()


def events(
    n: int,
    rng: np.random.Generator,
    *,
    start: int = 0,
    event_time_ms: int | None = None,
) -> Iterator[dict[str, Any]]:
    """``n`` bench events with ids ``start .. start + n - 1`` (as 16-hex-digit strings)."""
    x, _y = sample(n, rng)
    keys = rng.integers(0, N_KEYS, n).tolist()
    rows = x.tolist()
    for i in range(n):
        e: dict[str, Any] = dict(zip(FEATURES, rows[i], strict=True))
        e["event_id"] = f"{start + i:016x}"
        e["key"] = f"entity-{keys[i]}"
        e["event_time"] = event_time_ms if event_time_ms is not None else int(time.time() * 1000)
        yield e
