"""Factory fixtures for model bundles: tiny, seeded, fast."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.core.records import FeatureField, FeatureSpec, Task
from streamscore.models.container import Bundle, sign_bundle
from streamscore.models.convert import build_bundle
from streamscore.models.meta import ModelMeta
from streamscore.models.runtime import LoadedModel, verify_and_load
from streamscore.models.signing import Ed25519Signer, Ed25519Verifier

N_FEATURES = 3
KEYRING: Mapping[str, bytes] = MappingProxyType(
    {"k1": b"test-key-one-0123456789abcdef", "k2": b"test-key-two-fedcba9876543210"}
)

#: The default scheme's test keys: publishers sign with these (fixed seeds, so runs are
#: reproducible); workers verify with ``ED25519_VERIFIER``, which holds public keys only.
ED25519_SIGNERS: Mapping[str, Ed25519Signer] = MappingProxyType(
    {
        kid: Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32), kid)
        for n, kid in ((1, "k1"), (2, "k2"))
    }
)
ED25519_VERIFIER = Ed25519Verifier({k: s.public_key() for k, s in ED25519_SIGNERS.items()})


def feature_spec(n: int = N_FEATURES) -> FeatureSpec:
    return FeatureSpec(tuple(FeatureField(f"f{i}") for i in range(n)))


def training_data(n_rows: int = 400, n: int = N_FEATURES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, n)).astype(np.float32)


@pytest.fixture
def one_thread() -> Any:
    """Native thread pools (OpenMP in HistGradientBoosting, XGBoost, LightGBM; BLAS) held
    to one thread: on a shared 2-core machine their spinning workers make a 0.2 s fit
    take 15 s."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def keyring() -> Mapping[str, bytes]:
    return KEYRING


@pytest.fixture
def signers() -> Mapping[str, Ed25519Signer]:
    """Ed25519 signers ``k1`` and ``k2`` (publishers)."""
    return ED25519_SIGNERS


@pytest.fixture
def verifier() -> Ed25519Verifier:
    """The public keys of ``signers`` (what a worker holds)."""
    return ED25519_VERIFIER


@pytest.fixture
def spec() -> FeatureSpec:
    return feature_spec()


@pytest.fixture
def X() -> np.ndarray:
    return training_data()


@pytest.fixture(scope="session")
def regressor() -> Any:
    X = training_data()
    y = 2.0 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] + 3.0
    return make_pipeline(StandardScaler(), LinearRegression()).fit(X, y)


@pytest.fixture(scope="session")
def classifier() -> Any:
    X = training_data()
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)


@pytest.fixture
def make_regressor_bundle(regressor: Any) -> Callable[..., Bundle]:
    def make(version: int = 1, name: str = "m", estimator: Any = None) -> Bundle:
        X = training_data()
        return build_bundle(
            regressor if estimator is None else estimator,
            name=name,
            version=version,
            feature_spec=feature_spec(),
            X_train=X,
            X_reference=X[:100],
            created_at_ms=1_700_000_000_000,
            train_window=(1_600_000_000_000, 1_700_000_000_000),
            holdout_metrics={"rmse": 0.1},
        )

    return make


@pytest.fixture
def make_classifier_bundle(classifier: Any) -> Callable[..., Bundle]:
    def make(version: int = 1, name: str = "c") -> Bundle:
        X = training_data()
        return build_bundle(
            classifier,
            name=name,
            version=version,
            feature_spec=feature_spec(),
            X_train=X,
            X_reference=X[:100],
            created_at_ms=1_700_000_000_000,
        )

    return make


def _load(bundle: Bundle, key_id: str = "k1") -> LoadedModel:
    art = sign_bundle(bundle.to_bytes(), ED25519_SIGNERS[key_id])
    return verify_and_load(art.payload, art.signature, art.key_id, ED25519_VERIFIER)


@pytest.fixture
def load() -> Callable[..., LoadedModel]:
    """Sign with the test Ed25519 key and verify+load with its public key."""
    return _load


def linear_graph(weights: np.ndarray, *, domain: str = "", op: str = "MatMul") -> onnx.ModelProto:
    """X (n, k) @ W (k, 1) -> "variable" (n, 1); ``domain``/``op`` let tests craft nodes."""
    w = helper.make_tensor(
        "W", TensorProto.FLOAT, weights.shape, weights.astype(np.float32).ravel()
    )
    node = helper.make_node(op, ["X", "W"], ["variable"], domain=domain)
    graph = helper.make_graph(
        [node],
        "crafted",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, weights.shape[0]])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def crafted_bundle(model: onnx.ModelProto, expected: np.ndarray | None = None) -> Bundle:
    """A regression bundle around an arbitrary ONNX graph (no sklearn involved)."""
    ref = training_data(8)
    meta = ModelMeta(
        name="crafted",
        version=1,
        task=Task.REGRESSION,
        feature_spec=feature_spec(),
        created_at_ms=0,
    )
    exp = np.zeros(ref.shape[0]) if expected is None else expected
    return Bundle(meta, model.SerializeToString(), ref, exp, "variable")


@pytest.fixture
def make_crafted_bundle() -> Callable[..., Bundle]:
    return crafted_bundle


@pytest.fixture
def make_linear_graph() -> Callable[..., onnx.ModelProto]:
    return linear_graph


@pytest.fixture
def make_X() -> Callable[..., np.ndarray]:
    """``make_X(n_rows=400, n=3, seed=0)``: seeded float32 standard-normal matrix."""
    return training_data


@pytest.fixture
def make_spec() -> Callable[..., FeatureSpec]:
    return feature_spec


def _sign_verify(payload: bytes, key_id: str = "k1", key: bytes | None = None) -> LoadedModel:
    sig = sign_bundle(payload, key if key is not None else KEYRING[key_id], key_id).signature
    return verify_and_load(payload, sig, key_id, KEYRING)


@pytest.fixture
def sign_verify() -> Callable[..., LoadedModel]:
    """Sign raw bundle bytes with a test key (or ``key``) and verify+load them."""
    return _sign_verify
