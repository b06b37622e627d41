"""Activation ranges chosen by the whole model's output: a greedy coordinate search.

Layer-wise objectives (each layer's own output error, Hessian-weighted or not) pick ranges that
are right for the layer and can still be wrong for the model: on torchvision's MobileNetV2 the
layer-wise qhyvit search lowered every layer's objective and the model's top-1 agreement with
FP32 fell (0.85 against entropy calibration's 0.91 on 200 photo crops, AMD EPYC). The loss Q-HyViT and BRECQ
finally care about is the model's output, so this search measures exactly that: the KL between
the FP32 model's softmax and the quantized model's (relative squared error for non-logit
outputs such as embeddings), on the calibration samples.

How it stays affordable: the QDQ model is written once with every activation quantizer's scale
and zero-point (and the Clip bounds of sub-8-bit quantizers, and the int32 biases, whose scale
is s_in * s_w) turned into graph inputs, so one
ONNX Runtime session evaluates any candidate by feeding numbers, with no model rebuilt. That
session runs the QDQ graph as float emulation (graph optimisation off: the integer fusions
need constant scales); integer kernels compute the same quantizers, and the caller's
model-output check on the target's kernels decides whether the result is kept.

The search: quantizers in graph order, each range [lo, hi] scaled by a few factors (the upper
end; both ends when the range is signed), a candidate kept only if the model's loss falls.
`rounds` passes. Integer containers, symmetric-only targets and Clip-following quantizers are
respected through the same conversions the engine uses (`convert_for_target`, `fit_inside`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Range multipliers tried for each quantizer: clipping (< 1) and widening (> 1). A short list:
# the cost is one model evaluation per candidate per quantizer.
FACTORS = (0.5, 0.7, 0.85, 1.15, 1.4)


def output_loss(ref: np.ndarray, q: np.ndarray, kind: str = "auto") -> float:
    """How far `q` is from `ref` (N, ...): for logits the mean KL(softmax ref || softmax q); for
    an embedding (or any output without a class axis) the relative squared error. `kind`:
    "logits", "embedding", or "auto" (logits when the output is (N, C) with C > 1: pass
    "embedding" for a backbone, whose (N, D) output is not a distribution)."""
    if kind not in ("auto", "logits", "embedding"):
        raise ValueError(f"output kind {kind!r}: accepted auto, logits, embedding")
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    q = q.reshape(len(q), -1).astype(np.float64)
    if kind == "logits" or (kind == "auto" and ref.shape[1] > 1):
        lp = ref - ref.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = q - q.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        return float((np.exp(lp) * (lp - lq)).sum(1).mean())
    return float(((q - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


class _Feeds:
    """The QDQ model with its activation quantizers' parameters as graph inputs, and one session."""

    def __init__(self, qdq: onnx.ModelProto, act_q: dict, x: np.ndarray, model: onnx.ModelProto | None = None,
                 plan=None, weight_q: dict | None = None, bias_shift: dict | None = None):
        from edgeforge.quant.calibrate import input_name
        from edgeforge.quant.placement import GraphIndex

        self.inp = input_name(qdq)
        g = qdq.graph
        producer = {o: n for n in g.node for o in n.output}
        inits = {i.name: i for i in g.initializer}
        self.slots: dict[str, dict[str, str]] = {}  # tensor -> {"scale", "zero_point"[, "lo", "hi"]}
        for n in g.node:
            if n.op_type != "QuantizeLinear" or n.input[0] in inits:
                continue
            src, clip = n.input[0], None
            if src not in act_q and src in producer and producer[src].op_type == "Clip":
                clip = producer[src]
                src = clip.input[0]
            if src not in act_q or src in self.slots:
                continue
            slot = {"scale": n.input[1], "zero_point": n.input[2]}
            if clip is not None:
                slot.update(lo=clip.input[1], hi=clip.input[2])
            self.slots[src] = slot
        # int32 biases are quantized with the layer's input scale (s_in * s_w): they follow it
        self.biases: list[tuple[str, str, np.ndarray, str, np.ndarray, np.ndarray | None]] = []
        if plan is not None:
            idx = GraphIndex(model)
            by_name = {n.name: n for n in g.node if n.name}
            for ws in plan.weights:
                n = by_name.get(ws.node)
                if ws.bias is None or ws.act_input not in self.slots or n is None or len(n.input) < 3:
                    continue
                dq = producer.get(n.input[2])
                if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                    continue
                self.biases.append((dq.input[0], dq.input[1], idx.init_array(ws.bias), ws.act_input,
                                    np.asarray(weight_q[ws.initializer].scale), (bias_shift or {}).get(ws.node)))
        lifted = {name for s in self.slots.values() for name in s.values()} | \
            {name for b in self.biases for name in b[:2]}
        self.dtypes = {name: numpy_helper.to_array(inits[name]).dtype for name in lifted}
        keep = [i for i in g.initializer if i.name not in lifted]
        for name in sorted(lifted):
            shape = list(numpy_helper.to_array(inits[name]).shape)
            g.input.append(helper.make_tensor_value_info(name, inits[name].data_type, shape))
        del g.initializer[:]
        g.initializer.extend(keep)
        self.model = qdq
        self.out = g.output[0].name
        self.x = x
        self.batched = True
        self.sess = None

    def params(self, act_q: dict) -> dict[str, np.ndarray]:
        from edgeforge.quant.quantizers import quantize_bias

        f = {}
        for codes, scale, bias, act, w_scale, shift in self.biases:
            f[codes], f[scale] = quantize_bias(bias, float(act_q[act].scale), w_scale, shift)
        for t, slot in self.slots.items():
            qp = act_q[t]
            f[slot["scale"]] = np.asarray(qp.scale, self.dtypes[slot["scale"]]).reshape(())
            f[slot["zero_point"]] = np.asarray(qp.zero_point).astype(self.dtypes[slot["zero_point"]]).reshape(())
            if "lo" in slot:
                lo, hi = qp.float_range()
                f[slot["lo"]] = np.asarray(lo, np.float32).reshape(())
                f[slot["hi"]] = np.asarray(hi, np.float32).reshape(())
        return f

    def run(self, act_q: dict) -> np.ndarray:
        from edgeforge.quant.calibrate import session

        f = self.params(act_q)
        if self.sess is None:
            # one run for all samples if the graph takes a symbolic batch (fixed Reshape shapes
            # often forbid it: then one sample at a time)
            try:
                self.sess = session(_with_batch_dim(self.model, self.inp, self.out), optimize="disable", quiet=True)
                y = self.sess.run([self.out], {self.inp: self.x, **f})[0]
                one = self.sess.run([self.out], {self.inp: self.x[:1], **f})[0]
                # the same numbers up to float summation order (a rounding tie may flip one code)
                if y.shape == (len(self.x), *one.shape[1:]) and \
                        np.linalg.norm(y[:1] - one) <= 1e-3 * max(np.linalg.norm(one), 1e-30):
                    return y
            except Exception:  # noqa: BLE001 - any failure means: not batchable
                pass
            self.batched = False
            self.sess = session(self.model, optimize="disable")
        if self.batched:
            return self.sess.run([self.out], {self.inp: self.x, **f})[0]
        return np.concatenate([self.sess.run([self.out], {self.inp: self.x[i:i + 1], **f})[0]
                               for i in range(len(self.x))])


