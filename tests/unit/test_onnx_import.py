"""A ready ONNX file with its feature spec, as ``torch.onnx.export`` writes one (one float
input ``[N, k]`` under the exporter's own name, logits or values out). torch itself is too
big to install here: the graphs are built with the ``onnx`` helper API, the same
operators an exported MLP uses (Gemm, Relu)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamscore.cli import main
from streamscore.core.errors import ConfigError, UntrustedContentError
from streamscore.core.records import FeatureField, FeatureSpec, Task
from streamscore.models.container import INPUT_NAME, decode_bundle
from streamscore.models.onnx_import import (
    OnnxImportError,
    OnnxModelSpec,
    OutputKind,
    bundle_from_onnx,
    prepare_onnx,
)
from streamscore.models.runtime import load_bundle

K = 3
FEATURES = FeatureSpec(tuple(FeatureField(f"f{i}") for i in range(K)))


def mlp(
    n_out: int,
    *,
    seed: int = 0,
    input_name: str = "input.1",
    batch: int | str = "batch",
    k: int = K,
    elem: int = TensorProto.FLOAT,
    opset: int = 17,
    output: str = "logits",
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Gemm -> Relu -> Gemm, as torch.onnx.export writes a two-layer MLP."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, k)).astype(np.float32)  # torch Linear weights are (out, in)
    b1 = rng.normal(size=8).astype(np.float32)
    w2 = rng.normal(size=(n_out, 8)).astype(np.float32)
    b2 = rng.normal(size=n_out).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, name)
        for a, name in ((w1, "fc1.weight"), (b1, "fc1.bias"), (w2, "fc2.weight"), (b2, "fc2.bias"))
    ]
    nodes = [
        helper.make_node("Gemm", [input_name, "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], [output], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "torch_jit",
        [helper.make_tensor_value_info(input_name, elem, [batch, k])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, [w1, b1, w2, b2]


def forward(x: np.ndarray, w: list[np.ndarray]) -> np.ndarray:
    w1, b1, w2, b2 = (a.astype(np.float64) for a in w)
    h = np.maximum(x @ w1.T + b1, 0.0)
    out: np.ndarray = h @ w2.T + b2
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def sample(n: int = 400, seed: int = 1) -> np.ndarray:
    x: np.ndarray = np.random.default_rng(seed).normal(size=(n, K))
    return x


def _bundle(model: onnx.ModelProto, spec: OnnxModelSpec) -> tuple[object, np.ndarray]:
    x = sample()
    b = bundle_from_onnx(
        model.SerializeToString(), spec, x, name="torch", version=1, created_at_ms=1
    )
    return b, x


def test_multiclass_logits_become_probabilities() -> None:
    model, w = mlp(3)
    spec = OnnxModelSpec(
        FEATURES, Task.CLASSIFICATION, ("a", "b", "c"), output_kind=OutputKind.LOGITS
    )
    bundle, _ = _bundle(model, spec)
    loaded = load_bundle(bundle)
    served = onnx.load_model_from_string(loaded.bundle.onnx_bytes)
    assert [i.name for i in served.graph.input] == [INPUT_NAME]
    fresh = sample(200, 7)
    out = loaded.predict(fresh)
    want = softmax(forward(fresh.astype(np.float32).astype(np.float64), w))
    assert out.probabilities is not None and out.labels is not None
    np.testing.assert_allclose(out.probabilities, want, atol=1e-5)
    assert (out.labels == np.array(["a", "b", "c"])[want.argmax(axis=1)]).all()


def test_binary_single_logit_becomes_two_columns() -> None:
    model, w = mlp(1)
    spec = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("no", "yes"), output_kind="logits")
    bundle, _ = _bundle(model, spec)
    fresh = sample(100, 8)
    out = load_bundle(bundle).predict(fresh)
    p1 = 1.0 / (1.0 + np.exp(-forward(fresh, w)[:, 0]))
    assert out.probabilities is not None
    np.testing.assert_allclose(out.probabilities[:, 1], p1, atol=1e-5)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert out.score().shape == (100,)


def test_regression_values_n_by_1() -> None:
    model, w = mlp(1, output="value")
    bundle, _ = _bundle(model, OnnxModelSpec(FEATURES))
    fresh = sample(100, 9)
    out = load_bundle(bundle).predict(fresh)
    assert out.values is not None and out.values.shape == (100,)
    np.testing.assert_allclose(out.values, forward(fresh, w)[:, 0], rtol=1e-5, atol=1e-4)


def test_probabilities_output_is_served_as_is() -> None:
    model, w = mlp(2)
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    model.graph.output[0].name = "probs"
    bundle, x = _bundle(model, OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("0", "1")))
    out = load_bundle(bundle).predict(x[:50])
    assert out.probabilities is not None
    np.testing.assert_allclose(out.probabilities, softmax(forward(x[:50], w)), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": 1}, "fixed batch size 1"),
        ({"k": 5}, "has 5 columns; the feature spec has 3"),
        ({"elem": TensorProto.DOUBLE}, "is DOUBLE; it must be FLOAT"),
        ({"opset": 11}, "opset >= 13"),
    ],
)
def test_input_the_worker_cannot_feed_is_refused(kwargs: dict[str, object], message: str) -> None:
    model, _ = mlp(3, **kwargs)
    spec = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("a", "b", "c"), output_kind="logits")
    with pytest.raises(OnnxImportError, match=message):
        prepare_onnx(model.SerializeToString(), spec)


def test_two_inputs_and_unnamed_outputs_are_refused() -> None:
    model, _ = mlp(3)
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, 3]))
    spec = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("a", "b", "c"))
    with pytest.raises(OnnxImportError, match=r"2 inputs \(\['input.1', 'mask'\]\)"):
        prepare_onnx(model.SerializeToString(), spec)
    model, _ = mlp(3)
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, 8]))
    with pytest.raises(OnnxImportError, match=r"outputs \['logits', 'h'\]: name the one"):
        prepare_onnx(model.SerializeToString(), spec)
    picked = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("a", "b", "c"), output="nope")
    with pytest.raises(OnnxImportError, match="no output 'nope'"):
        prepare_onnx(model.SerializeToString(), picked)


def test_logits_of_the_wrong_width_are_refused() -> None:
    model, _ = mlp(4)
    spec = OnnxModelSpec(FEATURES, Task.CLASSIFICATION, ("a", "b", "c"), output_kind="logits")
    with pytest.raises(OnnxImportError, match=r"logits for 3 classes must be \[N, 3\]"):
        prepare_onnx(model.SerializeToString(), spec)


def test_safety_scan_runs_first() -> None:
    model, _ = mlp(3)
    model.graph.node.append(helper.make_node("Evil", ["logits"], ["x2"], domain="com.evil"))
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    with pytest.raises(UntrustedContentError):
        prepare_onnx(model.SerializeToString(), OnnxModelSpec(FEATURES, Task.REGRESSION))
    with pytest.raises(OnnxImportError, match="not an ONNX model"):
        prepare_onnx(b"\x00garbage\xff" * 5, OnnxModelSpec(FEATURES))


def test_spec_json_says_the_task() -> None:
    d = {**FEATURES.to_dict(), "task": "classification", "classes": ["x", "y"]}
    spec = OnnxModelSpec.from_dict(d)
    assert spec.kind is OutputKind.PROBABILITIES and spec.classes == ("x", "y")
    with pytest.raises(ConfigError, match="needs its classes"):
        OnnxModelSpec.from_dict({**FEATURES.to_dict(), "task": "classification"})
    with pytest.raises(ConfigError, match="not a valid ONNX model spec"):
        OnnxModelSpec.from_dict({**FEATURES.to_dict(), "output_kind": "scores"})
    with pytest.raises(ConfigError, match="regressor's output is values"):
        OnnxModelSpec.from_dict({**FEATURES.to_dict(), "output_kind": "logits"})


def test_cli_model_build_from_onnx(tmp_path: Path) -> None:
    model, w = mlp(3)
    onnx.save_model(model, tmp_path / "model.onnx")
    spec = {
        **FEATURES.to_dict(),
        "task": "classification",
        "classes": ["a", "b", "c"],
        "output_kind": "logits",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    x = sample(300, 3)
    np.save(tmp_path / "sample.npy", x)
    out = tmp_path / "model.ssb"
    rc = main(
        [
            "model",
            "build",
            "--onnx",
            str(tmp_path / "model.onnx"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--data",
            str(tmp_path / "sample.npy"),
            "--name",
            "torchy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    loaded = load_bundle(decode_bundle(out.read_bytes()))
    assert loaded.meta.name == "torchy" and loaded.meta.classes == ("a", "b", "c")
    probs = loaded.predict(x[:20]).probabilities
    assert probs is not None
    np.testing.assert_allclose(probs, softmax(forward(x[:20], w)), atol=1e-5)


def test_cli_onnx_without_a_spec_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = mlp(1, output="value")
    onnx.save_model(model, tmp_path / "model.onnx")
    np.save(tmp_path / "sample.npy", sample(20))
    args = ["model", "build", "--name", "m", "--onnx", str(tmp_path / "model.onnx"), "--out", "x"]
    assert main([*args, "--data", str(tmp_path / "sample.npy")]) == 1
    assert "needs --spec FILE, or [[features]]" in capsys.readouterr().err
