"""`repquant` (RepQ-ViT / RepQuant, arXiv 2402.05628): for plain ViTs (DeiT, SiT, RMT, DINOv2).

- Post-LayerNorm activations are calibrated per channel and reparameterized exactly into a
  per-tensor quantizer by rewriting the LayerNorm affine and the next linear layer
  (`quant/reparam.py`; the function is unchanged before quantization).
- Post-softmax activations: the log-sqrt2 quantizer has no QuantizeLinear form, and no target
  edgeforge deploys to lists a log quantizer kernel, so they get the best deployable form. Uniform
  8-bit gives attention weights of 257 tokens (mostly ~1/257) a step of 1/255: on DINOv2 it is
  the largest error in the model (embedding cosine 0.989 with it, 0.998 with softmax outputs left
  in float, everything else the same). So the attention-probability x V product runs with the
  probabilities in float (the target's float precision: FP32 on CPU, FP16 on GPU), and quant.json
  records, per softmax, the SQNR of that product with uniform 8-bit, log-sqrt2 (what the method
  would use on a target that ran it) and float probabilities, measured on calibration samples.
- Weights: per output channel, the clipping that minimises the L2 error among the 99.9th,
  99.99th and 99.999th percentiles of |w| and max|w| (RepQ-ViT's initialisation); below 8 bits
  the MSE clip search. Then GPTQ rounding (quant/gptq.py), the quantized-weight reconstruction.
- Other activations: min/max at 8 bits, the MSE range search below.
"""

from __future__ import annotations

import numpy as np

from edgeforge.quant.methods import Context, Method, register_method

WEIGHT_PERCENTILES = (99.9, 99.99, 99.999, 100.0)
# the quantizer kinds a target profile may list under `quantization.softmax` (none does today)
LOG_SOFTMAX_KINDS = ("logsqrt2", "log2")


@register_method
class RepQuant(Method):
    name = "repquant"
    summary = "RepQ-ViT: per-channel post-LayerNorm ranges folded into per-tensor ones; percentile weights"
    # min/max, not percentile: ViTs such as DINOv2 carry a few huge activations that matter
    # (DINOv2 ViT-S/14, nearest-neighbour agreement on 200 photo crops, AMD EPYC: minmax 0.74,
    # mse 0.73, percentile 0.54 under this method)
    observer = "minmax"
    weight_rounding = "gptq"  # RepQuant's quantized-weight reconstruction (quant/gptq.py)

    def rewrite(self, ctx: Context) -> None:
        from edgeforge.quant.reparam import reparam_onnx

        s = ctx.scheme
        folded = reparam_onnx(ctx.model, ctx.x, s.act_bits, s.act_symmetric, s.act_signed, ctx.console,
                              ctx.show_progress)
        ctx.info["reparameterized_norms"] = {k: {"channels": v["channels"], "linears": v["linears"],
                                                 **{kk: vv for kk, vv in v["qparams"].to_json().items()
                                                    if kk in ("scale", "zero_point", "channel_scale_ratio_range")}}
                                             for k, v in folded.items()}
        ctx.info["_forced"] = folded  # consumed by refine (not written)

    def rewrite_torch(self, gm, x, scheme) -> dict:
        from edgeforge.quant.reparam import reparam_torch
        from edgeforge.quant.torch_sim import _is_softmax

        from edgeforge.quant.torch_sim import MATMULS, _source, _users_forward

        forced = reparam_torch(gm, x, scheme.act_bits, scheme.act_symmetric, scheme.act_signed)
        if _log_softmax_kind(scheme):
            return forced
        # as refine() decides for the engine: softmax outputs stay float, and so does V where
        # A @ V products are its only readers
        soft = {n for n in gm.graph.nodes if _is_softmax(n)}
        forced.update({n.name: None for n in soft})

        def reads_softmax(mm):
            return any(isinstance(a, type(mm)) and _source(gm, a) in soft for a in mm.args[:2])

        for n in gm.graph.nodes:
            readers = _users_forward(gm, n)
            if n not in soft and readers and all(u.op == "call_function" and u.target in MATMULS and
                                                 reads_softmax(u) for u in readers):
                forced[n.name] = None
        return forced

    def activation_observer(self, scheme) -> str:
        # below 8 bits min/max spends the few levels on the extremes: the MSE range search there
        return self.observer if scheme.act_bits >= 8 else "mse"

    def weight_params(self, w: np.ndarray, bits: int, axis: int | None):
        if bits < 8:  # a 15- or 63-level grid: the finer MSE clip search beats the percentile candidates
            from edgeforge.quant.observers import weight_params

            return weight_params(w, bits, "mse", axis)
        return percentile_weight_params(w, bits, axis)

    def refine(self, ctx: Context) -> None:
        from edgeforge.quant.scheme import convert_for_target

        folded = ctx.info.pop("_forced", {})
        placed = 0
        for norm, f in folded.items():
            for t in f["chain"]:
                if t in ctx.act_q:
                    ctx.act_q[t] = convert_for_target(f["qparams"], ctx.scheme, f"activation {t}")
                    placed += 1
        ctx.info["per_tensor_quantizers_placed"] = placed
        log_kind = _log_softmax_kind(ctx.scheme)
        if log_kind:
            ctx.info["softmax_quantizer"] = {"used": log_kind, "why": f"target {ctx.scheme.target} runs it"}
            return
        from edgeforge.quant.placement import GraphIndex

        idx = GraphIndex(ctx.model)
        soft = [t for t in ctx.act_q if t in idx.producer and idx.producer[t].op_type == "Softmax"]
        ctx.info["softmax_quantizer"] = {
            "used": "float (attention probabilities x V in the target's float precision)" if soft else None,
            "why": f"log-sqrt2 has no QuantizeLinear form and target {ctx.scheme.target} lists no log quantizer "
                   "kernel; uniform 8-bit loses the many small probabilities (see sqnr_db)",
            "sqnr_db": softmax_product_sqnr(ctx.model, ctx.x[:8], soft, ctx.act_q, ctx.scheme.act_bits)}
        for t in soft:
            del ctx.act_q[t]
            ctx.plan.acts.pop(t, None)
        # V of A @ V: with A in float the product has no integer kernel, so quantizing V only adds
        # error; it stays float too where A @ V products are its only readers
        dropped = []
        for t in list(ctx.act_q):
            readers = idx.forward_consumers(t)
            if readers and all(n.op_type == "MatMul" and any(idx.source(i) in soft or i in soft for i in n.input)
                               for n in readers):
                del ctx.act_q[t]
                ctx.plan.acts.pop(t, None)
                dropped.append(t)
        ctx.info["softmax_quantizer"]["values_kept_float"] = len(dropped)


