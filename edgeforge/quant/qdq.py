"""Write a QDQ ONNX model: QuantizeLinear/DequantizeLinear pairs with computed scales.

- Activations: `t -> QuantizeLinear -> DequantizeLinear -> (every quantized consumer of t)`.
  Consumers in `keep_fp` layers keep reading the float tensor. Bits below 8 are exported in an
  8-bit container with a Clip to the narrower range before QuantizeLinear (exact simulation).
- Weights: stored as int8 initializers (per-channel, `axis` on the output channel) followed by a
  DequantizeLinear, so the file holds int8 weights and runtimes see the pattern they fuse. A
  weight shared by several layers (the TorchScript exporter dedups equal initializers) is stored
  once, with one DequantizeLinear per layer, so each layer is a self-contained QDQ node unit.
  Other readers of that initializer (an Add operand, a Reshape) keep reading the float tensor.
- Conv/Gemm bias: int32 with scale s_in * s_w and zero-point 0 (what QLinearConv/QGemm expect),
  one copy per layer, since a bias shared by two layers sees two input scales.

Every name written (nodes, tensors, initializers) is new to the graph: derived from the tensor
it quantizes, reduced to [A-Za-z0-9_] (runtimes differ in what they accept, e.g. ':' is a port
separator for OpenVINO), and suffixed when taken. Consumers are addressed by position, not by
node name, so unnamed or duplicate-named nodes are rewired correctly too.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeforge.quant.placement import GraphIndex, Plan
from edgeforge.quant.quantizers import QParams, quantize_bias, weight_codes


def _np_dtype(qp: QParams):
    return np.int8 if qp.signed else np.uint8


def _graph_names(g: onnx.GraphProto, out: set[str]) -> set[str]:
    """Every node, tensor and initializer name in `g` and its subgraphs."""
    for coll in (g.input, g.output, g.value_info, g.initializer):
        out.update(x.name for x in coll)
    out.update(s.values.name for s in g.sparse_initializer)
    for n in g.node:
        out.add(n.name)
        out.update(n.input)
        out.update(n.output)
        for sub in _subgraphs(n):
            _graph_names(sub, out)
    return out


def _subgraphs(n: onnx.NodeProto):
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _used_in_subgraphs(g: onnx.GraphProto) -> set[str]:
    """Names read inside subgraph bodies (outer-scope initializers must not be dropped)."""
    used: set[str] = set()

    def walk(sub: onnx.GraphProto) -> None:
        for n in sub.node:
            used.update(n.input)
            for s in _subgraphs(n):
                walk(s)

    for n in g.node:
        for s in _subgraphs(n):
            walk(s)
    return used


class Names:
    """Fresh names: sanitised stems, unique against everything already in the graph."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)

    @staticmethod
    def clean(stem: str) -> str:
        return re.sub(r"[^0-9A-Za-z_]+", "_", stem).strip("_") or "t"

    def base(self, stem: str, suffixes: tuple[str, ...]) -> str:
        """A base b such that b + s is free for every suffix s; reserves them all."""
        stem = self.clean(stem)
        b, k = stem, 0
        while any(b + s in self.taken for s in suffixes):
            k += 1
            b = f"{stem}_{k}"
        self.taken.update(b + s for s in suffixes)
        return b


