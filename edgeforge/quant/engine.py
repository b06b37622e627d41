"""Post-training quantization of an FP32 ONNX model: place, calibrate, write QDQ.

`quantize_onnx(model, x, method, scheme)`:
1. exact graph passes (Constant -> initializer, per-channel layer-scale Mul folded into its Conv),
2. the method's exact rewrites (`methods.<name>.rewrite`, e.g. repquant's LayerNorm folding),
3. placement (`placement.plan`),
4. calibration: ONNX Runtime runs the FP32 model over the calibration samples and every
   activation quantizer's observer (the method's) watches its tensor,
5. weights quantized per channel (symmetric int8 container, `bits` wide) by the method,
6. the method's refinement of the calibrated quantizers (e.g. qhyvit's scale search),
7. QDQ written (`qdq.build_qdq`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeforge.quant import placement
from edgeforge.quant.calibrate import observe
from edgeforge.quant import methods as qmethods
from edgeforge.quant.observers import Observer, observer_for, weight_params
from edgeforge.quant.overflow import Layer, layer_for, make_safe, max_activation_code
from edgeforge.quant.qdq import build_qdq
from edgeforge.quant.bias_correction import layer_shift
from edgeforge.quant.quantizers import QParams, dequantize, fit_inside, weight_codes
from edgeforge.quant.scheme import Scheme, convert_for_target


@dataclass
class QuantizedOnnx:
    model: onnx.ModelProto  # the QDQ model
    prepared: onnx.ModelProto  # the FP32 model after the exact graph passes (analysis compares to it)
    plan: placement.Plan
    act_q: dict[str, QParams]
    weight_q: dict[str, QParams]
    graph_passes: dict
    timings: dict = field(default_factory=dict)
    bias_shift: dict = field(default_factory=dict)  # layer -> mean output shift corrected in its bias
    method_info: dict = field(default_factory=dict)  # what the method's rewrite/refine did (quant.json)
    sim_params: object = None  # what the torch simulation needs of the method's choices (Method.apply_torch)

    def quantizers_json(self) -> dict:
        acts = {t: {**qp.to_json(), "roles": sorted(self.plan.acts[t].roles)} for t, qp in self.act_q.items()}
        ws = {}
        for w in self.plan.weights:
            ws[w.initializer] = {**self.weight_q[w.initializer].to_json(), "layer": w.node,
                                 "module": placement.module_path(w.node),
                                 "bias": "int32, scale = s_in * s_w" if w.bias else None}
        return {"activations": acts, "weights": ws}


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name (QDQ rewiring and --keep-fp address nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.name or n.op_type}_{i}"
        seen.add(n.name)


def prepare(model: onnx.ModelProto, runtime: str = "onnxruntime") -> tuple[onnx.ModelProto, dict]:
    """Copy of the model with the exact passes applied; returns it and what each pass changed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    ensure_node_names(m)
    passes = {"constants_to_initializers": placement.constants_to_initializers(m),
              "bypass_identities": placement.bypass_identities(m),
              "fold_channel_scales": placement.fold_channel_scales(m)}
    if runtime == "onnxruntime":
        # before fuse_gelu: shape inference (which this pass needs) stops at com.microsoft ops
        passes["matmul_add_to_gemm"] = placement.matmul_add_to_gemm(m)
        passes["fuse_gelu"] = placement.fuse_gelu(m)
    return m, passes


def kernel_layer(node: onnx.NodeProto, w: np.ndarray) -> Layer | None:
    """How weight `w` of `node` meets its kernel's reduction (for the 16-bit pair constraint)."""
    trans_b = bool(next((a.i for a in node.attribute if a.name == "transB"), 0))
    found = layer_for(node.op_type, w.shape, trans_b)
    return found[0] if found else None


