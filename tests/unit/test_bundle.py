"""Bundles: build, sign, verify, load, and every rejection path."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression

from streamscore.core.errors import (
    BundleDecodeError,
    BundleTooLargeError,
    IncompatibleFeatureSpecError,
    ModelError,
    NonFiniteOutputError,
    ReferenceMismatchError,
    SignatureMismatchError,
    UnsignedBundleError,
    UntrustedContentError,
)
from streamscore.core.records import FeatureField, FeatureKind, FeatureSpec, Task
from streamscore.models.compat import (
    check_feature_compat,
    normalize_avro_type,
    reader_fields_from_schema,
)
from streamscore.models.container import MAGIC, Bundle, decode_bundle, sign_bundle
from streamscore.models.convert import build_bundle
from streamscore.models.meta import ModelMeta, compute_histogram
from streamscore.models.runtime import LoadedModel, ScoreBatch, verify_and_load

Loader = Callable[..., LoadedModel]
Verify = Callable[..., LoadedModel]


@pytest.fixture
def _verify(sign_verify: Verify) -> Verify:
    return sign_verify


@pytest.fixture
def training_data(make_X: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    return make_X


@pytest.fixture
def feature_spec(make_spec: Callable[..., FeatureSpec]) -> Callable[..., FeatureSpec]:
    return make_spec


# -------------------------------------------------------------------- round trips


def test_regressor_round_trip_matches_sklearn(
    make_regressor_bundle: Callable[..., Bundle], regressor: Any, load: Loader, training_data: Any
) -> None:
    bundle = make_regressor_bundle(version=3)
    model = load(bundle)
    X = training_data(300, seed=5)
    out = model.predict(X)
    assert out.task is Task.REGRESSION and out.values is not None and out.labels is None
    np.testing.assert_allclose(out.values, regressor.predict(X), rtol=1e-4, atol=1e-4)
    assert out.values.dtype == np.float64 and out.values.shape == (300,)
    np.testing.assert_array_equal(out.score(), out.values)
    m = model.meta
    assert (m.name, m.version, m.task, m.train_window) == (
        "m",
        3,
        Task.REGRESSION,
        (1_600_000_000_000, 1_700_000_000_000),
    )
    assert m.holdout_metrics["rmse"] == 0.1
    assert set(m.reference_distributions.features) == {"f0", "f1", "f2"}
    assert m.reference_distributions.score is not None


def test_classifier_round_trip_matches_sklearn(
    make_classifier_bundle: Callable[..., Bundle], classifier: Any, load: Loader, training_data: Any
) -> None:
    model = load(make_classifier_bundle())
    X = training_data(300, seed=6)
    out = model.predict(X)
    assert model.meta.classes == ("no", "yes")
    assert out.probabilities is not None and out.labels is not None
    np.testing.assert_allclose(out.probabilities, classifier.predict_proba(X), atol=1e-4)
    np.testing.assert_array_equal(out.labels, classifier.predict(X))
    np.testing.assert_array_equal(out.score(), out.probabilities[:, 1])
    assert out.finite_mask().all() and len(out) == 300


def test_hist_gradient_boosting_with_missing_values_round_trips(
    spec: FeatureSpec, load: Loader, training_data: Any
) -> None:
    X = training_data(600, seed=1)
    X[::5, 1] = np.nan
    y = (np.nan_to_num(X[:, 1], nan=1.0) + X[:, 0] > 0).astype(int)
    est = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X, y)
    bundle = build_bundle(
        est,
        name="hgb",
        version=1,
        feature_spec=spec,
        X_train=X,
        X_reference=X[:200],
        created_at_ms=0,
    )
    assert np.isnan(bundle.reference_X).any()  # NaN survives the JSON header
    model = load(bundle)
    got = model.predict(X)
    assert got.probabilities is not None
    np.testing.assert_allclose(got.probabilities, est.predict_proba(X), atol=1e-4)
    hist = model.meta.reference_distributions.features["f1"]
    assert hist.missing == pytest.approx(0.2)
    assert sum(hist.proportions) == pytest.approx(1.0)


def test_meta_to_dict_round_trip(make_classifier_bundle: Callable[..., Bundle]) -> None:
    meta = make_classifier_bundle().meta
    assert ModelMeta.from_dict(meta.to_dict()).to_dict() == meta.to_dict()


def test_key_rotation_second_key_verifies(
    make_regressor_bundle: Callable[..., Bundle], _verify: Any
) -> None:
    model = _verify(make_regressor_bundle().to_bytes(), key_id="k2")
    assert model.meta.version == 1


def test_predict_refuses_wrong_width(
    make_regressor_bundle: Callable[..., Bundle], load: Loader
) -> None:
    with pytest.raises(ValueError, match="matrix"):
        load(make_regressor_bundle()).predict(np.zeros((2, 4)))


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("where", ["onnx_first", "onnx_middle", "onnx_last", "header", "magic"])
def test_tampered_byte_fails_signature(
    make_regressor_bundle: Callable[..., Bundle], keyring: Mapping[str, bytes], where: str
) -> None:
    raw = make_regressor_bundle().to_bytes()
    art = sign_bundle(raw, keyring["k1"], "k1")
    _, _, hlen = struct.unpack_from(">8sHI", raw)
    onnx_start = 14 + hlen
    pos = {
        "onnx_first": onnx_start,
        "onnx_middle": (onnx_start + len(raw)) // 2,
        "onnx_last": len(raw) - 1,
        "header": 14 + hlen // 2,
        "magic": 0,
    }[where]
    tampered = bytearray(art.payload)
    tampered[pos] ^= 0x01
    with pytest.raises(SignatureMismatchError):
        verify_and_load(bytes(tampered), art.signature, "k1", keyring)


@pytest.mark.parametrize("sig", [None, b""])
def test_unsigned_is_rejected(
    make_regressor_bundle: Callable[..., Bundle], keyring: Mapping[str, bytes], sig: bytes | None
) -> None:
    with pytest.raises(UnsignedBundleError):
        verify_and_load(make_regressor_bundle().to_bytes(), sig, "k1", keyring)


def test_signature_with_another_key_is_rejected(
    make_regressor_bundle: Callable[..., Bundle], keyring: Mapping[str, bytes]
) -> None:
    raw = make_regressor_bundle().to_bytes()
    foreign = sign_bundle(raw, b"attacker-key", "k1")
    with pytest.raises(SignatureMismatchError) as exc:
        verify_and_load(raw, foreign.signature, "k1", keyring)
    # signed with k2 but labelled k1
    k2sig = sign_bundle(raw, keyring["k2"], "k2").signature
    with pytest.raises(SignatureMismatchError):
        verify_and_load(raw, k2sig, "k1", keyring)
    for key in keyring.values():
        assert key.decode() not in str(exc.value)


def test_unknown_key_id_names_the_id_not_the_key(
    make_regressor_bundle: Callable[..., Bundle], keyring: Mapping[str, bytes]
) -> None:
    raw = make_regressor_bundle().to_bytes()
    art = sign_bundle(raw, keyring["k1"], "k1")
    with pytest.raises(SignatureMismatchError, match="'k9'") as exc:
        verify_and_load(raw, art.signature, "k9", keyring)
    for key in keyring.values():
        assert key.decode() not in str(exc.value)
    assert keyring["k1"].decode() not in repr(art)


def test_too_large_is_rejected_before_anything_else(
    make_regressor_bundle: Callable[..., Bundle], keyring: Mapping[str, bytes]
) -> None:
    raw = make_regressor_bundle().to_bytes()
    with pytest.raises(BundleTooLargeError) as exc:
        verify_and_load(raw, None, "k1", keyring, max_bytes=100)
    assert exc.value.size == len(raw) and exc.value.limit == 100


# ----------------------------------------------------------------- decoding


def test_signed_garbage_is_a_decode_error(_verify: Any) -> None:
    with pytest.raises(BundleDecodeError):
        _verify(b"definitely not a bundle")
    with pytest.raises(BundleDecodeError):
        _verify(MAGIC + b"\x00\x01\xff\xff\xff\xff{}")


def test_signed_bad_onnx_section_is_a_decode_error(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    good = make_crafted_bundle(make_linear_graph(np.ones((3, 1))))
    bad = Bundle(
        good.meta, b"\x08\x07garbage-protobuf", good.reference_X, good.expected, "variable"
    )
    with pytest.raises(BundleDecodeError):
        _verify(bad.to_bytes())


def test_header_digest_must_match_onnx_section(
    make_regressor_bundle: Callable[..., Bundle],
) -> None:
    raw = bytearray(make_regressor_bundle().to_bytes())
    raw[-1] ^= 0x01
    with pytest.raises(BundleDecodeError, match="digest"):
        decode_bundle(bytes(raw))


# ----------------------------------------------------------- untrusted content


def test_crafted_linear_graph_loads(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
    training_data: Any,
) -> None:
    w = np.array([[1.0], [2.0], [0.0]])
    ref = training_data(8)
    model = _verify(
        make_crafted_bundle(make_linear_graph(w), expected=(ref @ w).ravel()).to_bytes()
    )
    X = training_data(5, seed=3)
    out = model.predict(X)
    assert out.values is not None
    np.testing.assert_allclose(out.values, (X @ w).ravel(), rtol=1e-5)


def test_custom_domain_operator_is_untrusted(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    evil = make_linear_graph(np.ones((3, 1)), domain="com.evil", op="Exec")
    with pytest.raises(UntrustedContentError, match=r"com\.evil"):
        _verify(make_crafted_bundle(evil).to_bytes())


def test_custom_domain_node_without_opset_is_untrusted(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    m = make_linear_graph(np.ones((3, 1)))
    m.graph.node[0].domain = "com.microsoft"
    with pytest.raises(UntrustedContentError):
        _verify(make_crafted_bundle(m).to_bytes())


def test_external_data_tensor_is_untrusted(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    m = make_linear_graph(np.ones((3, 1)))
    w = m.graph.initializer[0]
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    with pytest.raises(UntrustedContentError, match="external"):
        _verify(make_crafted_bundle(m).to_bytes())


def test_external_data_entries_alone_are_untrusted(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    m = make_linear_graph(np.ones((3, 1)))
    entry = m.graph.initializer[0].external_data.add()
    entry.key, entry.value = "location", "../../secret"
    with pytest.raises(UntrustedContentError):
        _verify(make_crafted_bundle(m).to_bytes())


# ----------------------------------------------------------- self check


def test_altered_expected_outputs_are_a_reference_mismatch(
    make_regressor_bundle: Callable[..., Bundle], _verify: Any
) -> None:
    b = make_regressor_bundle()
    altered = b.expected.copy()
    altered[3] += 0.5
    resigned = Bundle(b.meta, b.onnx_bytes, b.reference_X, altered, b.output_name).to_bytes()
    with pytest.raises(ReferenceMismatchError, match="1 of"):
        _verify(resigned)


def test_altered_classifier_expectations_are_a_reference_mismatch(
    make_classifier_bundle: Callable[..., Bundle], _verify: Any
) -> None:
    b = make_classifier_bundle()
    altered = b.expected[:, ::-1].copy()
    with pytest.raises(ReferenceMismatchError):
        _verify(Bundle(b.meta, b.onnx_bytes, b.reference_X, altered, b.output_name).to_bytes())


def test_nan_model_is_refused_at_build(regressor: Any, spec: FeatureSpec, X: np.ndarray) -> None:
    est = LinearRegression().fit(X, X[:, 0])
    est.coef_ = np.full_like(est.coef_, np.nan)
    with pytest.raises(NonFiniteOutputError):
        build_bundle(
            est, name="nan", version=1, feature_spec=spec, X_train=X, X_reference=X, created_at_ms=0
        )


def test_nan_graph_is_refused_at_load(
    make_crafted_bundle: Callable[..., Bundle],
    make_linear_graph: Callable[..., onnx.ModelProto],
    _verify: Any,
) -> None:
    nan_graph = make_linear_graph(np.full((3, 1), np.nan))
    with pytest.raises(NonFiniteOutputError):
        _verify(make_crafted_bundle(nan_graph).to_bytes())


def test_model_errors_share_the_root() -> None:
    for cls in (
        UnsignedBundleError,
        SignatureMismatchError,
        UntrustedContentError,
        ReferenceMismatchError,
        NonFiniteOutputError,
        BundleDecodeError,
    ):
        assert issubclass(cls, ModelError)


# --------------------------------------------------------- scores and histograms


def test_multiclass_score_is_max_probability() -> None:
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    b = ScoreBatch(
        Task.CLASSIFICATION, labels=np.array(["b", "a"]), probabilities=p, classes=("a", "b", "c")
    )
    np.testing.assert_array_equal(b.score(), [0.5, 0.6])


def test_histogram_quantile_bins() -> None:
    h = compute_histogram(np.arange(1000, dtype=float))
    assert len(h.edges) == 11 and len(h.proportions) == 10
    assert all(p == pytest.approx(0.1, abs=0.002) for p in h.proportions)
    assert h.bin_index([-5.0, 1e9]).tolist() == [0, 9]  # outer bins are open-ended
    const = compute_histogram(np.ones(10))
    assert const.proportions == (1.0,)


# ---------------------------------------------------------- feature compatibility


def test_feature_compat_accepts_numeric_and_nullable(spec: FeatureSpec) -> None:
    check_feature_compat(spec, {"f0": "double", "f1": "long?", "f2": "float", "other": "string"})


def test_feature_compat_missing_field(spec: FeatureSpec) -> None:
    with pytest.raises(IncompatibleFeatureSpecError) as exc:
        check_feature_compat(spec, {"f0": "double", "f2": "double"})
    assert exc.value.field == "f1"


def test_feature_compat_non_numeric_type(spec: FeatureSpec) -> None:
    with pytest.raises(IncompatibleFeatureSpecError) as exc:
        check_feature_compat(spec, {"f0": "double", "f1": "string?", "f2": "double"})
    assert exc.value.field == "f1"


def test_feature_compat_categorical_accepts_strings() -> None:
    spec = FeatureSpec((FeatureField("country", kind=FeatureKind.CATEGORICAL, categories=("a",)),))
    check_feature_compat(spec, {"country": "string"})
    with pytest.raises(IncompatibleFeatureSpecError):
        check_feature_compat(spec, {"country": "array"})


def test_reader_fields_from_schema(feature_spec: Any) -> None:
    schema = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "a", "type": "double"},
            {"name": "b", "type": ["null", "double"], "default": None},
            {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["x"]}},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "u", "type": ["string", "double"]},
        ],
    }
    assert reader_fields_from_schema(schema) == {
        "a": "double",
        "b": "double?",
        "c": "enum",
        "t": "long",
        "u": "union",
    }
    assert normalize_avro_type(["null", {"type": "array", "items": "int"}]) == "array?"
    assert feature_spec(2).names == ("f0", "f1")
