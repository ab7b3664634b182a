"""Conversion at publish time: a fitted scikit-learn estimator or Pipeline (XGBoost and
LightGBM scikit-learn models included, through onnxmltools' converters registered with
skl2onnx) becomes an ONNX graph and is packaged as a
:class:`~streamscore.models.container.Bundle` (:func:`package_onnx` packages any served
graph: :mod:`streamscore.models.onnx_import` uses it for ready ONNX files). A model no
converter knows raises :class:`UnsupportedModelError`, naming it and
:data:`SUPPORTED_MODELS`.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import ModelError, NonFiniteOutputError
from ..core.records import FeatureSpec, Task
from .container import INPUT_NAME, MAX_REFERENCE_ROWS, Bundle
from .meta import ModelMeta, ReferenceDistributions, compute_histogram
from .runtime import LoadedModel, compare_outputs, open_session, raw_outputs
from .safety import check_onnx_safety

__all__ = [
    "SUPPORTED_MODELS",
    "TARGET_OPSET",
    "UnsupportedModelError",
    "build_bundle",
    "package_onnx",
    "to_onnx_bytes",
]

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


#: What :func:`to_onnx_bytes` converts, for the error that says a model is not one of them.
SUPPORTED_MODELS = (
    "scikit-learn estimators and Pipelines that skl2onnx converts (with ColumnTransformer, "
    "OneHotEncoder, OrdinalEncoder, SimpleImputer...)",
    "XGBoost XGBClassifier/XGBRegressor (extra [xgboost])",
    "LightGBM LGBMClassifier/LGBMRegressor (extra [lightgbm])",
    "a ready ONNX file with its feature spec (model build --onnx)",
    "an MLflow model of the sklearn or onnx flavour (model build --mlflow, extra [mlflow])",
)


class UnsupportedModelError(ModelError):
    """The model cannot be converted to ONNX; the message names it and what is
    supported."""

    reason = "unsupported_model"

    def __init__(self, what: str, detail: str = "") -> None:
        supported = "; ".join(SUPPORTED_MODELS)
        extra = f" ({detail})" if detail else ""
        super().__init__(f"cannot convert {what} to ONNX{extra}. Supported: {supported}")


def _model_name(est: Any) -> str:
    t = type(est)
    return f"{t.__module__}.{t.__qualname__}"


def _steps(est: Any) -> Iterator[Any]:
    """Every estimator inside ``est`` (Pipeline steps, ColumnTransformer/FeatureUnion
    parts), and ``est`` itself."""
    yield est
    for attr in ("steps", "transformer_list", "transformers_"):
        for part in getattr(est, attr, None) or ():
            inner = part[1]
            if not isinstance(inner, str):  # "drop" / "passthrough"
                yield from _steps(inner)


_registered: set[str] = set()


def _register_boosters(estimator: Any) -> None:
    """Teach skl2onnx the XGBoost/LightGBM scikit-learn models (through onnxmltools'
    converters), once per process and only when the estimator holds one, so that they
    convert alone and inside a Pipeline alike."""
    roots = {type(e).__module__.split(".")[0] for e in _steps(estimator)}
    for root in sorted(roots & {"xgboost", "lightgbm"} - _registered):
        try:
            from skl2onnx import update_registered_converter
            from skl2onnx.common.shape_calculator import (
                calculate_linear_classifier_output_shapes,
                calculate_linear_regressor_output_shapes,
            )

            if root == "xgboost":
                from onnxmltools.convert.xgboost.operator_converters.XGBoost import (
                    convert_xgboost as converter,
                )
                from xgboost import XGBClassifier as clf
                from xgboost import XGBRegressor as reg
            else:
                from lightgbm import LGBMClassifier as clf
                from lightgbm import LGBMRegressor as reg
                from onnxmltools.convert.lightgbm.operator_converters.LightGbm import (
                    convert_lightgbm as converter,
                )
        except ImportError as exc:
            raise UnsupportedModelError(
                f"a {root} model", f"onnxmltools is needed: pip install 'streamscore[{root}]'"
            ) from exc
        options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
        update_registered_converter(
            clf,
            f"Streamscore{clf.__name__}",
            calculate_linear_classifier_output_shapes,
            converter,
            options=options,
        )
        update_registered_converter(
            reg, f"Streamscore{reg.__name__}", calculate_linear_regressor_output_shapes, converter
        )
        _registered.add(root)


def to_onnx_bytes(estimator: Any, n_features: int) -> tuple[bytes, str]:
    """Convert a fitted estimator/Pipeline; returns (onnx bytes, the output to read).

    Raises :class:`UnsupportedModelError` for a model no converter knows."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
    from sklearn.base import BaseEstimator

    if not isinstance(estimator, BaseEstimator):
        raise UnsupportedModelError(f"a {_model_name(estimator)}", "not a scikit-learn model")
    _register_boosters(estimator)
    final = _final_estimator(estimator)
    is_clf = hasattr(final, "classes_")
    options = {id(final): {"zipmap": False}} if is_clf else None
    try:
        with _skl2onnx_hgb_fix():
            onx = convert_sklearn(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                options=options,
                target_opset=dict(TARGET_OPSET),
            )
    except (MissingConverter, MissingShapeCalculator) as exc:
        unknown = [e for e in _steps(estimator) if _model_name(e) in str(exc)]
        what = _model_name(unknown[0]) if unknown else _model_name(estimator)
        raise UnsupportedModelError(f"a {what}", "skl2onnx has no converter for it") from exc
    except Exception as exc:  # skl2onnx asserts and raises many types on what it cannot do
        detail = f"skl2onnx failed: {type(exc).__name__}: {str(exc)[:300]}"
        raise UnsupportedModelError(f"a {_model_name(estimator)}", detail) from exc
    names = [o.name for o in onx.graph.output]
    if is_clf:
        out = "probabilities" if "probabilities" in names else names[-1]
    else:
        out = "variable" if "variable" in names else names[0]
    return bytes(onx.SerializeToString()), out


