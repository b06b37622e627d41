"""Write a QDQ ONNX model: QuantizeLinear/DequantizeLinear pairs with computed scales.

- Activations: `t -> QuantizeLinear -> DequantizeLinear -> (every quantized consumer of t)`.
  Consumers in `keep_fp` layers keep reading the float tensor. Bits below 8 are exported in an
  8-bit container with a Clip to the narrower range before QuantizeLinear (exact simulation).
- Weights: stored as int8 initializers (per-channel, `axis` on the output channel) followed by a
  DequantizeLinear, so the file holds int8 weights and runtimes see the pattern they fuse.
- Conv/Gemm bias: int32 with scale s_in * s_w and zero-point 0 (what QLinearConv/QGemm expect).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeforge.quant.placement import GraphIndex, Plan
from edgeforge.quant.quantizers import QParams, quantize, quantize_bias


def _np_dtype(qp: QParams):
    return np.int8 if qp.signed else np.uint8


def build_qdq(model: onnx.ModelProto, plan: Plan, act_q: dict[str, QParams],
              weight_q: dict[str, QParams], min_opset: int = 13) -> onnx.ModelProto:
    """Return a new model with QDQ inserted per `plan` (act_q by tensor, weight_q by initializer)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    idx = GraphIndex(m)
    kept = set(plan.kept_fp)
    new_inits: list[onnx.TensorProto] = []
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # producer tensor -> nodes to insert after it
    prologue: list[onnx.NodeProto] = []  # nodes for graph inputs and initializers (go first)
    rename: dict[tuple[str, int], str] = {}  # (consumer node name, input index) -> new input

    def params(prefix: str, qp: QParams, bias_scale=None):
        s_name, z_name = f"{prefix}_scale", f"{prefix}_zero_point"
        new_inits.append(numpy_helper.from_array(np.asarray(qp.scale, np.float32), s_name))
        new_inits.append(numpy_helper.from_array(np.asarray(qp.zero_point).astype(_np_dtype(qp)), z_name))
        return s_name, z_name

    # ---- activations
    for t, qp in act_q.items():
        if qp.kind != "uniform":
            raise ValueError(f"{t}: a {qp.kind} quantizer cannot be written as QuantizeLinear")
        safe = t.replace("/", "_").strip("_") or "t"
        s_name, z_name = params(f"{safe}_q", qp)
        nodes = []
        src = t
        if qp.bits < 8:
            lo, hi = qp.float_range()
            lo_n, hi_n = f"{safe}_clip_lo", f"{safe}_clip_hi"
            new_inits.append(numpy_helper.from_array(np.asarray(lo, np.float32), lo_n))
            new_inits.append(numpy_helper.from_array(np.asarray(hi, np.float32), hi_n))
            nodes.append(helper.make_node("Clip", [t, lo_n, hi_n], [f"{safe}_clipped"], name=f"{safe}_Clip"))
            src = f"{safe}_clipped"
        nodes.append(helper.make_node("QuantizeLinear", [src, s_name, z_name], [f"{safe}_quantized"],
                                      name=f"{safe}_QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{safe}_quantized", s_name, z_name],
                                      [f"{safe}_dequantized"], name=f"{safe}_DequantizeLinear"))
        if t in idx.producer:
            new_nodes.setdefault(t, []).extend(nodes)
        else:
            prologue.extend(nodes)
        for node, i in idx.consumers.get(t, []):
            if node.name in kept:
                continue
            rename[(node.name, i)] = f"{safe}_dequantized"

    # ---- weights and biases
    for ws in plan.weights:
        qp = weight_q[ws.initializer]
        w = idx.init_array(ws.initializer).astype(np.float32)
        q = quantize(w, qp).astype(np.int8)
        safe = ws.initializer.replace("/", "_").replace(".", "_")
        qname = f"{safe}_quantized"
        new_inits.append(numpy_helper.from_array(q, qname))
        s_name, z_name = params(safe, qp)
        dq = helper.make_node("DequantizeLinear", [qname, s_name, z_name], [f"{safe}_dequantized"],
                              name=f"{safe}_DequantizeLinear", **({"axis": qp.axis} if qp.per_channel else {}))
        prologue.append(dq)
        node = next(n for n in g.node if n.name == ws.node)
        slot = list(node.input).index(ws.initializer)
        rename[(node.name, slot)] = f"{safe}_dequantized"
        if ws.bias is not None and ws.act_input in act_q:
            b = idx.init_array(ws.bias)
            bq, bscale = quantize_bias(b, float(act_q[ws.act_input].scale), qp.scale)
            bsafe = (ws.node + "_bias").replace("/", "_").replace(".", "_").strip("_")
            new_inits.append(numpy_helper.from_array(bq, f"{bsafe}_quantized"))
            new_inits.append(numpy_helper.from_array(bscale, f"{bsafe}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(b.shape, np.int32), f"{bsafe}_zero_point"))
            prologue.append(helper.make_node(
                "DequantizeLinear", [f"{bsafe}_quantized", f"{bsafe}_scale", f"{bsafe}_zero_point"],
                [f"{bsafe}_dequantized"], name=f"{bsafe}_DequantizeLinear", axis=0))
            rename[(node.name, list(node.input).index(ws.bias))] = f"{bsafe}_dequantized"

    # ---- rewire consumers and rebuild the node list in topological order
    out_nodes = list(prologue)
    for n in g.node:
        for i, t in enumerate(n.input):
            r = rename.get((n.name, i))
            if r is not None:
                n.input[i] = r
        out_nodes.append(n)
        for o in n.output:
            out_nodes.extend(new_nodes.get(o, []))
    del g.node[:]
    g.node.extend(out_nodes)
    # drop float weights now unused
    used = {t for n in g.node for t in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    g.initializer.extend(new_inits)
    # per-channel DequantizeLinear needs opset >= 13
    for op in m.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < min_opset:
            op.version = min_opset
    return m
