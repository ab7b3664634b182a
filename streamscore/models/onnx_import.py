"""A ready ONNX file as a served model: what ``torch.onnx.export`` (or any exporter)
writes, given with its feature spec.

The file must have one float input of shape ``[N, k]`` (``k`` the number of features in
the spec, ``N`` dynamic: export with ``dynamic_axes={"input": {0: "batch"}}``) and an
output giving, for a classifier, probabilities ``[N, len(classes)]`` or logits (``[N,
len(classes)]``, or ``[N, 1]`` / ``[N]`` for a binary model: one logit of the second
class), and for a regressor the values ``[N]`` or ``[N, 1]``. :func:`prepare_onnx`
safety-scans it first, then renames its input to the served name
(:data:`~streamscore.models.container.INPUT_NAME`) and appends a Softmax (or a Sigmoid
and its complement) for logits, so the served graph gives what a worker reads.
:func:`bundle_from_onnx` then runs the reference-batch check: the served graph must agree
with the original file (run as given, logits turned into probabilities in numpy).

The spec file (JSON) is a feature spec (``FeatureSpec.to_dict()``, ``{"fields": [...]}``)
with the model's description beside it::

    {"fields": [...], "task": "classification", "classes": ["no", "yes"],
     "output": "logits", "output_kind": "logits"}

``task`` (``classification`` | ``regression``, default ``regression``), ``classes``
(classification: the probability columns' labels, in order), ``output`` (the graph output
to read; default its only output) and ``output_kind`` (``probabilities`` (default for
classification) | ``logits`` | ``values`` (regression)).

Pure: no Kafka, no file I/O (the CLI reads the files).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..core.errors import ConfigError, ModelError, UntrustedContentError
from ..core.records import FeatureSpec, Task
from .container import INPUT_NAME, Bundle
from .convert import package_onnx
from .safety import check_onnx_safety

__all__ = [
    "OnnxImportError",
    "OnnxModelSpec",
    "OutputKind",
    "bundle_from_onnx",
    "prepare_onnx",
]

#: The served graph's output name when a Softmax/Sigmoid is appended for logits.
PROBABILITIES = "probabilities"


class OnnxImportError(ModelError):
    """The ONNX file is not a model streamscore can serve (input or output shapes, types,
    names); the message says what it has and what is needed."""

    reason = "onnx_import"


class OutputKind(enum.StrEnum):
    PROBABILITIES = "probabilities"
    LOGITS = "logits"
    VALUES = "values"


@dataclass(frozen=True)
class OnnxModelSpec:
    """A ready ONNX model's feature spec and description (module doc)."""

    features: FeatureSpec
    task: Task = Task.REGRESSION
    classes: tuple[str, ...] = ()
    output: str | None = None
    output_kind: OutputKind | str | None = None

    def __post_init__(self) -> None:
        try:  # plain strings are accepted for the enums
            object.__setattr__(self, "task", Task(self.task))
            if self.output_kind is not None:
                object.__setattr__(self, "output_kind", OutputKind(self.output_kind))
        except ValueError as exc:
            raise ConfigError(f"not a valid ONNX model spec: {exc}") from None
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.task is Task.CLASSIFICATION and len(self.classes) < 2:
            raise ConfigError("a classifier's spec needs its classes (at least two)")
        if self.task is Task.REGRESSION and self.classes:
            raise ConfigError("a regressor's spec has no classes")
        if self.task is Task.REGRESSION and self.kind is not OutputKind.VALUES:
            raise ConfigError(f"a regressor's output is values, not {self.kind.value}")
        if self.task is Task.CLASSIFICATION and self.kind is OutputKind.VALUES:
            raise ConfigError("a classifier's output is probabilities or logits, not values")

    @property
    def kind(self) -> OutputKind:
        if self.output_kind is not None:
            return OutputKind(self.output_kind)
        return OutputKind.PROBABILITIES if self.task is Task.CLASSIFICATION else OutputKind.VALUES

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OnnxModelSpec:
        try:
            features = FeatureSpec.from_dict(d)
            task = Task(d.get("task", Task.REGRESSION.value))
            kind = d.get("output_kind")
            return cls(
                features=features,
                task=task,
                classes=tuple(str(c) for c in d.get("classes") or ()),
                output=None if d.get("output") is None else str(d["output"]),
                output_kind=None if kind is None else OutputKind(kind),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a valid ONNX model spec: {exc}") from exc


def _dims(value_info: Any) -> list[int | str | None]:
    """The shape of a graph input/output: ints, symbolic names, None when unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename a value everywhere it is used (subgraphs see the outer scope)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for a in node.attribute:
            if a.HasField("g"):
                _rename(a.g, old, new)
            for sub in a.graphs:
                _rename(sub, old, new)
    for o in graph.output:
        if o.name == old:
            o.name = new


def _names(graph: Any) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def _default_opset(model: Any) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


@dataclass(frozen=True)
class PreparedOnnx:
    served: bytes  # the graph workers run
    output_name: str  # its output to read
    original_input: str  # the file's input name (to run the file as given)
    original_output: str  # the file's output that was chosen


def prepare_onnx(onnx_bytes: bytes, spec: OnnxModelSpec) -> PreparedOnnx:
    """Check the file's input and output against ``spec`` and return the served graph
    (module doc). Raises :class:`OnnxImportError`, or
    :class:`~streamscore.core.errors.UntrustedContentError` from the safety scan."""
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as exc:  # protobuf DecodeError and friends
        raise OnnxImportError(f"not an ONNX model: {exc}") from exc
    check_onnx_safety(model)  # before anything else reads the graph
    graph = model.graph
    k = len(spec.features.fields)
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxImportError(
            f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); streamscore "
            f"feeds one float matrix [N, {k}]"
        )
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise OnnxImportError(
            f"input {inp.name!r} is {TensorProto.DataType.Name(elem)}; it must be FLOAT [N, {k}]"
        )
    dims = _dims(inp)
    if len(dims) != 2:
        raise OnnxImportError(f"input {inp.name!r} has shape {dims}; it must be [N, {k}]")
    if isinstance(dims[1], int) and dims[1] != k:
        raise OnnxImportError(
            f"input {inp.name!r} has {dims[1]} columns; the feature spec has {k} "
            f"({', '.join(spec.features.names)})"
        )
    if isinstance(dims[0], int) and dims[0] != 0:
        raise OnnxImportError(
            f"input {inp.name!r} has a fixed batch size {dims[0]}; export it with a dynamic "
            "first axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )
    outputs = [o.name for o in graph.output]
    if spec.output is not None:
        if spec.output not in outputs:
            raise OnnxImportError(f"the model has no output {spec.output!r} ({outputs})")
        chosen = spec.output
    elif len(outputs) == 1:
        chosen = outputs[0]
    else:
        raise OnnxImportError(f"the model has outputs {outputs}: name the one to read (output)")
    out_info = next(o for o in graph.output if o.name == chosen)
    if out_info.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        raise OnnxImportError(f"output {chosen!r} is not a float tensor")
    out_dims = _dims(out_info)

    original_input = inp.name
    if original_input != INPUT_NAME:
        if INPUT_NAME in _names(graph):
            raise OnnxImportError(f"the model already uses the name {INPUT_NAME!r} inside")
        _rename(graph, original_input, INPUT_NAME)
        inp.name = INPUT_NAME

    served_output = chosen
    if spec.kind is OutputKind.LOGITS:
        n_classes = len(spec.classes)
        cols = out_dims[1] if len(out_dims) == 2 else 1 if len(out_dims) == 1 else None
        taken = _names(graph)
        if PROBABILITIES in taken:
            raise OnnxImportError(f"the model already has a value named {PROBABILITIES!r}")
        logits = f"{chosen}__float"
        nodes = [helper.make_node("Cast", [chosen], [logits], to=TensorProto.FLOAT)]
        if (cols == n_classes and n_classes >= 2) or (cols is None and n_classes > 2):
            nodes.append(helper.make_node("Softmax", [logits], [PROBABILITIES], axis=1))
        elif n_classes == 2 and cols in (1, None):
            shape, one = f"{chosen}__shape", f"{chosen}__one"
            col, p1, p0 = f"{chosen}__col", f"{chosen}__p1", f"{chosen}__p0"
            graph.initializer.extend(
                [
                    helper.make_tensor(shape, TensorProto.INT64, [2], [-1, 1]),
                    helper.make_tensor(one, TensorProto.FLOAT, [], [1.0]),
                ]
            )
            nodes += [
                helper.make_node("Reshape", [logits, shape], [col]),
                helper.make_node("Sigmoid", [col], [p1]),
                helper.make_node("Sub", [one, p1], [p0]),
                helper.make_node("Concat", [p0, p1], [PROBABILITIES], axis=1),
            ]
        else:
            raise OnnxImportError(
                f"output {chosen!r} has shape {out_dims}: logits for {n_classes} classes "
                f"must be [N, {n_classes}]" + (" or [N, 1]" if n_classes == 2 else "")
            )
        if _default_opset(model) < 13:
            raise OnnxImportError(
                "logits need opset >= 13 for the appended Softmax/Sigmoid; export with "
                "opset_version=13 or later"
            )
        graph.node.extend(nodes)
        del graph.output[:]
        graph.output.append(
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [None, n_classes])
        )
        served_output = PROBABILITIES
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise OnnxImportError(f"the model fails the ONNX checker: {exc}") from exc
    return PreparedOnnx(model.SerializeToString(), served_output, original_input, chosen)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _file_reference(onnx_bytes: bytes, prepared: PreparedOnnx, spec: OnnxModelSpec) -> Any:
    """The file as given, run by onnxruntime, its logits made probabilities in numpy:
    what the served graph must agree with."""
    from .runtime import open_session

    session = open_session(onnx_bytes, 1)

    def run(x64: np.ndarray) -> np.ndarray:
        (out,) = session.run(
            [prepared.original_output], {prepared.original_input: x64.astype(np.float32)}
        )
        z = np.asarray(out, dtype=np.float64)
        if spec.task is Task.REGRESSION:
            return z.reshape(-1)
        if spec.kind is OutputKind.LOGITS:
            if len(spec.classes) == 2 and (z.ndim == 1 or z.shape[1] == 1):
                p1 = 1.0 / (1.0 + np.exp(-z.reshape(-1)))
                return np.column_stack([1.0 - p1, p1])
            return _softmax(z)
        return z

    return run


def bundle_from_onnx(
    onnx_bytes: bytes,
    spec: OnnxModelSpec,
    X: npt.ArrayLike,
    *,
    name: str,
    version: int,
    created_at_ms: int,
    holdout_metrics: Mapping[str, float] | None = None,
) -> Bundle:
    """A bundle from a ready ONNX file, its spec and a sample of inputs ``X`` (the
    histograms' and the reference batch's rows)."""
    x = np.asarray(X, dtype=np.float64)
    prepared = prepare_onnx(onnx_bytes, spec)
    try:
        reference = _file_reference(onnx_bytes, prepared, spec)
    except UntrustedContentError:
        raise
    except Exception as exc:
        raise OnnxImportError(f"onnxruntime cannot load the model: {exc}") from exc
    return package_onnx(
        prepared.served,
        prepared.output_name,
        reference,
        name=name,
        version=version,
        task=spec.task,
        classes=spec.classes,
        feature_spec=spec.features,
        X_train=x,
        X_reference=x[: min(len(x), 1000)],
        created_at_ms=created_at_ms,
        holdout_metrics=holdout_metrics,
        reference_what="the ONNX file's outputs",
        max_mismatch_fraction=0.0,
    )
