"""Build a bundle from files a data scientist has: a fitted estimator, a feature spec and
a data sample. Pure (no Kafka).

The estimator file is a joblib/pickle file **from the local disk of the person
publishing** — trusted by definition, like their own code. It is converted to ONNX here,
so what travels over the network and runs in the workers is never a pickle.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.records import FeatureSpec
from .container import Bundle
from .convert import build_bundle


def load_spec(path: Path) -> FeatureSpec:
    try:
        return FeatureSpec.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the feature spec {path}: {exc}") from exc


def load_matrix(path: Path, spec: FeatureSpec) -> np.ndarray:
    """A sample of model inputs: ``.npy`` (columns in spec order) or CSV with a header
    naming (at least) the spec's fields."""
    if path.suffix == ".npy":
        x: np.ndarray = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [n for n in spec.names if n not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path} has no column(s) {missing} of the feature spec")
            rows = [[float(r[n]) if r[n] != "" else np.nan for n in spec.names] for r in reader]
        x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(spec.fields) or x.shape[0] == 0:
        raise ConfigError(
            f"{path}: expected a non-empty (n, {len(spec.fields)}) matrix, got {x.shape}"
        )
    return x


def load_estimator(path: Path) -> Any:
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot load the estimator file {path}: {exc}") from exc


def bundle_from_files(
    estimator_path: Path,
    spec_path: Path,
    data_path: Path,
    *,
    name: str,
    version: int,
    holdout_metrics: dict[str, float] | None = None,
) -> Bundle:
    spec = load_spec(spec_path)
    x = load_matrix(data_path, spec)
    est = load_estimator(estimator_path)
    return build_bundle(
        est,
        name=name,
        version=version,
        feature_spec=spec,
        X_train=x,
        X_reference=x[: min(len(x), 1000)],
        created_at_ms=int(time.time() * 1000),
        holdout_metrics=holdout_metrics,
    )
