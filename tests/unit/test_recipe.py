"""The training recipe runner: estimators by import path with params, the user's own fit
function on the training frame, and a typed error naming the path for each mistake."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamscore.cli import main
from streamscore.core.errors import ConfigError
from streamscore.core.records import Task
from streamscore.models.container import decode_bundle
from streamscore.models.convert import build_bundle
from streamscore.models.runtime import load_bundle
from streamscore.train.recipe import (
    ModelRecipe,
    RecipeImportError,
    RecipeNotCallableError,
    RecipeParamsError,
    RecipeResultError,
    fit_recipe,
    make_estimator,
    recipe_from,
    resolve,
    training_frame,
)

from .test_model_families import COUNTRIES, SPEC, matrix, target

pytestmark = pytest.mark.usefixtures("one_thread")

FITS = "tests.unit.recipe_fits"


def data(n: int = 600, seed: int = 0, *, nan: bool = True) -> tuple[np.ndarray, np.ndarray]:
    x = matrix(n, seed, nan=nan)
    y = target(x, seed)
    return x, np.where(y > np.median(y), "fraud", "ok")


def bundle_of(fitted: Any, x: np.ndarray) -> Any:
    return build_bundle(
        fitted.estimator,
        classes=fitted.classes,
        name="r",
        version=1,
        feature_spec=SPEC,
        X_train=x,
        X_reference=x[:200],
        created_at_ms=1,
    )


# ------------------------------------------------------------------- import paths


def test_resolve_class_and_function_paths() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    assert resolve("sklearn.ensemble.HistGradientBoostingClassifier") is (
        HistGradientBoostingClassifier
    )
    assert resolve(f"{FITS}:by_position").__name__ == "by_position"
    assert resolve("sklearn.ensemble:HistGradientBoostingClassifier.fit") is (
        HistGradientBoostingClassifier.fit
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nosuchpkg.models.Thing", "cannot import module 'nosuchpkg.models'"),
        ("sklearn.ensemble.NoSuchBoosting", "'sklearn.ensemble' has no attribute 'NoSuchBoosting'"),
        (f"{FITS}:missing", "has no attribute 'missing'"),
        (
            "tests.unit.recipe_broken:fit",
            "importing 'tests.unit.recipe_broken' failed: RuntimeError: boom while importing",
        ),
        ("not a path", "is not an import path"),
        ("LogisticRegression", "is not an import path"),
    ],
)
def test_bad_import_paths_name_the_path(path: str, message: str) -> None:
    with pytest.raises(RecipeImportError, match=message) as err:
        resolve(path)
    assert err.value.path == path and err.value.field == path
    assert path in str(err.value) or "is not an import path" in message
    assert isinstance(err.value, ConfigError)


def test_estimator_class_with_params() -> None:
    est = make_estimator("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 7})
    assert est.max_iter == 7
    with pytest.raises(RecipeParamsError, match="HistGradientBoostingClassifier refuses") as err:
        make_estimator("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iters": 7})
    assert err.value.path == "sklearn.ensemble.HistGradientBoostingClassifier"
    with pytest.raises(RecipeNotCallableError, match=r"math\.pi is a float"):
        make_estimator("math.pi")
    with pytest.raises(RecipeNotCallableError, match=r"no fit\(\)"):
        make_estimator("collections.OrderedDict")


def test_recipe_from_flags_then_project_file() -> None:
    configured = SimpleNamespace(
        estimator="sklearn.linear_model.Ridge", params=MappingProxyType({"alpha": 2.0}), fit=None
    )
    assert recipe_from(None, None, None, configured) == ModelRecipe(
        "sklearn.linear_model.Ridge", MappingProxyType({"alpha": 2.0})
    )
    flags = recipe_from("sklearn.linear_model.Lasso", '{"alpha": 0.5}', None, configured)
    assert flags is not None and flags.estimator == "sklearn.linear_model.Lasso"
    assert dict(flags.params) == {"alpha": 0.5}
    assert recipe_from(None, None, f"{FITS}:by_position") == ModelRecipe(fit=f"{FITS}:by_position")
    assert recipe_from(None, None, None, None) is None
    with pytest.raises(ConfigError, match="--params is not JSON"):
        recipe_from("a.B", "{max_iter=3}", None)
    with pytest.raises(ConfigError, match="must be a JSON object"):
        recipe_from("a.B", "[1]", None)
    with pytest.raises(ConfigError, match="exactly one of estimator or fit"):
        recipe_from("a.B", None, "a:b")
    with pytest.raises(ConfigError, match="--params goes with --estimator"):
        recipe_from(None, '{"a": 1}', None)


# ------------------------------------------------------------------ the runner


def test_estimator_recipe_fits_on_label_codes_and_serves_label_names() -> None:
    x, y = data()
    recipe = ModelRecipe("xgboost.XGBClassifier", MappingProxyType({"n_estimators": 15}))
    fitted = fit_recipe(recipe, x, y, SPEC, Task.CLASSIFICATION)
    assert fitted.classes == ("fraud", "ok")
    model = load_bundle(bundle_of(fitted, x))
    assert model.meta.classes == ("fraud", "ok")
    out = model.predict(x[:100])
    assert out.labels is not None
    assert (out.labels == y[:100]).mean() > 0.7  # it learnt something, under its names


def test_estimator_recipe_regression() -> None:
    x, _ = data(nan=False)
    y = target(x, 0)
    recipe = ModelRecipe(
        "sklearn.ensemble.HistGradientBoostingRegressor", MappingProxyType({"max_iter": 20})
    )
    fitted = fit_recipe(recipe, x, y, SPEC, Task.REGRESSION)
    assert fitted.classes is None
    out = load_bundle(bundle_of(fitted, x)).predict(x[:50]).values
    assert out is not None
    np.testing.assert_allclose(out, fitted.estimator.predict(x[:50]), rtol=1e-4, atol=1e-3)


def test_the_training_frame_contract() -> None:
    x, y = data(50)
    frame = training_frame(x, y, SPEC, Task.CLASSIFICATION, label="is_fraud")
    assert list(frame.columns) == [*SPEC.names, "is_fraud"]
    assert all(str(frame[n].dtype) == "float64" for n in SPEC.names)
    np.testing.assert_array_equal(frame[list(SPEC.names)].to_numpy(), x)
    assert frame["is_fraud"].tolist() == y.tolist()
    info = frame.attrs["streamscore"]
    assert info["features"] == list(SPEC.names) and info["label"] == "is_fraud"
    assert info["categorical"] == [2] and info["numeric"] == [0, 1, 3]
    assert info["categories"] == {"country": list(COUNTRIES)}
    assert info["task"] == "classification"
    with pytest.raises(ConfigError, match="has the name of a feature"):
        training_frame(x, y, SPEC, Task.CLASSIFICATION, label="amount")


def test_fit_function_with_column_transformer_by_position() -> None:
    x, y = data()
    fitted = fit_recipe(ModelRecipe(fit=f"{FITS}:by_position"), x, y, SPEC, Task.CLASSIFICATION)
    assert fitted.classes is None  # its classes_ are the labels themselves
    model = load_bundle(bundle_of(fitted, x))
    fresh, _ = data(200, 5)
    probs = model.predict(fresh).probabilities
    np.testing.assert_allclose(probs, fitted.estimator.predict_proba(fresh), atol=1e-4)


def test_fit_function_fitted_on_the_frame_serves_the_matrix() -> None:
    x, y = data(nan=False)
    fitted = fit_recipe(ModelRecipe(fit=f"{FITS}:on_the_frame"), x, y, SPEC, Task.CLASSIFICATION)
    assert list(fitted.estimator.feature_names_in_) == list(SPEC.names)
    model = load_bundle(bundle_of(fitted, x))
    assert model.predict(x[:10]).probabilities is not None


def test_fit_function_returning_label_codes() -> None:
    x, y = data()
    fitted = fit_recipe(ModelRecipe(fit=f"{FITS}:xgboost_codes"), x, y, SPEC, Task.CLASSIFICATION)
    assert fitted.classes == ("fraud", "ok")


@pytest.mark.parametrize(
    ("name", "task", "error", "message"),
    [
        ("unfitted", Task.CLASSIFICATION, RecipeResultError, "unfitted LogisticRegression"),
        ("returns_none", Task.CLASSIFICATION, RecipeResultError, "returned NoneType, not a fitted"),
        ("by_name", Task.CLASSIFICATION, RecipeResultError, "cannot score the \\(4-column\\)"),
        ("regressor", Task.CLASSIFICATION, RecipeResultError, "made a regressor, but the task"),
        ("NOT_A_FUNCTION", Task.CLASSIFICATION, RecipeNotCallableError, "is a int, not a func"),
    ],
)
def test_fit_function_mistakes(name: str, task: Task, error: type, message: str) -> None:
    x, y = data(200, nan=False)
    if name == "regressor":
        y = target(x, 0).astype(str)
    path = f"{FITS}:{name}"
    with pytest.raises(error, match=message) as err:
        fit_recipe(ModelRecipe(fit=path), x, y, SPEC, task)
    assert err.value.path == path and path in str(err.value)


def test_estimator_that_cannot_fit_the_labels() -> None:
    x, y = data(100)
    with pytest.raises(RecipeParamsError, match=r"fitting sklearn\.linear_model\.LogisticRegr"):
        fit_recipe(  # NaNs: LogisticRegression has no imputer
            ModelRecipe("sklearn.linear_model.LogisticRegression"), x, y, SPEC, Task.CLASSIFICATION
        )


# ------------------------------------------------------------------------ CLI


def _write(tmp_path: Path, n: int = 400) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    x, y = data(n, 3, nan=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC.to_dict()))
    csv_path = tmp_path / "train.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*SPEC.names, "is_fraud"])
        for row, label in zip(x.tolist(), y.tolist(), strict=True):
            w.writerow([*row, label])
    return spec, csv_path, x, y


def test_cli_model_build_with_estimator_and_params(tmp_path: Path) -> None:
    spec, csv_path, x, y = _write(tmp_path)
    out = tmp_path / "m.ssb"
    rc = main(
        [
            "model", "build", "--estimator", "sklearn.ensemble.HistGradientBoostingClassifier",
            "--params", '{"max_iter": 25}', "--spec", str(spec), "--data", str(csv_path),
            "--label", "is_fraud", "--name", "payments", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    model = load_bundle(decode_bundle(out.read_bytes()))
    assert model.meta.name == "payments" and model.meta.classes == ("fraud", "ok")
    labels = model.predict(x).labels
    assert labels is not None and (labels == y).mean() > 0.75


def test_cli_model_build_with_fit_function(tmp_path: Path) -> None:
    spec, csv_path, _, _ = _write(tmp_path)
    out = tmp_path / "m.ssb"
    args = ["model", "build", "--name", "m", "--fit", f"{FITS}:by_position", "--spec", str(spec)]
    args += ["--data", str(csv_path), "--label", "is_fraud", "--out", str(out)]
    assert main(args) == 1  # a fit function needs the task
    assert main([*args, "--task", "classification"]) == 0
    assert load_bundle(decode_bundle(out.read_bytes())).meta.classes == ("fraud", "ok")


def test_cli_bad_import_path_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, csv_path, _, _ = _write(tmp_path, 50)
    rc = main(
        [
            "model", "build", "--name", "m",
            "--estimator", "sklearn.ensembel.HistGradientBoostingClassifier",
            "--spec", str(spec), "--data", str(csv_path), "--label", "is_fraud",
            "--out", str(tmp_path / "x"),
        ]
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "RecipeImportError" in err and "sklearn.ensembel.HistGradientBoostingClassifier" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------ streamscore train


@pytest.mark.parametrize(
    "estimator",
    [
        ModelRecipe("xgboost.XGBRegressor"),
        ModelRecipe("lightgbm.LGBMRegressor", MappingProxyType({"n_estimators": 40})),
        ModelRecipe(fit=f"{FITS}:regressor"),
    ],
    ids=["import-path", "recipe-with-params", "fit-function"],
)
def test_retrain_runs_the_recipe(estimator: ModelRecipe) -> None:
    from streamscore.dev import synthetic
    from streamscore.train.training import retrain

    from .test_train import T0, rows

    res = retrain(
        rows(800), synthetic.spec_abc(), current=None, name="r", version=1, recipe=estimator
    )
    assert res.decision.publish and res.n_train == 640
    model = load_bundle(res.bundle)
    assert model.meta.feature_spec.names == ("a", "b", "c")
    # y = 10a + 3b + c has a spread of ~60 (predicting the mean: MAE ~48); trees get ~3
    assert res.comparison.candidate["mae"] < 6.0
    assert res.train_window[0] == T0


def test_cli_model_build_from_the_project_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No source flag: the project file's [[features]], [labels] and [train] say it all
    (the parsed shape agreed in issue 12: features, labels.task.task, labels.label_field,
    train.model_name/estimator/params/fit)."""

    _, csv_path, x, y = _write(tmp_path)
    config = tmp_path / "streamscore.toml"
    config.write_text(
        f"""
[[features]]
name = "amount"
min = 0.0
max = 10000.0

[[features]]
name = "n_items"
missing = "impute"

[[features]]
name = "country"
kind = "categorical"
categories = {json.dumps(list(COUNTRIES))}

[[features]]
name = "is_new_device"
min = 0.0
max = 1.0

[labels]
topic = "chargebacks"
id_field = "payment_id"
label_field = "is_fraud"
task = "binary"

[train]
model_name = "payments"
estimator = "lightgbm.LGBMClassifier"
params = {{ n_estimators = 20, verbose = -1 }}
"""
    )
    monkeypatch.setenv("STREAMSCORE_CONFIG", str(config))
    out = tmp_path / "m.ssb"
    assert main(["model", "build", "--data", str(csv_path), "--out", str(out)]) == 0
    model = load_bundle(decode_bundle(out.read_bytes()))
    assert model.meta.name == "payments" and model.meta.classes == ("fraud", "ok")
    assert model.meta.feature_spec == SPEC
    labels = model.predict(x).labels
    assert labels is not None and (labels == y).mean() > 0.75
