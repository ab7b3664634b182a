"""Conversion of every supported model family: scikit-learn (alone, in Pipelines, with a
ColumnTransformer over the categorical index columns), XGBoost and LightGBM (through
onnxmltools), classification and regression. Each bundle must pass the reference-batch
check at build and at load, agree with the Python model on rows it was not built with,
and contain only allowed operator domains."""

from __future__ import annotations

import math
from typing import Any

import lightgbm
import numpy as np
import onnx
import pytest
import xgboost
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from streamscore.core.errors import ReferenceMismatchError
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, MissingPolicy, Task
from streamscore.models.convert import UnsupportedModelError, build_bundle
from streamscore.models.runtime import PROBA_ATOL, load_bundle
from streamscore.models.safety import ALLOWED_DOMAINS

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTRIES = ("FR", "DE", "IT", "ES")
#: column positions of the matrix below
NUMERIC, CATEGORICAL, BOOLEAN = [0, 1], [2], [3]

SPEC = FeatureSpec(
    (
        FeatureField("amount", minimum=0.0, maximum=1e4),
        FeatureField("n_items", missing=MissingPolicy.IMPUTE, impute_value=math.nan),
        FeatureField("country", FeatureKind.CATEGORICAL, categories=COUNTRIES),
        FeatureField("is_new_device", minimum=0.0, maximum=1.0),
    )
)


