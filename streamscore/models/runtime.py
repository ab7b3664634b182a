"""The model at run time: a verified bundle behind an onnxruntime session.

:func:`verify_and_load` is the one way a worker gets a model: it checks size, signature
(:func:`~streamscore.models.container.verify_signature`), container
(:func:`~streamscore.models.container.decode_bundle`), graph safety
(:func:`~streamscore.models.safety.check_onnx_safety`), the ONNX checker, builds the
onnxruntime session and runs :meth:`LoadedModel.self_check` (the bundle's reference batch
must give the outputs it was published with) before returning, so nothing unchecked is
ever swapped in. :class:`LoadedModel.predict` scores a matrix in one onnxruntime call and
returns a :class:`ScoreBatch`.

This module never imports ``confluent_kafka``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import (
    BundleDecodeError,
    BundleTooLargeError,
    ModelError,
    NonFiniteOutputError,
    ReferenceMismatchError,
)
from ..core.records import Task
from .container import (
    DEFAULT_MAX_BUNDLE_BYTES,
    INPUT_NAME,
    Bundle,
    decode_bundle,
    verify_signature,
)
from .safety import check_onnx_safety
from .signing import Verifier

__all__ = [
    "LoadedModel",
    "PredictFailedError",
    "ScoreBatch",
    "compare_outputs",
    "load_bundle",
    "open_session",
    "raw_outputs",
    "verify_and_load",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Tolerances for the reference batch check at load (ONNX vs ONNX, same graph).
PROBA_ATOL = 1e-4
VALUE_RTOL = 1e-4
VALUE_ATOL = 1e-4  # multiplied by max(1, max |expected|)


class PredictFailedError(ModelError):
    """onnxruntime raised while scoring a batch (defined here; candidate for errors.py)."""

    reason = "predict_failed"


@dataclass(frozen=True, slots=True, eq=False)
class ScoreBatch:
    """The outputs of one model call. Regressors fill ``values``; classifiers fill
    ``labels`` (str, argmax of the probabilities) and ``probabilities`` (n, k) ordered as
    ``classes``."""

    task: Task
    values: FloatArray | None = None
    labels: npt.NDArray[np.str_] | None = None
    probabilities: FloatArray | None = None
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        if self.values is not None:
            return int(self.values.shape[0])
        assert self.probabilities is not None
        return int(self.probabilities.shape[0])

    def score(self) -> FloatArray:
        """One number per row for drift and histograms: the regressor value; for a binary
        classifier the probability of ``classes[1]`` (the positive class), for a
        multiclass classifier the max probability."""
        if self.task is Task.REGRESSION:
            assert self.values is not None
            return self.values
        assert self.probabilities is not None
        if self.probabilities.shape[1] == 2:
            return self.probabilities[:, 1]
        out: FloatArray = self.probabilities.max(axis=1)
        return out

    def finite_mask(self) -> BoolArray:
        """True for rows whose outputs are all finite."""
        if self.task is Task.REGRESSION:
            assert self.values is not None
            return np.asarray(np.isfinite(self.values), dtype=np.bool_)
        assert self.probabilities is not None
        return np.asarray(np.isfinite(self.probabilities).all(axis=1), dtype=np.bool_)

    def compatible_with(self, other: ScoreBatch) -> bool:
        return self.task is other.task and self.classes == other.classes

    def where(self, mask: BoolArray, other: ScoreBatch) -> ScoreBatch:
        """Rows from ``other`` where ``mask`` is true, else from ``self`` (same task and
        classes required)."""
        if not self.compatible_with(other):
            raise ValueError("cannot merge score batches of different task/classes")
        if self.task is Task.REGRESSION:
            assert self.values is not None and other.values is not None
            return ScoreBatch(self.task, values=np.where(mask, other.values, self.values))
        assert self.probabilities is not None and other.probabilities is not None
        assert self.labels is not None and other.labels is not None
        return ScoreBatch(
            self.task,
            labels=np.where(mask, other.labels, self.labels),
            probabilities=np.where(mask[:, None], other.probabilities, self.probabilities),
            classes=self.classes,
        )


def open_session(onnx_bytes: bytes, intra_op_threads: int) -> Any:
    """An onnxruntime CPU session for already scanned ONNX bytes (sequential, quiet)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


