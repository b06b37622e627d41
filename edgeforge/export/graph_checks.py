"""Small read-only queries over an ONNX graph (used in manifests and tests)."""

from __future__ import annotations

from collections import Counter

import onnx


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}::{n.op_type}"
                               for n in model.graph.node).items()))


def operator_count(model: onnx.ModelProto) -> int:
    """Nodes that compute: all but Constant nodes, which are data (onnxslim and ONNX Runtime turn
    them into initializers). The exporter's constant folding emits one Constant per use of a
    frozen table, so raw node counts grow when deploy transforms freeze tables even though the
    graph computes less; this count is what "the transforms left the graph simpler" is judged on."""
    return sum(1 for n in model.graph.node if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")))


def gathers_over_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of Gather nodes whose data input is a constant (initializer or Constant node).

    These are what deploy transforms must remove: constant folding leaves them, and TensorRT
    cannot calibrate a constant that flows through a Gather.
    """
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name or n.output[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in consts]


def io_spec(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Inputs/outputs as [{name, shape (ints or dim names), dtype}]."""

    def spec(vi):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": vi.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    inits = {i.name for i in model.graph.initializer}
    return [spec(i) for i in model.graph.input if i.name not in inits], [spec(o) for o in model.graph.output]