def _with_batch_dim(model: onnx.ModelProto, inp: str, out: str) -> onnx.ModelProto:
    """A copy whose input and output batch dimension is symbolic."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in (inp, out) and vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    return m


def search(model: onnx.ModelProto, plan, act_q: dict, weight_q: dict, x: np.ndarray, scheme,
           rounds: int = 1, factors=FACTORS, advance: Callable[[int], None] | None = None,
           budget_s: float | None = None, bias_shift: dict | None = None,
           output_kind: str = "auto", fp32_output: np.ndarray | None = None) -> tuple[dict, dict]:
    """Greedy output-loss search over the per-tensor uniform activation quantizers of `act_q`.

    Returns (new act_q, info for quant.json). Quantizers the search cannot move (per-channel,
    log) are left as they are. `bias_shift`: the bias correction the written model will carry
    (build_qdq's argument), so the search sees that model. `output_kind`: see output_loss.
    `fp32_output`: the FP32 model's output on `x` if the caller has it (else computed here). `budget_s`: stop starting new quantizers after this many seconds
    (what was searched is kept; quant.json says how far it got)."""
    from edgeforge.errors import BadInput
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.qdq import build_qdq
    from edgeforge.quant.quantizers import fit_inside, params_from_range
    from edgeforge.quant.scheme import convert_for_target

    t0 = time.perf_counter()
    out = model.graph.output[0].name
    ref = run_outputs(model, x, [out], optimize="all")[out] if fp32_output is None else fp32_output
    feeds = _Feeds(build_qdq(model, plan, act_q, weight_q, bias_shift=bias_shift), act_q, x, model, plan, weight_q,
                   bias_shift)
    q0 = feeds.run(act_q)
    cur = dict(act_q)
    best = before = output_loss(ref, q0, output_kind)
    evals, changed, history, visited, stopped = 1, {}, [], 0, False
    order = [t for t in feeds.slots if cur[t].kind == "uniform" and not cur[t].per_channel]
    for _ in range(rounds):
        for t in order:
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                stopped = True
                break
            visited += 1
            qp = cur[t]
            lo, hi = (float(v) for v in qp.float_range())
            site = plan.acts.get(t)
            for f in factors:
                for both in ((False, True) if lo < 0 else (False,)):
                    try:
                        cand = params_from_range(lo * f if both else lo, hi * f, qp.bits, qp.symmetric,
                                                 qp.signed, observer=f"{qp.observer}+output-search")
                        cand = convert_for_target(cand, scheme, f"activation {t}")
                    except BadInput:
                        continue
                    if site is not None and site.clip:
                        cand = fit_inside(cand, *site.clip)
                    trial = dict(cur)
                    trial[t] = cand
                    e = output_loss(ref, feeds.run(trial), output_kind)
                    evals += 1
                    if e < best:
                        best, cur[t] = e, cand
                        changed[t] = {"range_factor": f, "both_ends": both}
            if advance:
                advance(1)
        history.append(best)
        if stopped:
            break
    info = {"loss": ("relative squared error of the embedding" if output_kind == "embedding" or
                     (output_kind == "auto" and ref.reshape(len(ref), -1).shape[1] < 2) else
                     "KL(softmax FP32 || softmax QDQ)") + " on the calibration samples, QDQ graph as float emulation",
            "loss_before": round(before, 8), "loss_after": round(best, 8), "loss_by_round": [round(h, 8) for h in history],
            "quantizers": len(order), "visited": visited, "changed": len(changed), "evaluations": evals,
            "stopped_by_budget": (f"after {budget_s:g} s: {visited} of {len(order) * rounds} quantizer visits"
                                  if stopped else None),
            "range_factors": list(factors), "rounds": rounds,
            "batched": feeds.batched, "seconds": round(time.perf_counter() - t0, 2)}
    return cur, info