def _log_softmax_kind(scheme) -> str | None:
    allowed = (scheme.constraints or {}).get("softmax") or []
    return next((k for k in LOG_SOFTMAX_KINDS if k in allowed), None)


def softmax_product_sqnr(model, x: np.ndarray, softmax_outputs: list[str], act_q: dict, bits: int) -> dict:
    """Per softmax output A read by a MatMul A @ V: the SQNR (dB) of A @ V when A is quantized
    uniformly (its calibrated quantizer) or by log-sqrt2 (amax 1), against float A."""
    from edgeforge.quant.calibrate import input_name, session, with_outputs
    from edgeforge.quant.placement import GraphIndex
    from edgeforge.quant.quantizers import fake_quant, log_fake_quant, log_params, sqnr_db

    idx = GraphIndex(model)
    pairs = {}
    for a in softmax_outputs:
        mm = [n for n in idx.forward_consumers(a) if n.op_type == "MatMul"]
        if mm:
            pairs[a] = mm[0].input[1]
    if not pairs:
        return {}
    names = list(dict.fromkeys([*pairs, *pairs.values()]))
    sess = session(with_outputs(model, names))
    inp = input_name(model)
    acc = {a: {"uniform": [[], []], "logsqrt2": [[], []]} for a in pairs}
    lq = log_params(1.0, bits, "logsqrt2")
    for i in range(len(x)):
        vals = dict(zip(names, sess.run(names, {inp: x[i:i + 1]})))
        for a, v in pairs.items():
            A, V = vals[a], vals[v]
            if A.shape[-1] != V.shape[-2] if V.ndim >= 2 else True:
                continue  # a reshape between softmax and the MatMul: not the plain A @ V layout
            ref = A @ V
            for kind, aq in (("uniform", fake_quant(A, act_q[a])), ("logsqrt2", log_fake_quant(A, lq))):
                acc[a][kind][0].append(ref)
                acc[a][kind][1].append(aq @ V)
    out = {}
    for a, d in acc.items():
        if d["uniform"][0]:
            out[a] = {k: round(sqnr_db(np.concatenate(r), np.concatenate(t)), 2) for k, (r, t) in d.items()}
    return out


def percentile_weight_params(w: np.ndarray, bits: int, axis: int | None):
    """Symmetric weight quantizer per channel (`axis`) or per tensor whose clip is the percentile of
    |w| (WEIGHT_PERCENTILES) with the least L2 rounding + clipping error, channel by channel."""
    from edgeforge.quant.quantizers import params_from_range, qrange

    w = np.asarray(w, np.float32)
    flat = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    a = np.abs(flat).astype(np.float64)
    qmin, qmax = qrange(bits, True, True)
    best_err = np.full(len(flat), np.inf)
    best = np.zeros(len(flat))
    for p in WEIGHT_PERCENTILES:
        clip = a.max(axis=1) if p == 100.0 else np.percentile(a, p, axis=1)
        qp = params_from_range(-clip, clip, bits, True, True, 0)
        s = qp.scale[:, None].astype(np.float32)
        deq = np.clip(np.rint(flat / s), qmin, qmax) * s
        err = ((deq - flat) ** 2).sum(axis=1)
        better = err < best_err
        best_err, best = np.where(better, err, best_err), np.where(better, clip, best)
    if axis is None:
        best = best[0]
    return params_from_range(-best, best, bits, True, True, axis, "percentile-l2")
