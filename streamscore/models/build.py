"""Build a bundle from files a data scientist has: a fitted estimator, a training recipe
and labelled data, a ready ONNX file or an MLflow model, with a feature spec and a data
sample. Pure (no Kafka).

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
from ..core.records import FeatureKind, FeatureSpec, MissingPolicy
from .container import Bundle
from .convert import build_bundle
from .onnx_import import OnnxModelSpec


def load_spec(path: Path) -> FeatureSpec:
    try:
        return FeatureSpec.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the feature spec {path}: {exc}") from exc


def load_matrix(path: Path, spec: FeatureSpec) -> np.ndarray:
    """A sample of model inputs: ``.npy`` (columns in spec order) or CSV with a header
    naming (at least) the spec's fields (see :func:`_csv_matrix`)."""
    if path.suffix == ".npy":
        x: np.ndarray = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    else:
        x = _csv_matrix(path, spec)
    if x.ndim != 2 or x.shape[1] != len(spec.fields) or x.shape[0] == 0:
        raise ConfigError(
            f"{path}: expected a non-empty (n, {len(spec.fields)}) matrix, got {x.shape}"
        )
    return x


def _csv_matrix(path: Path, spec: FeatureSpec) -> np.ndarray:
    """The model matrix of a CSV whose columns are named by the feature names. A cell is
    the model's input as a number (a category's index, a boolean as 0/1), or as the
    event holds it: a category's text, ``true``/``false``; empty is missing. Missing
    values of ``impute`` features take their impute value, as in the worker."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [n for n in spec.names if n not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path} has no column(s) {missing} of the feature spec")
        rows = [[r[n] for n in spec.names] for r in reader]
    x = np.full((len(rows), len(spec.fields)), np.nan)
    for j, field in enumerate(spec.fields):
        text = {c: float(i) for i, c in enumerate(field.categories)}
        if field.kind is FeatureKind.BOOLEAN:
            text = {"true": 1.0, "false": 0.0}
        for i, row in enumerate(rows):
            cell = row[j]
            if cell == "":
                continue
            value = text.get(cell.lower() if field.kind is FeatureKind.BOOLEAN else cell)
            if value is None:
                try:
                    value = float(cell)
                except ValueError:
                    raise ConfigError(
                        f"{path} row {i + 2}: {field.name} is {cell!r}, not a number"
                        + (f" or one of {list(text)}" if text else "")
                    ) from None
            x[i, j] = value
        if field.missing is MissingPolicy.IMPUTE:
            x[np.isnan(x[:, j]), j] = field.impute_value
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


# ------------------------------------------------------- the other model sources


def load_model_spec(path: Path) -> OnnxModelSpec:
    """A ready ONNX / MLflow model's spec file: a feature spec JSON with the model's
    ``task``, ``classes``, ``output``, ``output_kind`` beside its ``fields``
    (:mod:`streamscore.models.onnx_import`)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model spec {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a model spec is a JSON object")
    try:
        return OnnxModelSpec.from_dict(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None


def load_labelled(path: Path, spec: FeatureSpec, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Training data from a CSV: the spec's columns (model inputs, as :func:`load_matrix`
    reads them) and the ``label`` column (as text)."""
    if path.suffix != ".csv":
        raise ConfigError(f"{path}: training data is a CSV file with a {label!r} column")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if label not in (reader.fieldnames or []):
            raise ConfigError(f"{path} has no label column {label!r}")
        y = np.asarray([r[label] for r in reader], dtype=np.str_)
    return load_matrix(path, spec), y


def bundle_from_onnx_file(
    onnx_path: Path, spec: OnnxModelSpec, data_path: Path, *, name: str, version: int
) -> Bundle:
    """A ready ONNX file (what ``torch.onnx.export`` writes), its spec and a sample."""
    from .onnx_import import bundle_from_onnx

    try:
        data = onnx_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the ONNX file {onnx_path}: {exc.strerror}") from None
    return bundle_from_onnx(
        data,
        spec,
        load_matrix(data_path, spec.features),
        name=name,
        version=version,
        created_at_ms=int(time.time() * 1000),
    )


def bundle_from_mlflow_uri(
    uri: str,
    spec: OnnxModelSpec | FeatureSpec,
    data_path: Path,
    *,
    name: str,
    version: int,
    tracking_uri: str | None = None,
) -> Bundle:
    """An MLflow model (``models:/name@alias``, ``runs:/...``, a local directory)."""
    from .mlflow_import import bundle_from_mlflow

    features = spec.features if isinstance(spec, OnnxModelSpec) else spec
    return bundle_from_mlflow(
        uri,
        spec,
        load_matrix(data_path, features),
        name=name,
        version=version,
        created_at_ms=int(time.time() * 1000),
        tracking_uri=tracking_uri,
    )