def weight_shift(node: onnx.NodeProto, w: np.ndarray, qp: QParams, x_mean: np.ndarray | None) -> np.ndarray | None:
    """The mean output shift rounding `node`'s weight causes (None where it is not computed here:
    no mean input, explicit auto_pad, a weight layout other than Conv/Gemm)."""
    if x_mean is None:
        return None
    dw = dequantize(weight_codes(w, qp), qp).astype(np.float64) - w.astype(np.float64)
    attr = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        if attr.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        nd = w.ndim - 2
        pads = list(attr.get("pads", [0] * (2 * nd)))
        xm = np.pad(x_mean, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
        return layer_shift(xm, dw, "conv", attr.get("strides"), None, attr.get("dilations"), attr.get("group", 1))
    if node.op_type == "Gemm" and w.ndim == 2:
        return layer_shift(x_mean, dw, "linear", trans_b=bool(attr.get("transB", 0)))
    return None


def quantize_onnx(model: onnx.ModelProto, x: np.ndarray, method: str, scheme: Scheme,
                  keep_fp: list[str] = (), norm_inputs: bool = False, weight_observer: str | None = None,
                  percentile: float = 99.99, console=None, show_progress: bool = True,
                  bias_correction: bool = True, torch_model=None,
                  weight_rounding: str | None = None, output_kind: str = "auto") -> QuantizedOnnx:
    """Quantize `model` with calibration samples `x` (N, ...) by the registered method `method`.
    `torch_model`: a callable returning the FP32 torch model the ONNX came from (methods that
    need gradients use it), or None. `output_kind`: "logits", "embedding" or "auto" (methods that
    compare model outputs use it; see output_search.output_loss)."""
    meth = qmethods.get(method)
    if meth.engine != "edgeforge":
        raise ValueError(f"method {method!r} is not run by this engine (engine {meth.engine!r})")
    t0 = time.perf_counter()
    prepared, passes = prepare(model, scheme.runtime)
    ctx = qmethods.Context(prepared, x, scheme, console, show_progress, torch_model, output_kind=output_kind)
    meth.rewrite(ctx)
    prepared = ctx.model
    plan = placement.plan(prepared, list(keep_fp), norm_inputs=norm_inputs)
    ctx.plan = plan
    t_plan = time.perf_counter()
    idx = placement.GraphIndex(prepared)
    act_observer = meth.activation_observer(scheme)
    observers = {t: Observer(observer_for(act_observer, idx.producer[t].op_type if t in idx.producer else None),
                             percentile=percentile) for t in plan.acts}
    nodes = {n.name: n for n in prepared.graph.node}
    # bias correction needs each corrected layer's mean input (see bias_correction.py)
    corrected = [ws for ws in plan.weights if bias_correction and ws.bias is not None]
    means: dict[str, np.ndarray | None] = {nodes[ws.node].input[0]: None for ws in corrected}
    observe(prepared, x, observers, console=console, show_progress=show_progress,
            desc=f"calibrating ({method}, {len(x)} samples)", means=means)
    t_cal = time.perf_counter()
    act_q = {}
    for t, ob in observers.items():
        qp = ob.params(scheme.act_bits, scheme.act_symmetric, scheme.act_signed)
        qp = convert_for_target(qp, scheme, f"activation {t}")
        clip = plan.acts[t].clip
        act_q[t] = fit_inside(qp, *clip) if clip else qp
    weight_q = {}
    for ws in plan.weights:
        w = idx.init_array(ws.initializer)
        axis = ws.axis if scheme.weight_per_channel else None
        qp = weight_params(w, scheme.stored_weight_bits, weight_observer, axis) if weight_observer else \
            meth.weight_params(w, scheme.stored_weight_bits, axis)
        if scheme.overflow_fix == "pairs":
            layer = kernel_layer(nodes[ws.node], w)
            if layer is not None:  # the torch simulation applies the same fix to the same weights
                qp = make_safe(w, qp, layer, max_activation_code(scheme.act_bits, scheme.act_signed), ws.axis)
        weight_q[ws.initializer] = qp

    def bias_shifts(wq: dict) -> dict[str, np.ndarray]:
        """Each corrected layer's bias shift for weights quantized as `wq` (bias_correction.py)."""
        out = {}
        for ws in corrected:
            node = nodes[ws.node]
            shift = weight_shift(node, idx.init_array(ws.initializer), wq[ws.initializer], means[node.input[0]])
            if shift is not None:
                out[ws.node] = shift
        return out

    ctx.act_q, ctx.weight_q, ctx.observers, ctx.bias_shifts = act_q, weight_q, observers, bias_shifts
    meth.refine(ctx)
    act_q, weight_q = ctx.act_q, ctx.weight_q
    rounding = weight_rounding or meth.weight_rounding
    if rounding not in ("nearest", "gptq"):
        raise ValueError(f"weight rounding {rounding!r}: accepted nearest, gptq")
    if rounding == "gptq":
        from edgeforge.quant.gptq import reconstruct

        ctx.info["weight_reconstruction"] = reconstruct(prepared, x, plan, weight_q, scheme, console, show_progress)
    shifts = bias_shifts(weight_q)
    t_w = time.perf_counter()
    qmodel = build_qdq(prepared, plan, act_q, weight_q, bias_shift=shifts)
    t_end = time.perf_counter()
    timings = {"plan_s": t_plan - t0, "calibrate_s": t_cal - t_plan, "weights_s": t_w - t_cal,
               "write_s": t_end - t_w, "total_s": t_end - t0}
    sim_params = ctx.info.pop("_sim_params", None)
    return QuantizedOnnx(qmodel, prepared, plan, act_q, weight_q, passes, timings, shifts, ctx.info, sim_params)
