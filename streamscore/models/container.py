"""The bundle container: how a model travels as bytes, and its signature.

Serialized bundle (``Bundle.to_bytes()``), a small framed container, safe to parse::

    magic   b"SSBUNDLE"            8 bytes
    format  uint16 big-endian      currently 1
    hlen    uint32 big-endian      length of the JSON header
    header  UTF-8 JSON (strict: no NaN/Infinity), hlen bytes
    onnx    the ONNX ModelProto bytes, exactly header["onnx_size"] bytes,
            sha256 == header["onnx_sha256"]

The header holds the :class:`~streamscore.models.meta.ModelMeta`, the ONNX input/output
names, a reference batch (<= 64 rows, NaN written as ``null``) and the ONNX outputs
expected for it. :func:`decode_bundle` checks every length, digest and shape before it
trusts them.

Signing is over the exact bundle bytes (:func:`sign_bundle`, :func:`verify_signature`),
through the :mod:`streamscore.models.signing` Signer/Verifier interface (today
HMAC-SHA256 with a keyring ``{key_id: key}``, so keys can be rotated: publish with the
new id, keep the old key in workers until every live artifact is re-signed). Key material
never appears in exceptions or logs.

Pure: no ONNX, no onnxruntime, no Kafka, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import BundleDecodeError, UnsignedBundleError
from ..core.records import Task
from .meta import ModelMeta
from .signing import HmacSigner, Signer, Verifier, as_verifier

__all__ = [
    "DEFAULT_MAX_BUNDLE_BYTES",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "MAGIC",
    "MAX_REFERENCE_ROWS",
    "Bundle",
    "SignedArtifact",
    "decode_bundle",
    "sign_bundle",
    "verify_signature",
]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

MAGIC = b"SSBUNDLE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHI")
#: The name of the served graph's one input (a float32 (n, n_features) matrix).
INPUT_NAME = "X"
DEFAULT_MAX_BUNDLE_BYTES = 16 * 1024 * 1024  # the model topic's max.message.bytes
MAX_REFERENCE_ROWS = 64


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
