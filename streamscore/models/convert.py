"""Conversion at publish time: a fitted scikit-learn estimator or Pipeline becomes an ONNX
graph (skl2onnx) and is packaged as a :class:`~streamscore.models.container.Bundle`.

:func:`build_bundle` fits nothing: it converts, safety-scans the graph, checks that ONNX
agrees with scikit-learn on a reference sample, and computes the reference histograms
drift detection uses. skl2onnx 1.20 needs a small fix under protobuf >= 6
(:func:`_skl2onnx_hgb_fix`, applied for the duration of one conversion under a lock).

Pure: no Kafka, no file or network I/O (reading the publisher's files is
:mod:`streamscore.models.build`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import NonFiniteOutputError
from ..core.records import FeatureSpec, Task
from .container import INPUT_NAME, MAX_REFERENCE_ROWS, Bundle
from .meta import ModelMeta, ReferenceDistributions, compute_histogram
from .runtime import LoadedModel, compare_outputs, open_session, raw_outputs
from .safety import check_onnx_safety

__all__ = ["TARGET_OPSET", "build_bundle", "to_onnx_bytes"]

#: Opsets used when converting; old enough for any onnxruntime >= 1.14.
TARGET_OPSET: Mapping[str, int] = MappingProxyType({"": 17, "ai.onnx.ml": 3})

_convert_lock = threading.Lock()


@contextlib.contextmanager
def _skl2onnx_hgb_fix() -> Iterator[None]:
    """skl2onnx 1.20 passes a Python bool into an ONNX INTS attribute for HGB leaves,
    which protobuf >= 6 refuses. Coerce it to int for the duration of one conversion."""
    import skl2onnx.common.tree_ensemble as te

    original = te.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(
                kwargs["nodes_missing_value_tracks_true"]
            )
        return original(*args, **kwargs)

    with _convert_lock:
        te.add_node = add_node
        try:
            yield
        finally:
            te.add_node = original


def _final_estimator(est: Any) -> Any:
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    return est


def to_onnx_bytes(estimator: Any, n_features: int) -> tuple[bytes, str]:
    """Convert a fitted estimator/Pipeline; returns (onnx bytes, the output to read)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = _final_estimator(estimator)
    is_clf = hasattr(final, "classes_")
    options = {id(final): {"zipmap": False}} if is_clf else None
    with _skl2onnx_hgb_fix():
        onx = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=dict(TARGET_OPSET),
        )
    names = [o.name for o in onx.graph.output]
    if is_clf:
        out = "probabilities" if "probabilities" in names else names[-1]
    else:
        out = "variable" if "variable" in names else names[0]
    return bytes(onx.SerializeToString()), out


def build_bundle(
    estimator: Any,
    *,
    name: str,
    version: int,
    feature_spec: FeatureSpec,
    X_train: npt.ArrayLike,
    X_reference: npt.ArrayLike,
    created_at_ms: int,
    train_window: tuple[int, int] | None = None,
    holdout_metrics: Mapping[str, float] | None = None,
    reference_rows: int = MAX_REFERENCE_ROWS,
    max_mismatch_fraction: float = 0.001,
    max_histogram_rows: int = 100_000,
) -> Bundle:
    """Convert a *fitted* estimator to ONNX and package it (fits nothing).

    Checks that ONNX agrees with scikit-learn on ``X_reference`` (probabilities within
    1e-4; values within rtol 1e-4 + 1e-4 * max(1, max|y|)); float32 tree thresholds can
    flip a rare row exactly on a split, so up to ``max_mismatch_fraction`` of the rows may
    differ. Computes reference histograms on ``X_train`` and stores the first
    ``reference_rows`` (<= 64) rows of ``X_reference`` with the ONNX outputs as the
    load-time smoke test.
    """
    n_features = len(feature_spec.fields)
    xr = np.ascontiguousarray(X_reference, dtype=np.float32)
    xt = np.ascontiguousarray(X_train, dtype=np.float32)
    for label, arr in (("X_reference", xr), ("X_train", xt)):
        if arr.ndim != 2 or arr.shape[1] != n_features or arr.shape[0] == 0:
            raise ValueError(f"{label} must be a non-empty (n, {n_features}) matrix")
    final = _final_estimator(estimator)
    is_clf = hasattr(final, "classes_")
    task = Task.CLASSIFICATION if is_clf else Task.REGRESSION
    classes = tuple(str(c) for c in final.classes_) if is_clf else ()
    onnx_bytes, output_name = to_onnx_bytes(estimator, n_features)

    provisional = ModelMeta(
        name=name,
        version=version,
        task=task,
        feature_spec=feature_spec,
        created_at_ms=created_at_ms,
        train_window=train_window,
        holdout_metrics=MappingProxyType(dict(holdout_metrics or {})),
        classes=classes,
    )
    n_ref = max(1, min(reference_rows, MAX_REFERENCE_ROWS, xr.shape[0]))
    draft = Bundle(
        provisional,
        onnx_bytes,
        xr[:n_ref],
        np.zeros((n_ref, len(classes))) if is_clf else np.zeros(n_ref),
        output_name,
    )
    import onnx

    check_onnx_safety(onnx.load_model_from_string(onnx_bytes))
    model = LoadedModel(draft, open_session(onnx_bytes, 1), "")

    onnx_out = model.predict(xr)
    if not onnx_out.finite_mask().all():
        raise NonFiniteOutputError(f"model {name} v{version} gives non-finite outputs")
    # scikit-learn sees the original (float64) values, as the estimator was trained on
    # them; ONNX sees them cast to float32, as workers feed it. Comparing against
    # scikit-learn on float32-*rounded* inputs would be wrong: tree thresholds often sit
    # exactly on a training value, which rounding can push to the other side.
    x64 = np.asarray(X_reference, dtype=np.float64)
    sk = estimator.predict_proba(x64) if is_clf else estimator.predict(x64)
    sk = np.asarray(sk, dtype=np.float64)
    if not np.isfinite(sk).all():
        raise NonFiniteOutputError(f"estimator {name} gives non-finite outputs")
    compare_outputs(task, raw_outputs(onnx_out), sk, "scikit-learn outputs", max_mismatch_fraction)

    hist_x = xt[:max_histogram_rows]
    feats = {f.name: compute_histogram(hist_x[:, i]) for i, f in enumerate(feature_spec.fields)}
    score_hist = compute_histogram(model.predict(hist_x).score())
    meta = ModelMeta(
        name=name,
        version=version,
        task=task,
        feature_spec=feature_spec,
        created_at_ms=created_at_ms,
        train_window=train_window,
        holdout_metrics=provisional.holdout_metrics,
        classes=classes,
        reference_distributions=ReferenceDistributions(MappingProxyType(feats), score_hist),
    )
    expected = raw_outputs(onnx_out)[:n_ref]
    return Bundle(meta, onnx_bytes, xr[:n_ref], expected, output_name)
