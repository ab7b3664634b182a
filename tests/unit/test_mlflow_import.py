"""MLflow models (extra [mlflow]) against a local file-backed tracking directory, no
server: ``runs:/``, ``models:/name@alias``, ``models:/name/version`` and a local model
directory; the sklearn flavour (converted in the build step) and the onnx flavour (read as
bytes); a URI that names nothing is a typed error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import mlflow.sklearn
import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from streamscore.cli import main
from streamscore.core.errors import ConfigError
from streamscore.core.records import Task
from streamscore.models.container import decode_bundle
from streamscore.models.convert import UnsupportedModelError
from streamscore.models.mlflow_import import MlflowModelNotFoundError, bundle_from_mlflow
from streamscore.models.onnx_import import OnnxModelSpec
from streamscore.models.runtime import load_bundle

from .test_model_families import CATEGORICAL, SPEC, labels, matrix, target
from .test_onnx_import import FEATURES, forward, mlp, sample, softmax

pytestmark = pytest.mark.usefixtures("one_thread")

#: stated requirements: MLflow would otherwise infer them by loading the model again in a
#: subprocess, seconds per logged model
NO_INFERENCE = ["scikit-learn"]


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A file-backed MLflow tracking + registry directory, MLflow's globals restored
    (MLflow 3 refuses the file store unless MLFLOW_ALLOW_FILE_STORE is set)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    before, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(before)
        mlflow.set_registry_uri(before_registry)


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, np.ndarray]:
    from threadpoolctl import threadpool_limits

    x = matrix(800, 11, nan=False)
    y = labels(target(x, 11), 3)
    with threadpool_limits(limits=1):  # module scope: the one_thread fixture is not on yet
        est = Pipeline(
            [
                (
                    "encode",
                    ColumnTransformer(
                        [("c", OneHotEncoder(), CATEGORICAL)], remainder="passthrough"
                    ),
                ),
                ("model", LogisticRegression(max_iter=1000)),
            ]
        ).fit(x, y)
    return est, x


def _log_sklearn(est: Any, registered: str | None = None) -> str:
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            est, name="model", registered_model_name=registered, pip_requirements=NO_INFERENCE
        )
    return str(run.info.run_id)


def _check(bundle: Any, est: Any, x: np.ndarray) -> None:
    model = load_bundle(bundle)
    probs = model.predict(x[:100]).probabilities
    assert probs is not None
    np.testing.assert_allclose(probs, est.predict_proba(x[:100]), atol=1e-4)


def test_sklearn_flavour_by_run_alias_and_version(
    tracking: str, fitted: tuple[Any, np.ndarray]
) -> None:
    est, x = fitted
    run_id = _log_sklearn(est, registered="churn")
    MlflowClient().set_registered_model_alias("churn", "champion", "1")
    spec = SPEC  # only the features: task and classes are the estimator's
    for uri in (f"runs:/{run_id}/model", "models:/churn@champion", "models:/churn/1"):
        b = bundle_from_mlflow(
            uri, spec, x, name="churn", version=1, created_at_ms=1, tracking_uri=tracking
        )
        assert b.meta.task is Task.CLASSIFICATION and b.meta.classes == ("0", "1", "2")
        _check(b, est, x)


def test_local_model_directory_and_class_names(
    tmp_path: Path, fitted: tuple[Any, np.ndarray]
) -> None:
    est, x = fitted
    # cloudpickle, as MLflow 2 saved them (MLflow 3's default is skops)
    mlflow.sklearn.save_model(
        est,
        str(tmp_path / "saved"),
        serialization_format="cloudpickle",
        pip_requirements=NO_INFERENCE,
    )
    spec = OnnxModelSpec(SPEC, Task.CLASSIFICATION, ("low", "mid", "high"))
    b = bundle_from_mlflow(str(tmp_path / "saved"), spec, x, name="m", version=2, created_at_ms=1)
    assert b.meta.classes == ("low", "mid", "high")
    _check(b, est, x)


def test_onnx_flavour(tracking: str) -> None:
    model, w = mlp(3)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            model, name="net", registered_model_name="net", pip_requirements=NO_INFERENCE
        )
    assert isinstance(onnx.load_model_from_string(model.SerializeToString()), onnx.ModelProto)
    spec = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("a", "b", "c"), output_kind="logits")
    x = sample()
    for uri in (info.model_uri, "models:/net/1"):
        b = bundle_from_mlflow(
            uri, spec, x, name="net", version=1, created_at_ms=1, tracking_uri=tracking
        )
        probs = load_bundle(b).predict(x[:30]).probabilities
        assert probs is not None
        np.testing.assert_allclose(probs, softmax(forward(x[:30], w)), atol=1e-5)


@pytest.mark.parametrize(
    "uri", ["models:/nobody@champion", "models:/nobody/3", "runs:/0123456789abcdef/model"]
)
def test_uri_that_names_nothing(tracking: str, uri: str) -> None:
    with pytest.raises(MlflowModelNotFoundError, match=f"MLflow model {uri} not found") as err:
        bundle_from_mlflow(
            uri, OnnxModelSpec(SPEC), matrix(10, 0, nan=False), name="m", version=1,
            created_at_ms=1, tracking_uri=tracking,
        )  # fmt: skip
    assert err.value.reason == "mlflow_model_not_found"


def test_unknown_alias_of_a_known_model(tracking: str, fitted: tuple[Any, np.ndarray]) -> None:
    est, x = fitted
    _log_sklearn(est, registered="known")
    with pytest.raises(MlflowModelNotFoundError, match="models:/known@nope"):
        bundle_from_mlflow(
            "models:/known@nope", OnnxModelSpec(SPEC), x, name="m", version=1, created_at_ms=1,
            tracking_uri=tracking,
        )  # fmt: skip


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(MlflowModelNotFoundError, match="no MLmodel file"):
        bundle_from_mlflow(
            str(tmp_path), OnnxModelSpec(SPEC), matrix(10, 0, nan=False), name="m", version=1,
            created_at_ms=1,
        )  # fmt: skip


def test_other_flavours_are_unsupported(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    with pytest.raises(UnsupportedModelError, match=r"flavours \['python_function'\].*onnx"):
        bundle_from_mlflow(
            str(tmp_path), OnnxModelSpec(SPEC), matrix(10, 0, nan=False), name="m", version=1,
            created_at_ms=1,
        )  # fmt: skip


def test_cli_model_build_from_mlflow(
    tracking: str, tmp_path: Path, fitted: tuple[Any, np.ndarray]
) -> None:
    import json

    est, x = fitted
    _log_sklearn(est, registered="cli")
    MlflowClient().set_registered_model_alias("cli", "prod", "1")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC.to_dict()))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "m.ssb"
    rc = main(
        [
            "model", "build", "--mlflow", "models:/cli@prod", "--mlflow-tracking-uri", tracking,
            "--spec", str(tmp_path / "spec.json"), "--data", str(tmp_path / "x.npy"),
            "--name", "cli", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    _check(decode_bundle(out.read_bytes()), est, x)


def test_onnx_flavour_needs_its_description(tracking: str) -> None:
    model, _ = mlp(3)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(model, name="net", pip_requirements=NO_INFERENCE)
    with pytest.raises(ConfigError, match="is an ONNX model: its spec needs the task"):
        bundle_from_mlflow(
            info.model_uri, FEATURES, sample(), name="n", version=1, created_at_ms=1,
            tracking_uri=tracking,
        )  # fmt: skip
