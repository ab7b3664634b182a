"""The training recipe, executed: which estimator to fit, or the user's own ``fit``
function, and the checks on what comes back. Runs only where training runs (``streamscore
train``, ``streamscore model build``): a worker never imports the user's code, it loads
only the ONNX graph the build step converted.

A recipe names either

* an **estimator class** by import path, with keyword parameters:
  ``estimator = "sklearn.ensemble.HistGradientBoostingClassifier"``,
  ``params = { max_iter = 200 }``. It is instantiated with the parameters and fitted on
  the feature matrix (``est.fit(X, y)``); or
* a **fit function** ``"package.module:function"`` (the module must be importable where
  training runs) called with the **training frame** (:func:`training_frame`); it returns a
  fitted scikit-learn estimator or Pipeline (an XGBoost/LightGBM scikit-learn model is
  one).

The training frame contract (what a ``fit`` function receives):

* a :class:`pandas.DataFrame`, one row per labelled event, in event-time order;
* one ``float64`` column per feature, named as the feature and in the model's input order
  (the feature spec's order): numeric features as numbers, **booleans as 0.0/1.0,
  categoricals as the category's index in the feature's ``categories``** (a float), NaN
  where a value is missing and the feature's policy imputes NaN: exactly the matrix the
  worker feeds the model;
* then the label column, named :data:`LABEL_COLUMN` unless another name is given (the
  project file's ``[labels] label_field``): numbers for regression, strings for
  classification;
* ``frame.attrs["streamscore"]``: ``{"features": [...], "label": name, "task":
  "classification" | "regression", "numeric": [positions], "categorical": [positions],
  "boolean": [positions], "categories": {name: [...]}}``: the integer column positions are
  what a ``ColumnTransformer`` should select, because

the returned model is served on the **float matrix** (no column names): it must accept a
``(n, k)`` array in the frame's feature order. Select columns by position in a
``ColumnTransformer`` (by name works only on a DataFrame). :func:`fit_recipe` checks this
by predicting on the training matrix, and raises :class:`RecipeResultError` if it fails.

Every failure is a typed :class:`RecipeError` naming the import path: the module cannot be
imported (:class:`RecipeImportError`), the name is not callable
(:class:`RecipeNotCallableError`), the parameters do not fit the class
(:class:`RecipeParamsError`), or the function returns something that is not a fitted
estimator (:class:`RecipeResultError`).
"""

from __future__ import annotations

import importlib
import json
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..core.errors import ConfigError
from ..core.records import FeatureKind, FeatureSpec, Task

if TYPE_CHECKING:
    from ..models.container import Bundle

__all__ = [
    "LABEL_COLUMN",
    "FittedModel",
    "ModelRecipe",
    "RecipeError",
    "RecipeImportError",
    "RecipeNotCallableError",
    "RecipeParamsError",
    "RecipeResultError",
    "fit_recipe",
    "make_estimator",
    "recipe_from",
    "resolve",
    "training_frame",
]

#: the label column of the training frame, when no other name is given
LABEL_COLUMN = "label"

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_CLASS_PATH = re.compile(rf"({_DOTTED})\.([A-Za-z_][A-Za-z0-9_]*)\Z")
_FUNCTION_PATH = re.compile(rf"({_DOTTED}):({_DOTTED})\Z")


class RecipeError(ConfigError):
    """The training recipe cannot be carried out; ``path`` is the import path at fault."""

    reason = "recipe"

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, field=path)
        self.path = path


class RecipeImportError(RecipeError):
    """The import path is malformed, its module cannot be imported, or it has no such
    attribute."""

    reason = "recipe_import"


class RecipeNotCallableError(RecipeError):
    """The import path names something that cannot be called."""

    reason = "recipe_not_callable"


class RecipeParamsError(RecipeError):
    """The estimator class refuses the recipe's parameters, or fitting it failed."""

    reason = "recipe_params"


class RecipeResultError(RecipeError):
    """The ``fit`` function returned something that is not a fitted estimator, or one
    that cannot score the feature matrix."""

    reason = "recipe_result"


@dataclass(frozen=True)
class ModelRecipe:
    """The part of the project file's ``[train]`` recipe that says how to make the model:
    exactly one of ``estimator`` (a class's import path, with ``params``) or ``fit`` (a
    ``module:function`` path)."""

    estimator: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    fit: str | None = None

    def __post_init__(self) -> None:
        if (self.estimator is None) == (self.fit is None):
            raise ConfigError("a training recipe names exactly one of estimator or fit")
        if self.fit is not None and self.params:
            raise ConfigError(
                "params go with estimator; a fit function sets its own", field="params"
            )

    @property
    def path(self) -> str:
        """The import path this recipe runs."""
        path = self.estimator if self.estimator is not None else self.fit
        assert path is not None
        return path

    @classmethod
    def of(cls, recipe: Any) -> ModelRecipe:
        """From any object with ``estimator``, ``params`` and ``fit`` attributes (the
        project file's parsed ``[train]`` table)."""
        return cls(
            estimator=getattr(recipe, "estimator", None),
            params=MappingProxyType(dict(getattr(recipe, "params", None) or {})),
            fit=getattr(recipe, "fit", None),
        )


