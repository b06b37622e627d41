"""Where the quantization error comes from: per-layer SQNR and cosine, FP32 vs quantized.

- accumulated: each layer's output in the QDQ model (every quantizer before it active) against
  the FP32 model's, on the same inputs;
- alone: each layer recomputed from FP32 inputs with only its own quantizers (activation inputs
  and weight) applied, so one layer's sensitivity is not hidden by the error it inherits.
The sensitivity ranking sorts layers by their SQNR alone (lowest first): the candidates for
`--keep-fp`.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.placement import GraphIndex, _attr, module_path
from edgeforge.quant.quantizers import QParams, cosine, fake_quant, sqnr_db


def _run_node(node: onnx.NodeProto, ins: list[np.ndarray | None]) -> np.ndarray:
    """Evaluate one Conv/MatMul/Gemm node in torch (float64 off: float32 like the runtimes)."""
    t = [torch.from_numpy(np.ascontiguousarray(a)) if a is not None else None for a in ins]
    if node.op_type == "MatMul":
        return torch.matmul(t[0], t[1]).numpy()
    if node.op_type == "Gemm":
        a = t[0].T if _attr(node, "transA", 0) else t[0]
        b = t[1].T if _attr(node, "transB", 0) else t[1]
        y = _attr(node, "alpha", 1.0) * (a @ b)
        if len(t) > 2 and t[2] is not None:
            y = y + _attr(node, "beta", 1.0) * t[2]
        return y.numpy()
    # Conv
    x, w = t[0], t[1]
    b = t[2] if len(t) > 2 else None
    nd = w.dim() - 2
    strides = _attr(node, "strides", [1] * nd)
    dil = _attr(node, "dilations", [1] * nd)
    pads = _attr(node, "pads", [0] * (2 * nd))
    group = _attr(node, "group", 1)
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # ONNX rule: output = ceil(in / stride); the odd pixel goes at the end (UPPER) or start (LOWER).
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            kernel = (w.shape[2 + i] - 1) * dil[i] + 1
            total = max(0, (-(-size // strides[i]) - 1) * strides[i] + kernel - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    if list(pads[:nd]) == list(pads[nd:]):
        padding = list(pads[:nd])
    else:  # asymmetric padding: pad explicitly (F.pad takes last dim first)
        fp = []
        for i in reversed(range(nd)):
            fp += [pads[i], pads[i + nd]]
        x = F.pad(x, fp)
        padding = [0] * nd
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=strides, padding=padding, dilation=dil, groups=group).numpy()


def analyze(prepared: onnx.ModelProto, qmodel: onnx.ModelProto, plan, act_q: dict[str, QParams],
            weight_q: dict[str, QParams], x: np.ndarray) -> dict:
    """Per-layer error table (list of dicts, graph order) plus the model output's error."""
    idx = GraphIndex(prepared)
    nodes = {n.name: n for n in prepared.graph.node}
    layers = [nodes[n] for n in plan.layers]
    w_of = {w.node: w for w in plan.weights}
    outs = [n.output[0] for n in layers]
    ins = sorted({t for n in layers for t in n.input[:2] if t and not idx.is_const(t)})
    graph_out = [o.name for o in prepared.graph.output]
    fp = run_outputs(prepared, x, list(dict.fromkeys(outs + ins + graph_out)))
    qt = run_outputs(qmodel, x, list(dict.fromkeys(outs + graph_out)))
    rows = []
    for n in layers:
        ref = fp[n.output[0]]
        acc = qt[n.output[0]]
        # alone: this layer's quantizers only, from FP32 inputs
        args = []
        for i, t in enumerate(n.input):
            if not t:
                args.append(None)
            elif idx.is_const(t):
                w = idx.init_array(t).astype(np.float32)
                ws = w_of.get(n.name)
                if ws is not None and ws.initializer == t:
                    w = fake_quant(w, weight_q[t])
                args.append(w)
            else:
                v = fp[t]
                qp = act_q.get(idx.source(t))
                args.append(fake_quant(v, qp) if qp is not None else v)
        batch_alone = _run_node(n, args)  # samples are stacked on the batch axis
        rows.append({"layer": n.name, "module": module_path(n.name), "op": n.op_type,
                     "sqnr_alone_db": _r(sqnr_db(ref, batch_alone)), "cosine_alone": _r(cosine(ref, batch_alone), 6),
                     "sqnr_accumulated_db": _r(sqnr_db(ref, acc)), "cosine_accumulated": _r(cosine(ref, acc), 6)})
    out_err = {o: {"sqnr_db": _r(sqnr_db(fp[o], qt[o])), "cosine": _r(cosine(fp[o], qt[o]), 6)} for o in graph_out}
    ranking = [r["layer"] for r in sorted(rows, key=lambda r: (r["sqnr_alone_db"] if r["sqnr_alone_db"] is not None
                                                                else float("inf")))]
    return {"samples": int(len(x)), "layers": rows, "outputs": out_err, "sensitivity_ranking": ranking}


def _r(v: float, nd: int = 2):
    if v is None or not np.isfinite(v):
        return None if v is None or np.isnan(v) else 999.0
    return round(float(v), nd)
