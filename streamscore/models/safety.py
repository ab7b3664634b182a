"""The ONNX safety scan: what a served graph may contain.

ONNX is a protobuf graph: loading it executes no code. On top of that, every graph is
scanned (:func:`check_onnx_safety`) before the ONNX checker or onnxruntime sees it:
operator domains outside :data:`ALLOWED_DOMAINS`, tensors with external data (they read
files by path), model-local functions and training info are rejected with
:class:`~streamscore.core.errors.UntrustedContentError`. Subgraphs (``If``, ``Loop``...)
are scanned too.

Pure: it reads a parsed ``onnx.ModelProto``; no I/O.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import UntrustedContentError

__all__ = ["ALLOWED_DOMAINS", "check_onnx_safety"]

#: ONNX operator domains a served graph may use ("" is the default ai.onnx domain).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


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