def _reference_outputs(estimator: Any, x64: np.ndarray, is_clf: bool) -> np.ndarray:
    """The Python model's outputs on ``x64``: probabilities (n, k) or values (n,)."""
    names = getattr(estimator, "feature_names_in_", None)
    x: Any = x64
    if names is not None:  # fitted on a DataFrame (a fit function): give it one
        import pandas as pd

        x = pd.DataFrame(x64, columns=list(names))
    out = estimator.predict_proba(x) if is_clf else estimator.predict(x)
    return np.asarray(out, dtype=np.float64).reshape((x64.shape[0], -1) if is_clf else (-1,))


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
    classes: Sequence[str] | None = None,
) -> Bundle:
    """Convert a *fitted* estimator to ONNX and package it (fits nothing).

    Checks that ONNX agrees with the Python model on ``X_reference`` (probabilities
    within 1e-4; values within rtol 1e-4 + 1e-4 * max(1, max|y|)); float32 tree thresholds
    can flip a rare row exactly on a split, so up to ``max_mismatch_fraction`` of the rows
    may differ. Computes reference histograms on ``X_train`` and stores the first
    ``reference_rows`` (<= 64) rows of ``X_reference`` with the ONNX outputs as the
    load-time smoke test. ``classes`` names a classifier's probability columns when its
    own ``classes_`` are label codes (default: ``classes_`` as strings).
    """
    n_features = len(feature_spec.fields)
    final = _final_estimator(estimator)
    is_clf = hasattr(final, "classes_")
    if is_clf:
        own = tuple(str(c) for c in final.classes_)
        names = own if classes is None else tuple(str(c) for c in classes)
        if len(names) != len(own):
            raise ValueError(f"{len(names)} class names for a model of {len(own)} classes")
    else:
        names = ()
    onnx_bytes, output_name = to_onnx_bytes(estimator, n_features)
    return package_onnx(
        onnx_bytes,
        output_name,
        lambda x64: _reference_outputs(estimator, x64, is_clf),
        name=name,
        version=version,
        task=Task.CLASSIFICATION if is_clf else Task.REGRESSION,
        classes=names,
        feature_spec=feature_spec,
        X_train=X_train,
        X_reference=X_reference,
        created_at_ms=created_at_ms,
        train_window=train_window,
        holdout_metrics=holdout_metrics,
        reference_rows=reference_rows,
        max_mismatch_fraction=max_mismatch_fraction,
        max_histogram_rows=max_histogram_rows,
        reference_what=f"{type(final).__name__} outputs",
    )


def package_onnx(
    onnx_bytes: bytes,
    output_name: str,
    reference: Callable[[np.ndarray], np.ndarray],
    *,
    name: str,
    version: int,
    task: Task,
    classes: Sequence[str],
    feature_spec: FeatureSpec,
    X_train: npt.ArrayLike,
    X_reference: npt.ArrayLike,
    created_at_ms: int,
    train_window: tuple[int, int] | None = None,
    holdout_metrics: Mapping[str, float] | None = None,
    reference_rows: int = MAX_REFERENCE_ROWS,
    max_mismatch_fraction: float = 0.001,
    max_histogram_rows: int = 100_000,
    reference_what: str = "reference outputs",
) -> Bundle:
    """Package a served ONNX graph (input :data:`INPUT_NAME`, a float32 (n, k) matrix;
    ``output_name`` gives probabilities (n, len(classes)) or values) as a bundle, after
    the safety scan and the reference-batch check: the graph must agree with
    ``reference`` (the model it came from, called on float64 ``X_reference``) as
    :func:`build_bundle` says."""
    n_features = len(feature_spec.fields)
    xr = np.ascontiguousarray(X_reference, dtype=np.float32)
    xt = np.ascontiguousarray(X_train, dtype=np.float32)
    for label, arr in (("X_reference", xr), ("X_train", xt)):
        if arr.ndim != 2 or arr.shape[1] != n_features or arr.shape[0] == 0:
            raise ValueError(f"{label} must be a non-empty (n, {n_features}) matrix")
    is_clf = task is Task.CLASSIFICATION
    classes = tuple(classes)
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
    # The Python model sees the original (float64) values, as it was trained on them;
    # ONNX sees them cast to float32, as workers feed it. Comparing against the model on
    # float32-*rounded* inputs would be wrong: tree thresholds often sit exactly on a
    # training value, which rounding can push to the other side.
    ref = np.asarray(reference(np.asarray(X_reference, dtype=np.float64)), dtype=np.float64)
    if not np.isfinite(ref).all():
        raise NonFiniteOutputError(f"estimator {name} gives non-finite outputs")
    compare_outputs(task, raw_outputs(onnx_out), ref, reference_what, max_mismatch_fraction)

    hist_x = xt[:max_histogram_rows]
    feats = {f.name: compute_histogram(hist_x[:, i]) for i, f in enumerate(feature_spec.fields)}
    score_hist = compute_histogram(model.predict(hist_x).score())
    meta = replace(
        provisional,
        reference_distributions=ReferenceDistributions(MappingProxyType(feats), score_hist),
    )
    expected = raw_outputs(onnx_out)[:n_ref]
    return Bundle(meta, onnx_bytes, xr[:n_ref], expected, output_name)
