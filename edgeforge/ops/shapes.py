"""Type and shape inference for the `edgeforge::` nodes (torch-free).

ONNX's shape inference knows nothing of a custom domain, and the torch exporter stores types for
only a few tensors of a plugin-mode graph. Tools that read the types stored in the file then give
up at the custom nodes' inputs and outputs (onnxslim's graph surgeon: "Graph input and output
tensors must include dtype information ... /temporal/block/rg_lru/Reshape_output_0", the input of
TRecViT's LinearScan). `annotate(model)` stores the types and shapes of every tensor: ONNX's own
inference alternated with the custom nodes' rules below until nothing changes, so the saved file
describes itself to any tool:

  LinearScan(a, b[, h0])                 -> h: b's type and shape (B, T, C); h_last: (B, C)
  GatedAttention(q, k, v[, bias][, log_f]) -> o: q's type, shape (B, H, N, Dv) = q[:3] + v[3:]

`output_shapes(node, input_shapes)` is the same rule on plain shapes (ints or symbol names), the
reference the TensorRT plugins' getOutputShapes is checked against.
"""

from __future__ import annotations

import copy

import onnx
from onnx import TypeProto, ValueInfoProto

from edgeforge.ops import schema

Dim = int | str | None  # a size, a symbol, or unknown


def output_shapes(op_type: str, input_shapes: list[list[Dim] | None]) -> list[list[Dim] | None]:
    """Output shapes of an edgeforge op from its input shapes (None where a rank is unknown)."""
    if op_type == schema.LINEAR_SCAN:
        b = input_shapes[1] if len(input_shapes) > 1 else None
        if b is None or len(b) != 3:
            return [None, None]
        return [list(b), [b[0], b[2]]]
    if op_type == schema.GATED_ATTENTION:
        q = input_shapes[0]
        v = input_shapes[2] if len(input_shapes) > 2 else None
        if q is None or v is None or len(q) != 4 or len(v) != 4:
            return [None]
        return [[q[0], q[1], q[2], v[3]]]
    raise ValueError(f"not an edgeforge op: {op_type}")


def _type_of(name: str, known: dict[str, TypeProto]) -> TypeProto | None:
    return known.get(name)


def _shape(tp: TypeProto | None) -> list[Dim] | None:
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tp.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None))
    return dims


def _make_type(elem_type: int, shape: list[Dim] | None) -> TypeProto:
    tp = TypeProto()
    tp.tensor_type.elem_type = elem_type
    if shape is not None:
        tp.tensor_type.shape.SetInParent()
        for d in shape:
            dim = tp.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str) and d:
                dim.dim_param = d
    return tp


def _known_types(graph: onnx.GraphProto) -> dict[str, TypeProto]:
    known: dict[str, TypeProto] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            known[vi.name] = vi.type
    for init in graph.initializer:
        known.setdefault(init.name, _make_type(init.data_type, list(init.dims)))
    return known


def node_output_types(node: onnx.NodeProto, known: dict[str, TypeProto]) -> list[TypeProto | None]:
    """Output types of one edgeforge node given the types known so far (None where not yet known)."""
    ins = [_type_of(n, known) if n else None for n in node.input]
    # The element type follows the first input (q, or a): the ops compute in their inputs' type.
    elem = next((t.tensor_type.elem_type for t in ins[:1] if t is not None and t.tensor_type.elem_type), 0)
    if not elem:
        return [None] * len(node.output)
    shapes = output_shapes(node.op_type, [_shape(t) for t in ins])
    return [_make_type(elem, s) for s in shapes][: len(node.output)]


def annotate(model: onnx.ModelProto, max_rounds: int = 8) -> onnx.ModelProto:
    """A copy of `model` whose edgeforge nodes' outputs (and what ONNX infers from them) are typed.

    Alternates ONNX shape inference with the edgeforge rules until no new type appears: a custom
    node whose inputs come from another custom node gets its types in a later round. Models
    without edgeforge nodes come back as ONNX's inference leaves them.
    """
    m = copy.deepcopy(model)
    if not any(n.domain == schema.DOMAIN for n in m.graph.node):
        return m
    for _ in range(max_rounds):
        try:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: keep what the rules give
            pass
        graph = m.graph
        known = _known_types(graph)
        outputs = {o.name for o in graph.output}
        added = 0
        for node in graph.node:
            if node.domain != schema.DOMAIN or node.op_type not in (schema.LINEAR_SCAN, schema.GATED_ATTENTION):
                continue
            for name, tp in zip(node.output, node_output_types(node, known)):
                if tp is None or not name or name in known:
                    continue
                if name in outputs:  # a graph output without a type: fill it in place
                    for o in graph.output:
                        if o.name == name:
                            o.type.CopyFrom(tp)
                else:
                    graph.value_info.append(ValueInfoProto(name=name, type=tp))
                known[name] = tp
                added += 1
        if added == 0:
            break
    return m


def untyped_tensors(model: onnx.ModelProto, infer: bool = True) -> list[str]:
    """Names of node outputs without an element type: after ONNX inference on `model` (infer), or
    as stored in the file (not infer: what a tool reading the file without running inference, as
    onnxslim's graph surgeon does, sees). An empty list when every tensor is typed."""
    m = onnx.shape_inference.infer_shapes(model, strict_mode=False) if infer else model
    known = _known_types(m.graph)
    return [o for n in m.graph.node for o in n.output if o and o not in known]
