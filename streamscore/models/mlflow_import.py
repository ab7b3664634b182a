"""An MLflow model as a served model (optional extra ``[mlflow]``).

The model is named by an MLflow URI (``models:/name@alias``, ``models:/name/3``,
``runs:/<run id>/model``) resolved against the tracking/registry URI (a ``file:///...``
directory or a server; default MLflow's own, ``MLFLOW_TRACKING_URI``), or by a
local model directory (one holding an ``MLmodel`` file). Its flavour decides:

* ``onnx``: the ONNX file is read as bytes and goes through
  :mod:`streamscore.models.onnx_import` (nothing is unpickled);
* ``sklearn``: the estimator is loaded with ``mlflow.sklearn.load_model`` (a pickle: the
  user's own, loaded here, in the build step only; workers load only the ONNX) and
  converted like any scikit-learn model (:func:`~streamscore.models.convert.build_bundle`).

A URI that does not resolve raises :class:`MlflowModelNotFoundError`; a flavour neither
of the two raises :class:`~streamscore.models.convert.UnsupportedModelError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import ConfigError
from ..core.records import FeatureSpec
from ..core.redact import redact_urls
from .container import Bundle
from .convert import UnsupportedModelError, build_bundle
from .onnx_import import OnnxModelSpec, bundle_from_onnx

__all__ = ["MlflowModelNotFoundError", "bundle_from_mlflow", "local_model_dir"]

SUPPORTED_FLAVORS = ("onnx", "sklearn")


class MlflowModelNotFoundError(ConfigError):
    """The MLflow URI names no model (unknown registered model, alias, version or run, or
    a directory without an ``MLmodel`` file)."""

    reason = "mlflow_model_not_found"


@contextlib.contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """Use ``uri`` as MLflow's tracking and registry URI for the duration."""
    if uri is None:
        yield
        return
    import mlflow

    before, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        mlflow.set_registry_uri(before_registry)


def local_model_dir(uri: str, tracking_uri: str | None = None) -> Path:
    """The local directory of the model ``uri`` (downloaded into MLflow's temporary
    directory when it is not already local)."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise ConfigError(
            "MLflow models need the extra: pip install 'streamscore[mlflow]'"
        ) from exc
    shown = redact_urls(uri)
    local = (
        Path(uri.removeprefix("file://")) if "://" not in uri or uri.startswith("file://") else None
    )
    if local is not None and not uri.startswith(("models:", "runs:")):
        if not (local / "MLmodel").is_file():
            raise MlflowModelNotFoundError(f"{shown}: no MLflow model directory (no MLmodel file)")
        return local
    try:
        with _tracking(tracking_uri):
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except (MlflowException, OSError) as exc:
        where = "" if tracking_uri is None else f" in {redact_urls(tracking_uri)}"
        raise MlflowModelNotFoundError(
            f"MLflow model {shown} not found{where}: {redact_urls(str(exc))[:300]}"
        ) from exc
    found = Path(path)
    if not (found / "MLmodel").is_file():
        raise MlflowModelNotFoundError(f"{shown} is not an MLflow model (no MLmodel file)")
    return found


def _flavors(model_dir: Path) -> Mapping[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MlflowModelNotFoundError(f"cannot read {model_dir / 'MLmodel'}: {exc}") from exc
    flavors = doc.get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict):
        raise MlflowModelNotFoundError(f"{model_dir / 'MLmodel'} lists no flavors")
    return flavors


def bundle_from_mlflow(
    uri: str,
    spec: OnnxModelSpec | FeatureSpec,
    X: npt.ArrayLike,
    *,
    name: str,
    version: int,
    created_at_ms: int,
    tracking_uri: str | None = None,
) -> Bundle:
    """A bundle from the MLflow model ``uri`` (module doc), with its feature spec and a
    sample of inputs ``X``. For the sklearn flavour a feature spec is enough: the task and
    classes are the estimator's (``spec.classes``, when given, renames them); the onnx
    flavour needs the model's description too (an :class:`OnnxModelSpec`)."""
    model_dir = local_model_dir(uri, tracking_uri)
    flavors = _flavors(model_dir)
    x = np.asarray(X, dtype=np.float64)
    if "onnx" in flavors:
        if not isinstance(spec, OnnxModelSpec):
            raise ConfigError(
                f"{redact_urls(uri)} is an ONNX model: its spec needs the task (and a "
                "classifier's classes): a --spec file with them, or --task and --classes"
            )
        data = flavors["onnx"].get("data", "model.onnx")
        onnx_path = (model_dir / str(data)).resolve()
        if model_dir.resolve() not in onnx_path.parents:
            raise MlflowModelNotFoundError(f"{uri}: the onnx flavour points outside its model")
        return bundle_from_onnx(
            onnx_path.read_bytes(),
            spec,
            x,
            name=name,
            version=version,
            created_at_ms=created_at_ms,
        )
    if "sklearn" in flavors:
        import mlflow.sklearn

        est = mlflow.sklearn.load_model(str(model_dir))
        described = spec if isinstance(spec, OnnxModelSpec) else None
        features = spec.features if isinstance(spec, OnnxModelSpec) else spec
        return build_bundle(
            est,
            name=name,
            version=version,
            feature_spec=features,
            X_train=x,
            X_reference=x[: min(len(x), 1000)],
            created_at_ms=created_at_ms,
            classes=None if described is None else (described.classes or None),
        )
    raise UnsupportedModelError(
        f"the MLflow model {redact_urls(uri)} (flavours {sorted(flavors)})",
        f"streamscore reads the {' and '.join(SUPPORTED_FLAVORS)} flavours",
    )