def matrix(n: int, seed: int, *, nan: bool) -> np.ndarray:
    """Model inputs as features/extract.py builds them: numbers, a category index (float),
    a boolean as 0/1, NaN where n_items is missing."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.gamma(2.0, 50.0, n),
            rng.integers(1, 10, n).astype(float),
            rng.integers(0, len(COUNTRIES), n).astype(float),
            rng.integers(0, 2, n).astype(float),
        ]
    )
    if nan:
        x[rng.random(n) < 0.1, 1] = np.nan
    return x


def target(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    items = np.nan_to_num(x[:, 1], nan=5.0)
    return (
        0.01 * x[:, 0]
        + 0.5 * items
        + 3.0 * (x[:, 2] == 1)
        - 2.0 * x[:, 3]
        + rng.normal(0, 0.5, len(x))
    )


def labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    edges = np.quantile(y, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(y, edges)


def one_hot(*, impute: bool = False, **kw: Any) -> ColumnTransformer:
    """One-hot over the category index column; the other columns imputed (median) or
    passed through. (An imputer goes inside the ColumnTransformer: skl2onnx cannot
    convert a SimpleImputer placed before one.)"""
    encoder = OneHotEncoder(categories=[list(range(len(COUNTRIES)))], **kw)
    rest = [i for i in range(len(SPEC.fields)) if i not in CATEGORICAL]
    others = [("num", SimpleImputer(strategy="median"), rest)] if impute else []
    return ColumnTransformer([("cat", encoder, CATEGORICAL), *others], remainder="passthrough")


#: families trained without missing values (no NaN support, or none its converter keeps)
NO_NAN = {"logistic", "random_forest"}

CLASSIFIERS = {
    "logistic": lambda: LogisticRegression(max_iter=500),
    "random_forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=15, random_state=0),
    "impute_scale_logistic": lambda: make_pipeline(
        SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=500)
    ),
    "onehot_logistic": lambda: Pipeline(
        [
            ("encode", one_hot(impute=True, handle_unknown="ignore")),
            ("model", LogisticRegression(max_iter=2000)),
        ]
    ),
    "ordinal_hgb": lambda: Pipeline(
        [
            (
                "encode",
                ColumnTransformer(
                    [("cat", OrdinalEncoder(), CATEGORICAL)], remainder="passthrough"
                ),
            ),
            ("model", HistGradientBoostingClassifier(max_iter=10, random_state=0)),
        ]
    ),
    "xgboost": lambda: xgboost.XGBClassifier(n_estimators=30, max_depth=4),
    "onehot_xgboost": lambda: Pipeline(
        [("encode", one_hot()), ("model", xgboost.XGBClassifier(n_estimators=20, max_depth=3))]
    ),
    "lightgbm": lambda: lightgbm.LGBMClassifier(
        n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1
    ),
    "onehot_lightgbm": lambda: Pipeline(
        [
            ("encode", one_hot()),
            ("model", lightgbm.LGBMClassifier(n_estimators=20, n_jobs=1, verbose=-1)),
        ]
    ),
}

REGRESSORS = {
    "ridge_imputed": lambda: make_pipeline(SimpleImputer(), Ridge()),
    "gradient_boosting": lambda: make_pipeline(
        SimpleImputer(), GradientBoostingRegressor(n_estimators=30, random_state=0)
    ),
    "onehot_ridge": lambda: Pipeline([("encode", one_hot(impute=True)), ("model", Ridge())]),
    "xgboost": lambda: xgboost.XGBRegressor(n_estimators=30, max_depth=4),
    "lightgbm": lambda: lightgbm.LGBMRegressor(
        n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1
    ),
}


def _check_domains(onnx_bytes: bytes) -> set[str]:
    model = onnx.load_model_from_string(onnx_bytes)
    domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
    assert domains <= ALLOWED_DOMAINS, domains
    return domains


def _build(est: Any, x: np.ndarray, **kw: Any) -> Any:
    return build_bundle(
        est,
        name="m",
        version=1,
        feature_spec=SPEC,
        X_train=x,
        X_reference=x[:300],
        created_at_ms=1,
        **kw,
    )


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_classifier_converts_and_agrees(family: str, n_classes: int) -> None:
    x = matrix(1000, 1, nan=family not in NO_NAN)
    y = labels(target(x, 1), n_classes)
    est = CLASSIFIERS[family]().fit(x, y)
    bundle = _build(est, x)
    _check_domains(bundle.onnx_bytes)
    assert bundle.meta.task is Task.CLASSIFICATION
    assert bundle.meta.classes == tuple(str(c) for c in range(n_classes))
    model = load_bundle(bundle)  # runs the reference batch again, as a worker does
    fresh = matrix(500, 99, nan=family not in NO_NAN)
    got = model.predict(fresh).probabilities
    assert got is not None
    want = est.predict_proba(fresh)
    close = np.isclose(got, want, atol=PROBA_ATOL, rtol=0).all(axis=1)
    assert close.mean() >= 0.995, f"{family}: {int((~close).sum())} rows differ"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.995


@pytest.mark.parametrize("family", sorted(REGRESSORS))
def test_regressor_converts_and_agrees(family: str) -> None:
    x = matrix(1500, 2, nan=True)
    y = target(x, 2)
    est = REGRESSORS[family]().fit(x, y)
    bundle = _build(est, x)
    _check_domains(bundle.onnx_bytes)
    assert bundle.meta.task is Task.REGRESSION
    model = load_bundle(bundle)
    fresh = matrix(500, 98, nan=True)
    got = model.predict(fresh).values
    assert got is not None
    want = est.predict(fresh)
    close = np.isclose(got, want, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(want).max()))
    assert close.mean() >= 0.995, f"{family}: max diff {np.abs(got - want).max()}"


def test_a_conversion_that_changes_the_answers_is_refused() -> None:
    """scikit-learn's random forest learns where NaNs go; its ONNX conversion does not
    keep that, and the reference-batch check refuses the bundle instead of serving it."""
    x = matrix(1500, 1, nan=True)
    est = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    est.fit(x, labels(target(x, 1), 2))
    with pytest.raises(ReferenceMismatchError, match="differ from the RandomForestClassifier"):
        _build(est, x)


def test_a_pipeline_skl2onnx_cannot_convert_names_itself() -> None:
    x = matrix(300, 1, nan=True)
    est = Pipeline([("impute", SimpleImputer()), ("encode", one_hot()), ("model", Ridge())]).fit(
        x, target(x, 1)
    )
    with pytest.raises(UnsupportedModelError, match=r"sklearn\.pipeline\.Pipeline.*Supported:"):
        _build(est, x)


def test_one_hot_sees_every_category_column() -> None:
    """The ColumnTransformer's one-hot columns do change the served output: a row that
    differs only in its category index scores differently, in ONNX as in scikit-learn."""
    x = matrix(1500, 3, nan=False)
    y = target(x, 3)
    est = Pipeline([("encode", one_hot()), ("model", Ridge())]).fit(x, y)
    model = load_bundle(_build(est, x))
    rows = np.repeat(x[:1], len(COUNTRIES), axis=0)
    rows[:, 2] = np.arange(len(COUNTRIES))
    got = model.predict(rows).values
    assert got is not None
    np.testing.assert_allclose(got, est.predict(rows), rtol=1e-4, atol=1e-4)
    assert got[1] - got[0] > 2.0  # country index 1 adds 3.0 to the target


def test_class_names_override_label_codes() -> None:
    """A classifier fitted on label codes (XGBoost needs them) serves the label names."""
    x = matrix(800, 4, nan=True)
    y = labels(target(x, 4), 3)
    est = xgboost.XGBClassifier(n_estimators=10).fit(x, y)
    bundle = _build(est, x, classes=("low", "mid", "high"))
    assert bundle.meta.classes == ("low", "mid", "high")
    out = load_bundle(bundle).predict(x[:50])
    assert out.labels is not None
    names = np.array(["low", "mid", "high"])
    assert (out.labels == names[est.predict(x[:50])]).all()
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        _build(est, x, classes=("a", "b"))


class _HandMade(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    def fit(self, X: Any, y: Any) -> _HandMade:
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.full(len(X), self.mean_)


def test_unconvertible_estimator_names_itself_and_what_is_supported() -> None:
    x = matrix(100, 5, nan=False)
    est = make_pipeline(StandardScaler(), _HandMade()).fit(x, target(x, 5))
    with pytest.raises(UnsupportedModelError) as err:
        _build(est, x)
    msg = str(err.value)
    assert "_HandMade" in msg
    assert "Supported:" in msg and "XGBoost" in msg and "LightGBM" in msg and "MLflow" in msg
    assert err.value.reason == "unsupported_model"


def test_not_a_scikit_learn_model_is_refused() -> None:
    x = matrix(50, 6, nan=False)
    with pytest.raises(UnsupportedModelError, match=r"builtins\.dict.*Supported:"):
        _build({"weights": [1, 2]}, x)
