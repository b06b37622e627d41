"""Accuracy-budgeted mixed precision: `edgeforge quantize ARTIFACT --max-drop X`.

The model is quantized once (any method, any `--keep-fp`). Then, on the eval split
(`pipeline.eval_split`) and with the target's own kernels (ONNX Runtime with full graph
optimisation for ONNX Runtime targets, OpenVINO's CPU plugin for cpu-openvino; targets whose
runtime is not on this host fall back to ONNX Runtime and say so):

1. the budget metric is measured on the all-INT8 model; within budget: nothing is left in float.
2. Sensitivity scan: each quantized layer (Conv / Gemm / MatMul) is quantized alone (every other
   candidate in float) and the model output's SQNR against FP32 measured, on the first
   `SCAN_SAMPLES` samples of the eval split; layers are ranked by it, most sensitive (lowest SQNR,
   ties: the larger budget loss) first. Quantization noise from different layers adds up roughly
   in power, so this isolates each layer's share; the opposite probe (one layer in float, the
   rest INT8) measures a small difference between two noisy models and ranks badly at low bits
   (w4a4: it ranked the 4-bit stem input last). No recalibration:
   leaving a layer in float only removes quantizers, so every candidate is rebuilt from the
   quantizers already calibrated (and refined, bias-corrected) by the method
   (`placement.plan` with the extra layers in keep_fp, then `qdq.build_qdq`): the same QDQ model
   `--keep-fp` with those layers writes, minus a method's refinement rerun on the smaller plan.
   ONNX Runtime's quantize_static (`--method ort`) is handled by graph surgery on its QDQ model
   instead: the layer reads its float inputs and FP32 weights, the unused Q/DQ are removed.
3. Search for the fewest most-sensitive layers: k = 1, 2, 4, ... until the budget holds, then
   bisection between the last failing and the first passing k. The answer k is verified with
   k - 1 measured too: dropping the last layer added (the least sensitive of those kept) breaks
   the budget. (Fewest along the ranking: the metric is not strictly monotone in k.)
4. If even every quantized layer in float misses the budget (possible with --norm-inputs, the
   ORT baseline's leftover output quantizers, or X = 0 on noisy kernels) the model with all of
   them in float is written, `met: false` is recorded and the CLI exits 1 (a check failed).

Budget metrics, in points (percentage points, so X = 0.5 means half a point):
- `top1`: FP32 top-1 minus quantized top-1 on a labelled eval split (digits).
- `agreement`: 100 x (1 - top-1 agreement between FP32 and quantized outputs): classifiers on an
  unlabelled split (natural crops, clips, a user folder).
- `cosine`: 100 x (1 - mean per-sample cosine between the FP32 and quantized outputs):
  embedding models (no class logits: a recipe with `num_classes: 0`, or an output that is not
  (N, classes)), e.g. DINOv2's class-token embedding; X = 0.5 asks for mean cosine >= 0.995.
`auto` picks top1 when the split has labels, cosine for embedding models, agreement otherwise.

The latency cost: p50 of the all-INT8 and the mixed model, ONNX Runtime on this CPU (full
optimisation, one thread, batch 1, a short interleaved timing of at least 30 calls and 1 s each:
`bench.latency.measure`; its noise is recorded, and on a shared machine it can exceed the cost).
The eval runs use OMP_NUM_THREADS threads when it is set, else the runtime's default.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeforge.errors import BadInput

METRICS = ("auto", "top1", "agreement", "cosine")
DEFINITIONS = {
    "top1": "FP32 top-1 minus quantized top-1 on the labelled eval split, in points",
    "agreement": "100 x (1 - top-1 agreement of the quantized model with FP32) on the eval split, in points",
    "cosine": "100 x (1 - mean per-sample cosine between FP32 and quantized outputs) on the eval split, "
              "in points (0.5: mean cosine >= 0.995)",
}
LATENCY_ITERATIONS = 30
SCAN_SAMPLES = 16  # eval samples the sensitivity scan runs (the search and its answer use them all):
# SQNR ranks on few samples, and each probe is a session plus the runs (DINOv2 ViT-S: ~0.25 s a sample)
MIXED_PRECISION_VERSION = 1  # bump when the scan/search changes what a --max-drop run writes


def check_max_drop(max_drop: float | None, metric: str = "auto") -> None:
    if max_drop is None:
        return
    if not isinstance(max_drop, (int, float)) or math.isnan(max_drop) or math.isinf(max_drop) or max_drop < 0:
        raise BadInput(f"--max-drop {max_drop!r}: a budget in points (>= 0, e.g. 0.5 for half a point)")
    if metric not in METRICS:
        raise BadInput(f"--max-drop-metric {metric!r}: accepted {', '.join(METRICS)}")


def step_suffix(max_drop: float, metric: str = "auto") -> str:
    """What a max-drop run adds to the step (folder) name: `-maxdrop0.5`, `-maxdrop1-cosine`."""
    return f"-maxdrop{max_drop:g}" + ("" if metric == "auto" else f"-{metric}")


# ----------------------------------------------------------------------------- the metric
def recipe_is_embedding(export_entry: dict | None) -> bool:
    """The artifact's recipe builds a backbone without a classifier (`num_classes: 0`)."""
    rec = (export_entry or {}).get("resolved_recipe") or {}
    return (rec.get("builder_args") or {}).get("num_classes") == 0


