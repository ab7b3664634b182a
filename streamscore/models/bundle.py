"""Model bundles: build (publish side), sign, verify and load (worker side).

The served artifact is an ONNX graph (converted from a fitted scikit-learn estimator or
Pipeline with skl2onnx at publish time) run by onnxruntime in the workers. ONNX is a
protobuf graph: loading it executes no code. On top of that, every loaded graph is scanned
before onnxruntime sees it: operator domains outside :data:`ALLOWED_DOMAINS`, tensors with
external data (they read files by path), model-local functions and training info are
rejected with :class:`~streamscore.core.errors.UntrustedContentError`.

Serialized bundle (``Bundle.to_bytes()``), a small framed container, safe to parse::

    magic   b"SSBUNDLE"            8 bytes
    format  uint16 big-endian      currently 1
    hlen    uint32 big-endian      length of the JSON header
    header  UTF-8 JSON (strict: no NaN/Infinity), hlen bytes
    onnx    the ONNX ModelProto bytes, exactly header["onnx_size"] bytes,
            sha256 == header["onnx_sha256"]

The header holds the :class:`ModelMeta`, the ONNX input/output names, a reference batch
(<= 64 rows, NaN written as ``null``) and the ONNX outputs expected for it.

Signing is HMAC-SHA256 over the exact bundle bytes (:func:`sign_bundle`, through the
:mod:`streamscore.models.signing` Signer/Verifier interface); workers hold a
keyring ``{key_id: key}`` so keys can be rotated (publish with the new id, keep the old key
in workers until every live artifact is re-signed). :func:`verify_and_load` checks size,
signature, container, graph safety, the ONNX checker, builds the onnxruntime session and
runs :meth:`LoadedModel.self_check` before returning, so nothing unchecked is ever swapped
in. Key material never appears in exceptions or logs.

This module never imports ``confluent_kafka``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import (
    BundleDecodeError,
    BundleTooLargeError,
    IncompatibleFeatureSpecError,
    ModelError,
    NonFiniteOutputError,
    ReferenceMismatchError,
    UnsignedBundleError,
    UntrustedContentError,
)
from ..core.records import FeatureKind, FeatureSpec, Task
from .signing import HmacSigner, Signer, Verifier, as_verifier

__all__ = [
    "ALLOWED_DOMAINS",
    "DEFAULT_MAX_BUNDLE_BYTES",
    "INPUT_NAME",
    "Bundle",
    "Histogram",
    "LoadedModel",
    "ModelMeta",
    "PredictFailedError",
    "ReferenceDistributions",
    "ScoreBatch",
    "SignedArtifact",
    "build_bundle",
    "check_feature_compat",
    "compute_histogram",
    "decode_bundle",
    "load_bundle",
    "normalize_avro_type",
    "reader_fields_from_schema",
    "sign_bundle",
    "to_onnx_bytes",
    "verify_and_load",
]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

MAGIC = b"SSBUNDLE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHI")
INPUT_NAME = "X"
#: ONNX operator domains a served graph may use ("" is the default ai.onnx domain).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
#: Opsets used when converting; old enough for any onnxruntime >= 1.14.
TARGET_OPSET: Mapping[str, int] = MappingProxyType({"": 17, "ai.onnx.ml": 3})
DEFAULT_MAX_BUNDLE_BYTES = 16 * 1024 * 1024  # the model topic's max.message.bytes
MAX_REFERENCE_ROWS = 64
HIST_BINS = 10
#: Tolerances for the reference batch check at load (ONNX vs ONNX, same graph).
PROBA_ATOL = 1e-4
VALUE_RTOL = 1e-4
VALUE_ATOL = 1e-4  # multiplied by max(1, max |expected|)


class PredictFailedError(ModelError):
    """onnxruntime raised while scoring a batch (defined here; candidate for errors.py)."""

    reason = "predict_failed"


# ------------------------------------------------------------------------ metadata


@dataclass(frozen=True, slots=True)
class Histogram:
    """Quantile histogram of one variable on the training data.

    ``edges`` has ``len(proportions) + 1`` entries; the outer edges are the training min
    and max and the outer bins are meant to be read as open-ended (``searchsorted`` on the
    interior edges ``edges[1:-1]`` with ``side="right"`` gives the bin index).
    ``missing`` is the fraction of NaN values, which are not counted in ``proportions``.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float = 0.0

    def bin_index(self, values: npt.ArrayLike) -> npt.NDArray[np.intp]:
        return np.searchsorted(np.asarray(self.edges[1:-1]), values, side="right")

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls(
            tuple(float(x) for x in d["edges"]),
            tuple(float(x) for x in d["proportions"]),
            float(d.get("missing", 0.0)),
        )
        if len(h.edges) != len(h.proportions) + 1:
            raise ValueError("histogram edges/proportions length mismatch")
        return h