def build_qdq(model: onnx.ModelProto, plan: Plan, act_q: dict[str, QParams],
              weight_q: dict[str, QParams], min_opset: int = 13,
              bias_shift: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Return a new model with QDQ inserted per `plan` (act_q by tensor, weight_q by initializer;
    `bias_shift`: per layer, the bias correction its int32 bias absorbs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _raise_opset(m, min_opset)
    g = m.graph
    idx = GraphIndex(m)
    names = Names(_graph_names(g, set()))
    nodes = list(g.node)
    pos_of: dict[str, list[int]] = {}  # node name -> positions (names may repeat or be empty)
    consumers: dict[str, list[tuple[int, int]]] = {}  # tensor -> (node position, input slot)
    for p, n in enumerate(nodes):
        pos_of.setdefault(n.name, []).append(p)
        for i, t in enumerate(n.input):
            if t:
                consumers.setdefault(t, []).append((p, i))
    kept = {p for name in plan.kept_fp for p in pos_of.get(name, [])}
    new_inits: list[onnx.TensorProto] = []
    after: dict[str, list[onnx.NodeProto]] = {}  # producer tensor -> nodes to insert after it
    prologue: list[onnx.NodeProto] = []  # nodes for graph inputs and initializers (go first)
    rename: dict[tuple[int, int], str] = {}  # (node position, input slot) -> new input

    def init(arr: np.ndarray, name: str) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def params(b: str, qp: QParams) -> tuple[str, str]:
        return (init(np.asarray(qp.scale, np.float32), f"{b}_scale"),
                init(np.asarray(qp.zero_point).astype(_np_dtype(qp)), f"{b}_zero_point"))

    # ---- activations
    for t, qp in act_q.items():
        if qp.kind != "uniform":
            raise ValueError(f"{t}: a {qp.kind} quantizer cannot be written as QuantizeLinear")
        clip = qp.bits < 8
        b = names.base(t, ("_q_scale", "_q_zero_point", "_quantized", "_dequantized", "_QuantizeLinear",
                           "_DequantizeLinear") + (("_clip_lo", "_clip_hi", "_clipped", "_Clip") if clip else ()))
        s_name, z_name = params(f"{b}_q", qp)
        qdq = []
        src = t
        if clip:
            lo, hi = qp.float_range()
            lo_n = init(np.asarray(lo, np.float32), f"{b}_clip_lo")
            hi_n = init(np.asarray(hi, np.float32), f"{b}_clip_hi")
            qdq.append(helper.make_node("Clip", [t, lo_n, hi_n], [f"{b}_clipped"], name=f"{b}_Clip"))
            src = f"{b}_clipped"
        qdq.append(helper.make_node("QuantizeLinear", [src, s_name, z_name], [f"{b}_quantized"],
                                    name=f"{b}_QuantizeLinear"))
        qdq.append(helper.make_node("DequantizeLinear", [f"{b}_quantized", s_name, z_name],
                                    [f"{b}_dequantized"], name=f"{b}_DequantizeLinear"))
        (after.setdefault(t, []) if t in idx.producer else prologue).extend(qdq)
        for p, i in consumers.get(t, []):
            if p not in kept:
                rename[(p, i)] = f"{b}_dequantized"

    # ---- weights: one int8 initializer per weight, one DequantizeLinear per layer reading it
    stored: dict[str, tuple[str, str, str, QParams]] = {}  # initializer -> (int8, scale, zero point, qp)
    for ws in plan.weights:
        slot = _site(nodes, pos_of, ws.node, ws.initializer, rename)
        if slot is None:
            raise ValueError(f"plan: layer {ws.node!r} does not read weight {ws.initializer!r}")
        p, wi = slot
        if ws.initializer not in stored:
            qp = weight_q[ws.initializer]
            w = idx.init_array(ws.initializer).astype(np.float32)
            b = names.base(ws.initializer, ("_quantized", "_scale", "_zero_point"))
            q = init(weight_codes(w, qp).astype(np.int8), f"{b}_quantized")
            stored[ws.initializer] = (q, *params(b, qp), qp)
        q, s_name, z_name, qp = stored[ws.initializer]
        d = names.base(ws.initializer, ("_dequantized", "_DequantizeLinear"))
        prologue.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [f"{d}_dequantized"],
                                         name=f"{d}_DequantizeLinear",
                                         **({"axis": qp.axis} if qp.per_channel else {})))
        rename[(p, wi)] = f"{d}_dequantized"
        node = nodes[p]
        if ws.bias is None or ws.act_input not in act_q or ws.bias not in node.input[2:3]:
            continue
        bias = idx.init_array(ws.bias)
        if not _int32_bias_fits(bias, qp):
            continue  # a broadcast Gemm C (e.g. (1, N)) stays float: DequantizeLinear needs 1-D per axis
        bq, bscale = quantize_bias(bias, float(act_q[ws.act_input].scale), qp.scale,
                                   (bias_shift or {}).get(ws.node))
        bb = names.base(f"{ws.node or node.op_type}_bias",
                        ("_quantized", "_scale", "_zero_point", "_dequantized", "_DequantizeLinear"))
        init(bq, f"{bb}_quantized")
        init(bscale, f"{bb}_scale")
        init(np.zeros(bias.shape, np.int32), f"{bb}_zero_point")
        prologue.append(helper.make_node(
            "DequantizeLinear", [f"{bb}_quantized", f"{bb}_scale", f"{bb}_zero_point"],
            [f"{bb}_dequantized"], name=f"{bb}_DequantizeLinear", axis=0))
        rename[(p, 2)] = f"{bb}_dequantized"

    # ---- rewire consumers and rebuild the node list in topological order
    out_nodes = list(prologue)
    for p, n in enumerate(nodes):
        for i in range(len(n.input)):
            r = rename.get((p, i))
            if r is not None:
                n.input[i] = r
        out_nodes.append(n)
        for o in n.output:
            out_nodes.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(out_nodes)
    # drop float weights no longer read (by a node, a subgraph, or as a graph output), and their
    # graph-input entries (IR < 4 files list initializers as inputs too: left behind, a dropped
    # initializer would turn into a required input)
    used = {t for n in g.node for t in n.input} | _used_in_subgraphs(g) | {o.name for o in g.output}
    dropped = {i.name for i in g.initializer if i.name not in used}
    keep_inits = [i for i in g.initializer if i.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    g.initializer.extend(new_inits)
    if dropped:
        keep_inputs = [i for i in g.input if i.name not in dropped]
        del g.input[:]
        g.input.extend(keep_inputs)
    return m


def _site(nodes, pos_of, node_name: str, initializer: str, rename) -> tuple[int, int] | None:
    """(position, slot) of the first not-yet-rewired weight input `initializer` of a node named
    `node_name`: two unnamed layers sharing a weight are told apart by position."""
    for p in pos_of.get(node_name, []):
        n = nodes[p]
        if len(n.input) > 1 and n.input[1] == initializer and (p, 1) not in rename:
            return p, 1  # placement puts every weight in slot 1 (Conv W, Gemm B, MatMul B)
    return None


def _int32_bias_fits(bias: np.ndarray, qp: QParams) -> bool:
    if bias.ndim != 1:
        return False
    n = np.asarray(qp.scale).size
    return n == 1 or n == bias.shape[0]


def _raise_opset(m: onnx.ModelProto, min_opset: int) -> None:
    """Per-channel DequantizeLinear needs opset >= 13: convert older models (ops such as Squeeze
    changed their signature at 13, so raising the number alone would make an invalid model)."""
    cur = next((op.version for op in m.opset_import if op.domain in ("", "ai.onnx")), None)
    if cur is None or cur >= min_opset:
        return
    from onnx import version_converter

    try:
        conv = version_converter.convert_version(m, min_opset)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise ValueError(f"opset {cur} model: cannot convert it to opset {min_opset}, which QDQ with "
                         f"per-channel weights needs ({e}); export with opset >= {min_opset}") from e
    m.CopyFrom(conv)