class LoadedModel:
    """A verified bundle behind an onnxruntime session. Thread-safe for ``predict``."""

    def __init__(self, bundle: Bundle, session: Any, digest: str) -> None:
        self.bundle = bundle
        self.meta = bundle.meta
        self._session = session
        self._output = bundle.output_name
        self._classes = np.array(bundle.meta.classes, dtype=np.str_)
        #: sha256 of the whole bundle payload (identifies the artifact in telemetry).
        self.digest = digest

    def __repr__(self) -> str:
        m = self.meta
        return f"LoadedModel({m.name!r}, v{m.version}, {m.task.value})"

    def predict(self, X: npt.ArrayLike) -> ScoreBatch:
        """Score a (n, n_features) matrix with one onnxruntime call."""
        x = np.ascontiguousarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.meta.n_features:
            raise ValueError(f"expected a (n, {self.meta.n_features}) matrix, got shape {x.shape}")
        if x.shape[0] == 0:
            return self._empty()
        try:
            (out,) = self._session.run([self._output], {INPUT_NAME: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise PredictFailedError(
                f"model {self.meta.name} v{self.meta.version} failed to predict: {exc}"
            ) from exc
        arr = np.asarray(out, dtype=np.float64)
        if self.meta.task is Task.REGRESSION:
            return ScoreBatch(Task.REGRESSION, values=arr.reshape(x.shape[0]))
        if arr.shape != (x.shape[0], len(self.meta.classes)):
            raise PredictFailedError(
                f"model {self.meta.name} v{self.meta.version} returned probabilities of "
                f"shape {arr.shape}"
            )
        labels = self._classes[np.argmax(arr, axis=1)]
        return ScoreBatch(
            Task.CLASSIFICATION, labels=labels, probabilities=arr, classes=self.meta.classes
        )

    def _empty(self) -> ScoreBatch:
        if self.meta.task is Task.REGRESSION:
            return ScoreBatch(Task.REGRESSION, values=np.empty(0))
        return ScoreBatch(
            Task.CLASSIFICATION,
            labels=np.empty(0, dtype=np.str_),
            probabilities=np.empty((0, len(self.meta.classes))),
            classes=self.meta.classes,
        )

    def self_check(self) -> None:
        """Run the reference batch; raise if outputs are non-finite or differ."""
        got = self.predict(self.bundle.reference_X)
        if not got.finite_mask().all():
            raise NonFiniteOutputError(
                f"model {self.meta.name} v{self.meta.version} gives non-finite outputs "
                "on its reference batch"
            )
        compare_outputs(self.meta.task, raw_outputs(got), self.bundle.expected, "expected outputs")


def raw_outputs(batch: ScoreBatch) -> FloatArray:
    """The graph's output as a bundle stores it: values (n,) or probabilities (n, k)."""
    out = batch.values if batch.task is Task.REGRESSION else batch.probabilities
    assert out is not None
    return out


def compare_outputs(
    task: Task,
    got: FloatArray,
    expected: FloatArray,
    what: str,
    max_mismatch_fraction: float = 0.0,
) -> None:
    """Raise ReferenceMismatchError when more than ``max_mismatch_fraction`` of the rows
    of ``got`` differ from ``expected`` (probabilities within :data:`PROBA_ATOL`; values
    within :data:`VALUE_RTOL` + :data:`VALUE_ATOL` * max(1, max |expected|))."""
    if got.shape != expected.shape:
        raise ReferenceMismatchError(f"output shape {got.shape} != {what} {expected.shape}")
    if task is Task.CLASSIFICATION:
        bad = ~np.isclose(got, expected, rtol=0.0, atol=PROBA_ATOL).all(axis=1)
    else:
        scale = max(1.0, float(np.nanmax(np.abs(expected))) if expected.size else 1.0)
        bad = ~np.isclose(got, expected, rtol=VALUE_RTOL, atol=VALUE_ATOL * scale)
    n_bad = int(bad.sum())
    if n_bad > math.floor(max_mismatch_fraction * got.shape[0]):
        worst = float(np.nanmax(np.abs(got - expected)))
        raise ReferenceMismatchError(
            f"{n_bad} of {got.shape[0]} reference rows differ from the {what} "
            f"(max abs diff {worst:.3g})"
        )


def load_bundle(bundle: Bundle, *, intra_op_threads: int = 1, digest: str = "") -> LoadedModel:
    """Safety-scan, check and load an already verified/decoded bundle, then self-check."""
    import onnx

    try:
        model = onnx.load_model_from_string(bundle.onnx_bytes)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BundleDecodeError(f"onnx section does not parse: {exc}") from exc
    check_onnx_safety(model)  # before the checker or the runtime touch anything
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BundleDecodeError(f"onnx model fails the checker: {exc}") from exc
    inputs = [i.name for i in model.graph.input]
    if inputs != [INPUT_NAME]:
        raise BundleDecodeError(f"model must take one input {INPUT_NAME!r}, has {inputs}")
    outputs = [o.name for o in model.graph.output]
    if bundle.output_name not in outputs:
        raise BundleDecodeError(f"model has no output {bundle.output_name!r} ({outputs})")
    try:
        session = open_session(bundle.onnx_bytes, intra_op_threads)
    except Exception as exc:
        raise BundleDecodeError(f"onnxruntime cannot load the model: {exc}") from exc
    loaded = LoadedModel(bundle, session, digest or hashlib.sha256(bundle.to_bytes()).hexdigest())
    loaded.self_check()
    return loaded


def verify_and_load(
    artifact_bytes: bytes,
    signature: bytes | None,
    key_id: str | None,
    keyring: Mapping[str, bytes] | Verifier,
    *,
    intra_op_threads: int = 1,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
) -> LoadedModel:
    """Verify size and signature, decode, safety-scan, load and self-check.

    Raises BundleTooLargeError, UnsignedBundleError, SignatureMismatchError,
    BundleDecodeError, UntrustedContentError, NonFiniteOutputError or
    ReferenceMismatchError; never returns an unchecked model.
    """
    if len(artifact_bytes) > max_bytes:
        raise BundleTooLargeError(
            f"model artifact is {len(artifact_bytes)} bytes, limit {max_bytes}",
            size=len(artifact_bytes),
            limit=max_bytes,
        )
    payload = bytes(artifact_bytes)
    verify_signature(payload, signature, key_id, keyring)
    bundle = decode_bundle(payload)
    return load_bundle(
        bundle,
        intra_op_threads=intra_op_threads,
        digest=hashlib.sha256(payload).hexdigest(),
    )