def is_embedding(export_entry: dict | None, out: np.ndarray) -> bool:
    return recipe_is_embedding(export_entry) or out.ndim != 2 or out.shape[1] < 2


def resolve_metric(metric: str, labels, export_entry: dict | None, ref: np.ndarray) -> tuple[str, str]:
    """(metric, why it was chosen)."""
    if metric == "top1" and labels is None:
        raise BadInput("--max-drop-metric top1 needs a labelled eval split (e.g. --calib digits); "
                       "use agreement (classifiers) or cosine (embeddings)")
    if metric != "auto":
        return metric, "--max-drop-metric"
    if labels is not None:
        return "top1", "the eval split has labels"
    if is_embedding(export_entry, ref):
        return "cosine", "an embedding model (no class logits), unlabelled eval split"
    return "agreement", "a classifier on an unlabelled eval split"


def _top1(o: np.ndarray) -> np.ndarray:
    return o.reshape(len(o), -1).argmax(-1)


def _unit(o: np.ndarray) -> np.ndarray:
    e = o.reshape(len(o), -1).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def metric_value(metric: str, ref: np.ndarray, out: np.ndarray, labels) -> float:
    """The budget metric of `out` against the FP32 outputs `ref`, in points."""
    if metric == "top1":
        return 100.0 * (float((_top1(ref) == labels).mean()) - float((_top1(out) == labels).mean()))
    if metric == "agreement":
        return 100.0 * (1.0 - float((_top1(ref) == _top1(out)).mean()))
    return 100.0 * (1.0 - float((_unit(ref) * _unit(out)).sum(1).mean()))


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    from edgeforge.quant.quantizers import sqnr_db

    v = sqnr_db(ref, out)
    return 999.0 if math.isinf(v) else v