def resolve(path: str) -> Any:
    """The object an import path names: ``package.module.Name`` or
    ``package.module:name`` (the part after ``:`` may be dotted: ``mod:Class.method``)."""
    m = _FUNCTION_PATH.match(path) or _CLASS_PATH.match(path)
    if m is None:
        raise RecipeImportError(
            f"{path!r} is not an import path (expected package.module.Name or "
            "package.module:function)",
            path=path,
        )
    module_name, attr = m.group(1), m.group(2)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RecipeImportError(
            f"{path}: cannot import module {module_name!r} ({exc})", path=path
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise RecipeImportError(
            f"{path}: importing {module_name!r} failed: {type(exc).__name__}: {exc}",
            path=path,
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RecipeImportError(
                f"{path}: {module_name!r} has no attribute {attr!r}", path=path
            ) from None
    return obj


def make_estimator(path: str, params: Mapping[str, Any] | None = None) -> Any:
    """An unfitted estimator: the class at ``path`` called with ``params``."""
    cls = resolve(path)
    if not callable(cls):
        raise RecipeNotCallableError(
            f"{path} is a {type(cls).__name__}, not an estimator class", path=path
        )
    try:
        est = cls(**dict(params or {}))
    except TypeError as exc:
        raise RecipeParamsError(f"{path} refuses the parameters: {exc}", path=path) from exc
    if not callable(getattr(est, "fit", None)):
        raise RecipeNotCallableError(
            f"{path} makes a {type(est).__name__} with no fit()", path=path
        )
    return est


def training_frame(
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    spec: FeatureSpec,
    task: Task,
    *,
    label: str = LABEL_COLUMN,
) -> Any:
    """The frame a ``fit`` function receives (module doc): the feature columns by name
    (the matrix ``X`` as serving builds it), then the label column ``label``."""
    import pandas as pd

    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(spec.fields):
        raise ValueError(f"X must be an (n, {len(spec.fields)}) matrix, got {x.shape}")
    if label in spec.names:
        raise ConfigError(f"the label column {label!r} has the name of a feature", field=label)
    frame = pd.DataFrame(x, columns=list(spec.names))
    labels = np.asarray(y)
    frame[label] = labels.astype(str) if task is Task.CLASSIFICATION else labels.astype(float)

    def positions(kind: str) -> list[int]:
        return [i for i, f in enumerate(spec.fields) if f.kind.value == kind]

    frame.attrs["streamscore"] = {
        "features": list(spec.names),
        "label": label,
        "task": task.value,
        "numeric": positions("numeric"),
        "categorical": positions(FeatureKind.CATEGORICAL.value),
        "boolean": positions("boolean"),
        "categories": {
            f.name: list(f.categories) for f in spec.fields if f.kind is FeatureKind.CATEGORICAL
        },
    }
    return frame


def _check_fitted(est: Any, path: str) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if est is None or not callable(getattr(est, "predict", None)):
        raise RecipeResultError(
            f"{path} returned {type(est).__name__}, not a fitted estimator or Pipeline "
            "(an object with predict())",
            path=path,
        )
    try:
        check_is_fitted(est)
    except NotFittedError:
        raise RecipeResultError(
            f"{path} returned an unfitted {type(est).__name__}: call fit() before returning it",
            path=path,
        ) from None
    except TypeError as exc:  # check_is_fitted refuses non-estimators
        raise RecipeResultError(
            f"{path} returned a {type(est).__name__}, not a scikit-learn compatible "
            f"estimator: {exc}",
            path=path,
        ) from None


def _check_serves_matrix(est: Any, x: np.ndarray, spec: FeatureSpec, path: str) -> None:
    names = getattr(est, "feature_names_in_", None)
    if names is not None and tuple(str(n) for n in names) != spec.names:
        raise RecipeResultError(
            f"{path} returned a model fitted on columns {list(names)}; it must take the "
            f"features {list(spec.names)} in that order",
            path=path,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "X does not have valid feature names"
            est.predict(x[: min(len(x), 16)])
    except Exception as exc:
        raise RecipeResultError(
            f"{path} returned a model that cannot score the ({x.shape[1]}-column) feature "
            f"matrix: {type(exc).__name__}: {exc}. Select ColumnTransformer columns by "
            "position (frame.attrs['streamscore'] lists them), not by name",
            path=path,
        ) from exc


@dataclass(frozen=True, eq=False)
class FittedModel:
    """What a recipe made: the fitted estimator and, for a classifier whose ``classes_``
    are label codes, the labels its probability columns stand for (else None: its own
    ``classes_``); pass both to :func:`~streamscore.models.convert.build_bundle`."""

    estimator: Any
    classes: tuple[str, ...] | None = None


def _class_names(est: Any, labels: np.ndarray, path: str) -> tuple[str, ...] | None:
    """None when the classifier's ``classes_`` are the labels themselves; the labels in
    sorted order (LabelEncoder's) when they are the codes 0..k-1 of the k labels."""
    own = [str(c) for c in _final(est).classes_]
    known = sorted({str(v) for v in labels.tolist()})
    if set(own) <= set(known):
        return None
    if own == [str(i) for i in range(len(known))]:
        return tuple(known)
    raise RecipeResultError(
        f"{path} returned a classifier of classes {own}, which are neither the labels "
        f"{known[:10]} nor their codes 0..{len(known) - 1} in sorted label order",
        path=path,
    )


def fit_recipe(
    recipe: ModelRecipe,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    spec: FeatureSpec,
    task: Task,
    *,
    label: str = LABEL_COLUMN,
) -> FittedModel:
    """Run the recipe on the training data; returns the fitted model, checked to be
    fitted, of the task, and to score the float matrix (module doc).

    An estimator class is fitted on the matrix; for classification on the label codes
    (0..k-1 in sorted label order, which every classifier accepts, XGBoost's too), the
    labels being returned as :attr:`FittedModel.classes`."""
    x = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y)
    path = recipe.path
    classes: tuple[str, ...] | None = None
    if recipe.estimator is not None:
        est = make_estimator(recipe.estimator, recipe.params)
        target = labels.astype(np.float64) if task is Task.REGRESSION else labels
        if task is Task.CLASSIFICATION:
            names, target = np.unique(labels.astype(str), return_inverse=True)
            classes = tuple(str(c) for c in names)
        try:
            est.fit(x, target)
        except (TypeError, ValueError) as exc:
            raise RecipeParamsError(
                f"fitting {path} failed: {type(exc).__name__}: {exc}", path=path
            ) from exc
    else:
        fn = resolve(path)
        if not callable(fn):
            raise RecipeNotCallableError(
                f"{path} is a {type(fn).__name__}, not a function", path=path
            )
        est = fn(training_frame(x, labels, spec, task, label=label))
    _check_fitted(est, path)
    is_clf = hasattr(_final(est), "classes_")
    if is_clf != (task is Task.CLASSIFICATION):
        raise RecipeResultError(
            f"{path} made a {'classifier' if is_clf else 'regressor'}, but the task is "
            f"{task.value}",
            path=path,
        )
    if is_clf and classes is None:
        classes = _class_names(est, labels, path)
    _check_serves_matrix(est, x, spec, path)
    return FittedModel(est, classes)


def _final(est: Any) -> Any:
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    return est


def recipe_from(
    estimator: str | None,
    params_json: str | None,
    fit: str | None,
    configured: Any = None,
) -> ModelRecipe | None:
    """The recipe flags give (``--estimator PATH [--params JSON]`` or ``--fit PATH``),
    else the project file's ``[train]`` (``configured``), else None."""
    if estimator is not None or fit is not None:
        params: Any = {}
        if params_json:
            try:
                params = json.loads(params_json)
            except ValueError as exc:
                raise ConfigError(f"--params is not JSON: {exc}", field="params") from None
            if not isinstance(params, dict):
                raise ConfigError("--params must be a JSON object", field="params")
        return ModelRecipe(estimator=estimator, params=MappingProxyType(params), fit=fit)
    if params_json:
        raise ConfigError("--params goes with --estimator", field="params")
    if configured is None:
        return None
    return ModelRecipe.of(configured)


def bundle_from_recipe(
    recipe: ModelRecipe,
    spec: FeatureSpec,
    data_path: Path,
    *,
    label: str,
    task: Task | None,
    name: str,
    version: int,
) -> Bundle:
    """Run the training recipe on a labelled CSV (``model publish --data``) and convert
    what it made. Without a ``task``, an estimator class's own kind decides (classifier
    or regressor)."""
    from sklearn.base import is_classifier

    from ..models.build import load_labelled
    from ..models.convert import build_bundle

    x, y = load_labelled(data_path, spec, label)
    if task is None:
        if recipe.estimator is None:
            raise ConfigError("a fit function needs the task: --task or [labels] task")
        clf = is_classifier(make_estimator(recipe.estimator, recipe.params))
        task = Task.CLASSIFICATION if clf else Task.REGRESSION
    if task is Task.REGRESSION:
        try:
            y = y.astype(np.float64)
        except ValueError as exc:
            raise ConfigError(f"{data_path}: regression labels must be numbers: {exc}") from None
    fitted = fit_recipe(recipe, x, y, spec, task, label=label)
    return build_bundle(
        fitted.estimator,
        name=name,
        version=version,
        feature_spec=spec,
        X_train=x,
        X_reference=x[-min(len(x), 1000) :],
        created_at_ms=int(time.time() * 1000),
        classes=fitted.classes,
    )