def compute_histogram(values: npt.ArrayLike, bins: int = HIST_BINS) -> Histogram:
    """Quantile bins (deduplicated) with open-ended outer bins; NaN counted as missing."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    finite = v[np.isfinite(v)]
    missing = float(np.isnan(v).sum() / n) if n else 0.0
    if finite.size == 0:
        return Histogram((0.0, 0.0), (0.0,), missing)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        return Histogram((float(edges[0]), float(edges[0])), (1.0,), missing)
    idx = np.searchsorted(edges[1:-1], finite, side="right")
    counts = np.bincount(idx, minlength=edges.size - 1)
    props = counts / finite.size
    return Histogram(tuple(float(e) for e in edges), tuple(float(p) for p in props), missing)


@dataclass(frozen=True, slots=True)
class ReferenceDistributions:
    """Training-data histograms per feature (by name) and of the model score."""

    features: Mapping[str, Histogram] = field(default_factory=lambda: MappingProxyType({}))
    score: Histogram | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": {k: h.to_dict() for k, h in self.features.items()},
            "score": None if self.score is None else self.score.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceDistributions:
        feats = {str(k): Histogram.from_dict(h) for k, h in d.get("features", {}).items()}
        s = d.get("score")
        return cls(MappingProxyType(feats), None if s is None else Histogram.from_dict(s))


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """Everything about a model except its graph."""

    name: str
    version: int
    task: Task
    feature_spec: FeatureSpec
    created_at_ms: int
    train_window: tuple[int, int] | None = None
    holdout_metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    classes: tuple[str, ...] = ()
    reference_distributions: ReferenceDistributions = field(default_factory=ReferenceDistributions)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"model version must be an int, got {self.version!r}")
        if self.version < 1:
            raise ValueError(f"model version must be >= 1, got {self.version}")
        if self.task is Task.CLASSIFICATION and len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        if self.task is Task.REGRESSION and self.classes:
            raise ValueError("a regressor has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate classes: {self.classes}")

    @property
    def n_features(self) -> int:
        return len(self.feature_spec.fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task.value,
            "feature_spec": self.feature_spec.to_dict(),
            "created_at_ms": self.created_at_ms,
            "train_window": None if self.train_window is None else list(self.train_window),
            "holdout_metrics": {k: float(v) for k, v in self.holdout_metrics.items()},
            "classes": list(self.classes),
            "reference_distributions": self.reference_distributions.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMeta:
        tw = d.get("train_window")
        return cls(
            name=str(d["name"]),
            version=int(d["version"]),
            task=Task(d["task"]),
            feature_spec=FeatureSpec.from_dict(d["feature_spec"]),
            created_at_ms=int(d["created_at_ms"]),
            train_window=None if tw is None else (int(tw[0]), int(tw[1])),
            holdout_metrics=MappingProxyType(
                {str(k): float(v) for k, v in d.get("holdout_metrics", {}).items()}
            ),
            classes=tuple(str(c) for c in d.get("classes", ())),
            reference_distributions=ReferenceDistributions.from_dict(
                d.get("reference_distributions", {})
            ),
        )


# ---------------------------------------------------------------------- score batch


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


# ------------------------------------------------------------------------- bundles


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    """An unsigned bundle: meta, the ONNX bytes and the reference batch with the outputs
    the ONNX graph is expected to give for it (``values`` (n,) for regressors,
    ``probabilities`` (n, k) for classifiers)."""

    meta: ModelMeta
    onnx_bytes: bytes
    reference_X: F32Array
    expected: FloatArray
    output_name: str

    def to_bytes(self) -> bytes:
        header = {
            "meta": self.meta.to_dict(),
            "input": INPUT_NAME,
            "output": self.output_name,
            "reference_X": _to_jsonable(self.reference_X),
            "expected": _to_jsonable(self.expected),
            "onnx_sha256": hashlib.sha256(self.onnx_bytes).hexdigest(),
            "onnx_size": len(self.onnx_bytes),
        }
        raw = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw + self.onnx_bytes


def _to_jsonable(a: npt.NDArray[Any]) -> Any:
    """Nested lists with NaN as None (strict JSON); +-inf is refused."""
    arr = np.asarray(a, dtype=np.float64)
    if np.isinf(arr).any():
        raise ValueError("infinite values cannot be stored in a bundle header")
    obj = arr.astype(object)
    obj[np.isnan(arr)] = None
    return obj.tolist()


def _from_jsonable(x: Any, ndim: int) -> FloatArray:
    arr = np.array(x, dtype=np.float64)  # None -> nan
    if arr.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d array, got {arr.ndim}-d")
    return arr


def _reject_constant(c: str) -> float:
    raise ValueError(f"non-standard JSON constant {c}")


def decode_bundle(data: bytes) -> Bundle:
    """Parse the container (no signature check: callers use :func:`verify_and_load`)."""
    try:
        magic, fmt, hlen = _PREFIX.unpack_from(data, 0)
    except struct.error as exc:
        raise BundleDecodeError("bundle shorter than its header") from exc
    if magic != MAGIC:
        raise BundleDecodeError("not a streamscore bundle (bad magic)")
    if fmt != FORMAT_VERSION:
        raise BundleDecodeError(f"unsupported bundle format version {fmt}")
    start = _PREFIX.size
    if start + hlen > len(data):
        raise BundleDecodeError("bundle header length exceeds the data")
    try:
        header = json.loads(data[start : start + hlen], parse_constant=_reject_constant)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        onnx_bytes = data[start + hlen :]
        if len(onnx_bytes) != int(header["onnx_size"]):
            raise ValueError("onnx section size does not match the header")
        if not hmac.compare_digest(
            hashlib.sha256(onnx_bytes).hexdigest(), str(header["onnx_sha256"])
        ):
            raise ValueError("onnx section digest does not match the header")
        if header.get("input") != INPUT_NAME:
            raise ValueError(f"model input must be named {INPUT_NAME!r}")
        meta = ModelMeta.from_dict(header["meta"])
        ref_x = _from_jsonable(header["reference_X"], 2).astype(np.float32)
        expected = _from_jsonable(header["expected"], 2 if meta.task is Task.CLASSIFICATION else 1)
        output_name = str(header["output"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BundleDecodeError(f"malformed bundle header: {exc}") from exc
    if ref_x.shape[0] == 0 or ref_x.shape[0] > MAX_REFERENCE_ROWS:
        raise BundleDecodeError(f"reference batch must have 1..{MAX_REFERENCE_ROWS} rows")
    if ref_x.shape[1] != meta.n_features or expected.shape[0] != ref_x.shape[0]:
        raise BundleDecodeError("reference batch shape does not match the feature spec")
    if meta.task is Task.CLASSIFICATION and expected.shape[1] != len(meta.classes):
        raise BundleDecodeError("expected probabilities do not match the classes")
    return Bundle(meta, onnx_bytes, ref_x, expected, output_name)


# ------------------------------------------------------------------------- signing


@dataclass(frozen=True, slots=True)
class SignedArtifact:
    payload: bytes
    signature: bytes = field(repr=False)
    key_id: str

    def __repr__(self) -> str:
        return f"SignedArtifact(key_id={self.key_id!r}, size={len(self.payload)})"


def sign_bundle(bundle_bytes: bytes, key: bytes | Signer, key_id: str = "") -> SignedArtifact:
    """Sign the exact bundle bytes (HMAC-SHA256 when given a key and its id; any
    :class:`~streamscore.models.signing.Signer` otherwise)."""
    signer = key if isinstance(key, Signer) else HmacSigner(key, key_id)
    return SignedArtifact(bytes(bundle_bytes), signer.sign(bundle_bytes), signer.key_id)


def verify_signature(
    payload: bytes,
    signature: bytes | None,
    key_id: str | None,
    keyring: Mapping[str, bytes] | Verifier,
) -> None:
    """Raise UnsignedBundleError or SignatureMismatchError unless ``signature`` is a
    signature of ``payload`` by the key ``key_id`` of ``keyring``."""
    if not signature:
        raise UnsignedBundleError("model artifact carries no signature")
    as_verifier(keyring).verify(payload, signature, key_id, what="model artifact")


# ------------------------------------------------------------------- graph safety


def _check_tensor(t: Any, where: str) -> None:
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0:
        raise UntrustedContentError(f"tensor {t.name!r} in {where} uses external data")


def _check_graph(g: Any, where: str) -> None:
    for t in g.initializer:
        _check_tensor(t, where)
    for st in g.sparse_initializer:
        _check_tensor(st.values, where)
        _check_tensor(st.indices, where)
    for node in g.node:
        if node.domain not in ALLOWED_DOMAINS:
            raise UntrustedContentError(
                f"operator {node.domain}:{node.op_type} is outside the allowed domains",
                field=node.op_type,
            )
        for a in node.attribute:
            if a.HasField("t"):
                _check_tensor(a.t, where)
            for t in a.tensors:
                _check_tensor(t, where)
            if a.HasField("sparse_tensor"):
                _check_tensor(a.sparse_tensor.values, where)
                _check_tensor(a.sparse_tensor.indices, where)
            for st in a.sparse_tensors:
                _check_tensor(st.values, where)
                _check_tensor(st.indices, where)
            if a.HasField("g"):
                _check_graph(a.g, f"{where}/{node.op_type}")
            for sub in a.graphs:
                _check_graph(sub, f"{where}/{node.op_type}")


def check_onnx_safety(model: Any) -> None:
    """Reject anything that could make onnxruntime read files or load foreign code."""
    for op in model.opset_import:
        if op.domain not in ALLOWED_DOMAINS:
            raise UntrustedContentError(
                f"opset domain {op.domain!r} is outside the allowed domains"
            )
    if len(model.functions) > 0:
        raise UntrustedContentError("model-local functions are not allowed")
    if len(model.training_info) > 0:
        raise UntrustedContentError("training info is not allowed in a served model")
    _check_graph(model.graph, "graph")


# ---------------------------------------------------------------------- loaded model


def _session(onnx_bytes: bytes, intra_op_threads: int) -> Any:
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
        _compare(self.meta.task, _raw(got), self.bundle.expected, "expected outputs")


def _raw(batch: ScoreBatch) -> FloatArray:
    out = batch.values if batch.task is Task.REGRESSION else batch.probabilities
    assert out is not None
    return out


def _compare(
    task: Task,
    got: FloatArray,
    expected: FloatArray,
    what: str,
    max_mismatch_fraction: float = 0.0,
) -> None:
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
        session = _session(bundle.onnx_bytes, intra_op_threads)
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


# ------------------------------------------------------------------------ building

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
    model = LoadedModel(draft, _session(onnx_bytes, 1), "")

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
    _compare(task, _raw(onnx_out), sk, "scikit-learn outputs", max_mismatch_fraction)

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
    expected = _raw(onnx_out)[:n_ref]
    return Bundle(meta, onnx_bytes, xr[:n_ref], expected, output_name)


# ----------------------------------------------------------- feature compatibility

_NUMERIC_AVRO = frozenset({"int", "long", "float", "double", "boolean"})
_CATEGORICAL_AVRO = frozenset({"string", "enum", "int", "long", "boolean"})


def normalize_avro_type(t: Any) -> str:
    """An Avro field type as the short form used by :func:`check_feature_compat`.

    Primitives -> their name (``"double"``); named/complex types -> their ``type``
    (``"enum"``, ``"record"``, ``"array"``...); a logical type -> its underlying type;
    a union of ``"null"`` and one other type -> that type with ``"?"`` appended
    (``["null", "double"]`` -> ``"double?"``); any other union -> ``"union"``.
    """
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping):
        inner = t.get("type")
        if isinstance(inner, str) and inner in ("record", "enum", "array", "map", "fixed"):
            return inner
        return normalize_avro_type(inner)
    if isinstance(t, Sequence):
        non_null = [x for x in t if x != "null"]
        if len(non_null) == 1:
            base = normalize_avro_type(non_null[0])
            return base + "?" if len(non_null) < len(t) else base
        return "union"
    return "unknown"


def reader_fields_from_schema(schema: Mapping[str, Any]) -> dict[str, str]:
    """``{field name: normalized type}`` for a record schema (parsed JSON)."""
    return {str(f["name"]): normalize_avro_type(f["type"]) for f in schema.get("fields", ())}


def check_feature_compat(spec: FeatureSpec, reader_fields: Mapping[str, str]) -> None:
    """Raise IncompatibleFeatureSpecError(field=...) if a spec field cannot be fed from
    the event reader schema. ``reader_fields`` maps field name -> normalized Avro type
    (see :func:`normalize_avro_type`; a trailing ``"?"`` marks a nullable field, accepted:
    missing values are the validation layer's concern). Numeric features accept
    int/long/float/double/boolean; categorical ones string/enum/int/long/boolean."""
    for f in spec.fields:
        if f.name not in reader_fields:
            raise IncompatibleFeatureSpecError(
                f"feature {f.name!r} is not a field of the event reader schema", field=f.name
            )
        t = reader_fields[f.name].removesuffix("?")
        allowed = _NUMERIC_AVRO if f.kind is FeatureKind.NUMERIC else _CATEGORICAL_AVRO
        if t not in allowed:
            raise IncompatibleFeatureSpecError(
                f"feature {f.name!r} is {f.kind.value} but the event field has Avro type {t!r}",
                field=f.name,
            )