# ----------------------------------------------------------------------------- the kernels
class TargetKernels:
    """Run a model on the eval split with the target's kernels (see the module docstring)."""

    def __init__(self, runtime: str):
        self.runtime, self.note = "onnxruntime", None
        if runtime == "openvino":
            try:
                import openvino  # noqa: F401

                self.runtime = "openvino"
            except ImportError as e:
                self.note = f"OpenVINO is not installed ({e}): measured with ONNX Runtime's kernels"
        elif runtime != "onnxruntime":
            self.note = f"{runtime} does not run on this host: measured with ONNX Runtime's CPU kernels"
        self.kernels = ("OpenVINO CPU plugin (oneDNN), f32 precision hint" if self.runtime == "openvino"
                        else "ONNX Runtime CPU, graph optimisation all")

    @staticmethod
    def threads() -> int:
        """OMP_NUM_THREADS when set (the tests set 1: two workers share two cores), else the runtime's default."""
        import os

        try:
            return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
        except ValueError:
            return 0

    def __call__(self, model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
        if self.runtime == "openvino":
            from edgeforge.bench.fidelity import openvino_outputs

            with tempfile.TemporaryDirectory(prefix="edgeforge-mp-") as tmp:
                path = Path(tmp) / "model.onnx"
                onnx.save(model, str(path))
                return openvino_outputs(path, x, threads=self.threads())
        from edgeforge.quant.calibrate import input_name, session

        sess = session(model, threads=self.threads(), optimize="all")
        inp, out = input_name(model), model.graph.output[0].name
        return np.concatenate([sess.run([out], {inp: x[i:i + 1]})[0] for i in range(len(x))])


# ----------------------------------------------------------------------------- rebuilding
@dataclass
class Rebuilder:
    """The quantized layers a run can leave in float, and how to write the model with some float."""

    layers: list[str]  # quantized Conv/Gemm/MatMul nodes, graph order
    op_types: dict[str, str]
    build: Callable[[list[str]], object]  # extra float layers -> QuantizedOnnx or ModelProto

    @staticmethod
    def model_of(built) -> onnx.ModelProto:
        return built if isinstance(built, onnx.ModelProto) else built.model


def edgeforge_rebuilder(q, keep_fp: list[str], norm_inputs: bool) -> Rebuilder:
    """For the edgeforge engine: the same calibrated quantizers, a plan with more layers in float."""
    from edgeforge.quant import placement
    from edgeforge.quant.qdq import build_qdq

    def build(extra: list[str]):
        if not extra:
            return q
        plan = placement.plan(q.prepared, list(keep_fp) + list(extra), norm_inputs=norm_inputs)
        # more float layers only remove quantizers; a site the method itself removed from its plan
        # (repquant leaves softmax outputs float where no log quantizer runs) stays removed
        plan.acts = {t: q.plan.acts[t] for t in plan.acts if t in q.plan.acts and t in q.act_q}
        plan.weights = [w for w in plan.weights if w.initializer in q.weight_q]
        act_q = {t: q.act_q[t] for t in plan.acts}
        weight_q = {w.initializer: q.weight_q[w.initializer] for w in plan.weights}
        shifts = {k: v for k, v in q.bias_shift.items() if k in set(plan.layers)}
        model = build_qdq(q.prepared, plan, act_q, weight_q, bias_shift=shifts)
        return dataclasses.replace(q, model=model, plan=plan, act_q=act_q, weight_q=weight_q, bias_shift=shifts)

    return Rebuilder(list(q.plan.layers), dict(q.plan.node_types), build)


def ort_rebuilder(qmodel: onnx.ModelProto, fp32: onnx.ModelProto) -> Rebuilder:
    """For ONNX Runtime's quantize_static: float layers by surgery on its QDQ model."""
    from edgeforge.quant.placement import COMPUTE

    producer = {o: n for n in qmodel.graph.node for o in n.output}
    fnodes = {n.name: n for n in fp32.graph.node if n.name}
    finits = {i.name: i for i in fp32.graph.initializer}
    layers = [n.name for n in qmodel.graph.node if n.op_type in COMPUTE and n.name in fnodes and any(
        t in producer and producer[t].op_type == "DequantizeLinear" for t in n.input)]

    fprod = {o: n for n in fp32.graph.node for o in n.output}

    def build(extra: list[str]) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(qmodel)
        g = m.graph
        prod = {o: n for n in g.node for o in n.output}
        inits = {i.name for i in g.initializer}
        before: dict[int, list[onnx.NodeProto]] = {}  # node position -> nodes to insert before it
        made: dict[str, str] = {}
        for pos, n in enumerate(g.node):
            if n.name not in extra:
                continue
            fn = fnodes[n.name]
            for i, t in enumerate(n.input):
                d = prod.get(t)
                if d is None or d.op_type != "DequantizeLinear":
                    continue
                src = d.input[0]
                if src in inits:  # a weight or bias: the FP32 model's initializer
                    ft = fn.input[i] if i < len(fn.input) else ""
                    if ft not in finits:
                        continue
                    # ORT names a weight's DequantizeLinear output after the float initializer:
                    # the float copy gets a name of its own
                    name = ft if ft not in prod else f"{ft}_float"
                    if name not in inits:
                        init = onnx.TensorProto()
                        init.CopyFrom(finits[ft])
                        init.name = name
                        g.initializer.append(init)
                        inits.add(name)
                    n.input[i] = name
                elif src in prod and prod[src].op_type == "QuantizeLinear":
                    xf = prod[src].input[0]
                    # ORT drops a Relu/Clip after a quantized Conv (the QuantizeLinear's range clips
                    # instead): a float reader of that tensor needs the activation back
                    act, have = fprod.get(xf), prod.get(xf)
                    if act is not None and act.op_type in ("Relu", "Clip") and \
                            (have is None or have.op_type != act.op_type):
                        if xf not in made:
                            made[xf] = f"{xf}_{act.op_type.lower()}_float"
                            node = onnx.NodeProto()
                            node.CopyFrom(act)
                            node.name = f"{act.name}_float" if act.name else made[xf]
                            node.input[0] = xf
                            del node.output[:]
                            node.output.append(made[xf])
                            for extra_in in list(node.input)[1:]:
                                if extra_in and extra_in not in inits and extra_in in finits:
                                    g.initializer.append(finits[extra_in])
                                    inits.add(extra_in)
                            before.setdefault(pos, []).append(node)
                        xf = made[xf]
                    n.input[i] = xf
        if before:
            nodes = []
            for pos, n in enumerate(g.node):
                nodes.extend(before.get(pos, []))
                nodes.append(n)
            del g.node[:]
            g.node.extend(nodes)
        _drop_dead_qdq(g)
        return m

    return Rebuilder(layers, {n.name: n.op_type for n in qmodel.graph.node}, build)


def _drop_dead_qdq(g: onnx.GraphProto) -> None:
    outs = {o.name for o in g.output}
    while True:
        used = {t for n in g.node for t in n.input}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used or o in outs for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {t for n in g.node for t in n.input} | outs
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


# ----------------------------------------------------------------------------- latency
def latency_cost(int8: onnx.ModelProto, mixed: onnx.ModelProto, x: np.ndarray,
                 iterations: int = LATENCY_ITERATIONS) -> dict:
    """p50 of both models, ONNX Runtime on this CPU (one thread), interleaved blocks."""
    from edgeforge.bench import latency
    from edgeforge.runtimes.onnxruntime import OnnxRuntimeRunner

    settings = latency.Settings(warmup=3, warmup_time_s=0.2, iterations=iterations, min_time_s=1.0, block_size=5,
                                max_iterations=2000)
    with tempfile.TemporaryDirectory(prefix="edgeforge-mp-lat-") as tmp:
        runners = {}
        for name, m in (("int8", int8), ("mixed", mixed)):
            p = Path(tmp) / f"{name}.onnx"
            onnx.save(m, str(p))
            runners[name] = OnnxRuntimeRunner(p, threads=1, name=name)
        try:
            for r in runners.values():
                r.activate()
            inp = runners["int8"].input_specs()[0].name
            feed = {inp: np.ascontiguousarray(x[:1])}
            samples = latency.measure(runners, {n: feed for n in runners}, settings)
        finally:
            for r in runners.values():
                r.deactivate()
    s = {n: latency.summarize(v) for n, v in samples.items()}
    a, b = s["int8"]["p50"], s["mixed"]["p50"]
    return {"runtime": "onnxruntime", "threads": 1, "graph_optimization": "all",
            "iterations": s["int8"]["iterations"], "batch": 1,
            "int8_p50_ms": round(a, 3), "mixed_p50_ms": round(b, 3), "cost_ms": round(b - a, 3),
            "cost_pct": round(100.0 * (b - a) / a, 1) if a > 0 else None,
            "noise_pct": round(max(s["int8"]["noise_pct"], s["mixed"]["noise_pct"]), 1)}


# ----------------------------------------------------------------------------- the search
@dataclass
class MixedResult:
    built: object  # QuantizedOnnx (edgeforge engine) or ModelProto (ort)
    model: onnx.ModelProto
    kept: list[str]
    report: dict


def choose(rebuilder: Rebuilder, fp32: onnx.ModelProto, ev, max_drop: float, metric: str = "auto",
           runtime: str = "onnxruntime", export_entry: dict | None = None, user_keep_fp=(),
           console=None, show_progress: bool = True, measure_latency: bool = True) -> MixedResult:
    """Leave the fewest most sensitive layers in float so that the budget metric <= max_drop."""
    from edgeforge.quant.calibrate import progress
    from edgeforge.quant.placement import module_path

    check_max_drop(max_drop, metric)
    t0 = time.perf_counter()
    kern = TargetKernels(runtime)
    x, labels = ev.x, ev.labels
    ref = kern(fp32, x)
    metric, why = resolve_metric(metric, labels, export_entry, ref)
    eps = 1e-9

    def measure(built, n: int | None = None) -> tuple[float, float]:
        out = kern(Rebuilder.model_of(built), x[:n])
        return metric_value(metric, ref[:n], out, None if labels is None else labels[:n]), _sqnr(ref[:n], out)

    full = rebuilder.build([])
    v0, s0 = measure(full)
    rep: dict = {"max_drop": max_drop, "metric": metric, "metric_definition": DEFINITIONS[metric],
                 "metric_reason": why, "kernels": {"runtime": kern.runtime, "kernels": kern.kernels,
                                                   **({"note": kern.note} if kern.note else {})},
                 "eval_set": ev.definition.name, "eval_count": int(len(x)), "eval_hash": ev.hash,
                 "user_keep_fp": list(user_keep_fp), "candidates": len(rebuilder.layers),
                 "int8_value": round(v0, 4), "int8_sqnr_db": round(s0, 2)}
    if metric == "top1":
        rep["fp32_top1"] = round(float((_top1(ref) == labels).mean()), 4)
    steps = [{"float_layers": 0, "value": round(v0, 4), "sqnr_db": round(s0, 2), "within_budget": v0 <= max_drop + eps}]
    rep["steps"] = steps
    if v0 <= max_drop + eps or not rebuilder.layers:
        rep.update(met=v0 <= max_drop + eps, ranking=[], kept_fp=[], final_value=round(v0, 4),
                   final_sqnr_db=round(s0, 2))
        if not rebuilder.layers and not rep["met"]:
            rep["warning"] = (f"budget {max_drop} points not met ({metric} {v0:.3f}) and no quantized layer "
                              "is left to keep in float")
        rep["timings_s"] = {"total_s": round(time.perf_counter() - t0, 3)}
        return MixedResult(full, Rebuilder.model_of(full), [], rep)

    # 2. sensitivity: each layer quantized alone
    t1 = time.perf_counter()
    scan = []
    n_scan = min(len(x), SCAN_SAMPLES)
    rep["scan"] = {"probe": "one layer quantized, every other candidate in float",
                   "measure": "output SQNR against FP32 (dB), lowest first", "eval_count": n_scan}
    with progress(f"max-drop: sensitivity of {len(rebuilder.layers)} layers ({n_scan} samples, {kern.runtime})",
                  len(rebuilder.layers), console, show_progress) as advance:
        for i, name in enumerate(rebuilder.layers):
            v, s = measure(rebuilder.build([o for o in rebuilder.layers if o != name]), n_scan)
            scan.append({"layer": name, "module": module_path(name), "op": rebuilder.op_types.get(name),
                         "sqnr_db": round(s, 2), "value": round(v, 4), "_order": i, "_s": s, "_v": v})
            advance()
    scan.sort(key=lambda r: (r["_s"], -r["_v"], r["_order"]))
    ranked = [r["layer"] for r in scan]
    t_scan = time.perf_counter() - t1

    # 3. fewest: gallop then bisect along the ranking
    tried: dict[int, tuple[float, float, object]] = {0: (v0, s0, full)}

    def ok(k: int) -> bool:
        if k not in tried:
            built = rebuilder.build(ranked[:k])
            v, s = measure(built)
            tried[k] = (v, s, built)
            steps.append({"float_layers": k, "value": round(v, 4), "sqnr_db": round(s, 2),
                          "within_budget": v <= max_drop + eps, "added": ranked[k - 1]})
        return tried[k][0] <= max_drop + eps

    n = len(ranked)
    lo, hi, k = 0, None, 1
    while k < n:
        if ok(k):
            hi = k
            break
        lo, k = k, k * 2
    if hi is None:
        hi = n if ok(n) else None
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        chosen, met = hi, True
    else:
        chosen, met = n, False
    v, s, built = tried[chosen]
    rep.update(met=met, final_value=round(v, 4), final_sqnr_db=round(s, 2), float_layers=chosen,
               kept_fp=[{"layer": name, "module": module_path(name), "op": rebuilder.op_types.get(name)}
                        for name in ranked[:chosen]],
               ranking=[{k2: r[k2] for k2 in ("layer", "module", "op", "sqnr_db", "value")} for r in scan])
    if met and chosen > 0:
        rep["verified"] = {"k": chosen, "value": round(v, 4), "k_minus_1": chosen - 1,
                           "k_minus_1_value": round(tried[chosen - 1][0], 4)}
    if not met:
        rep["warning"] = (f"budget {max_drop} points ({metric}) not met: with all {n} quantized layers in float "
                          f"the {metric} loss is {v:.3f} points; the model written keeps them all in float")
    timings = {"scan_s": round(t_scan, 3), "search_s": round(time.perf_counter() - t1 - t_scan, 3)}
    if measure_latency:
        t2 = time.perf_counter()
        try:
            rep["latency"] = latency_cost(Rebuilder.model_of(full), Rebuilder.model_of(built), x)
        except Exception as e:  # noqa: BLE001 - the timing is informative; the choice stands without it
            rep["latency"] = {"not_run": f"{type(e).__name__}: {e}"}
        timings["latency_s"] = round(time.perf_counter() - t2, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    rep["timings_s"] = timings
    return MixedResult(built, Rebuilder.model_of(built), list(ranked[:chosen]), rep)


def summary(rep: dict) -> dict:
    """The compact form recorded in manifest.json (quant.json keeps the ranking and every step)."""
    keys = ("max_drop", "metric", "int8_value", "final_value", "met", "float_layers", "latency", "warning")
    out = {k: rep[k] for k in keys if k in rep}
    out["kept_fp"] = [k["module"] if isinstance(k, dict) else k for k in rep.get("kept_fp", [])]
    return out
