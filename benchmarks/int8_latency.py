"""INT8 must be faster, not only smaller: INT8 / FP32 latency of EfficientFormer-L1 on CPU.

    .venv/bin/python benchmarks/int8_latency.py [--recipe efficientformer_l1] [--blocks 15] [--calls 10]

Exports the recipe (random init: latency does not depend on the weights' values), quantizes it
with our placement (minmax, 32 `natural` calibration samples) and with ONNX Runtime's own
quantize_static, and times FP32 and both INT8 models on ONNX Runtime (cpu-ort) and OpenVINO
(cpu-openvino). The models are timed in alternating blocks of calls (a runtime's spinning
threads slow whatever runs right after it); each block gives a median per call, the reported
latency is the median over blocks and the ratio is the median of the per-block ratios. Also
records how long quantizing took (target: under 2 minutes with 32 samples on 2 cores).
Writes benchmarks/results/int8_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeforge.artifacts import write_json_atomic  # noqa: E402
from edgeforge.targets.host import cpu_record  # noqa: E402
from settle import settle  # noqa: E402


def _ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


OV_PRECISION = "f32"


def _ov_runner(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    # OpenVINO runs "FP32" models in bf16 on CPUs with AVX512-BF16 unless told otherwise: the hint
    # makes the FP32 baseline really FP32 (and the int8 models' float parts too)
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OV_PRECISION}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(str(path), "CPU", cfg)
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})


def alternate(runners: dict, x: np.ndarray, blocks: int, calls: int, warmup: int = 3) -> dict:
    """Median per-call latency (ms) per runner, timed in alternating blocks; per-block medians kept.

    Each block follows an idle pause and two untimed calls (`settle`): without it the previous
    model's spinning pool thread shared the cores with the first calls of every block.
    """
    for r in runners.values():
        for _ in range(warmup):
            r(x)
    per_block: dict[str, list[float]] = {k: [] for k in runners}
    for b in range(blocks):
        order = list(runners) if b % 2 == 0 else list(reversed(runners))
        for k in order:
            settle(lambda: runners[k](x), rewarm_s=0.0)
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runners[k](x)
                ts.append(time.perf_counter() - t0)
            per_block[k].append(statistics.median(ts) * 1e3)
    return per_block


def summarize(per_block: dict[str, list[float]], base: str = "fp32") -> dict:
    out = {k: {"median_ms": round(statistics.median(v), 3), "block_medians_ms": [round(t, 3) for t in v]}
           for k, v in per_block.items()}
    for k, v in per_block.items():
        if k != base:
            ratios = [a / b for a, b in zip(v, per_block[base])]
            out[k]["ratio_vs_fp32"] = round(statistics.median(ratios), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="efficientformer_l1")
    ap.add_argument("--artifact", default=None, help="default: artifacts/<recipe>")
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="0: the runtime's default (all cores)")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--ov-precision", default="f32", choices=["f32", "bf16"],
                    help="OpenVINO INFERENCE_PRECISION_HINT for the float parts (its CPU default is bf16 where supported)")
    ap.add_argument("--runtimes", nargs="+", default=["cpu-ort", "cpu-openvino"], choices=["cpu-ort", "cpu-openvino"])
    ap.add_argument("--reuse", action="store_true",
                    help="reuse quantized models already in the artifact (keeps the recorded quantize timings)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_latency.json"))
    args = ap.parse_args(argv)

    from rich.console import Console

    global OV_PRECISION
    OV_PRECISION = args.ov_precision

    from edgeforge.export import export_recipe
    from edgeforge.quant.pipeline import quantize_artifact

    console = Console()
    art = Path(args.artifact or ROOT / "artifacts" / args.recipe)
    if not (args.reuse and (art / "fp32" / "model.onnx").is_file()):
        t0 = time.perf_counter()
        export_recipe(args.recipe, out_dir=art, check_simplify_latency=False)
        console.print(f"export: {time.perf_counter() - t0:.0f}s")
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    quant_s = previous.get("quantize_seconds", {}) if args.reuse else {}
    # minmax for ONNX Runtime (cpu-ort placement) and for OpenVINO (standard ops only), and ORT's own
    # and minmax with saturation-safe weights for CPUs without VNNI (int16 pairs), which must not be
    # slower than the plain 8-bit weights (they run the same kernels)
    for method, target, acc, step in (
            ("minmax", "cpu-ort", "int32", "int8-minmax-int32"), ("ort", "cpu-ort", None, "int8-ort"),
            ("minmax", "cpu-openvino", "int32", "int8-minmax-cpu-openvino-int32"),
            ("minmax", "cpu-ort", "int16-pairs", "int8-minmax-int16-pairs"),
            ("minmax", "cpu-openvino", "int16-pairs", "int8-minmax-cpu-openvino-int16-pairs")):
        if args.reuse and (art / step / "model.onnx").is_file():
            continue
        t0 = time.perf_counter()
        r = quantize_artifact(art, calib="natural", method=method, target=target, num_samples=args.num_samples,
                              analyze=False, simulate=False, force=True, console=console,
                              int8_accumulation=acc)
        quant_s[step] = {"wall_s": round(time.perf_counter() - t0, 1), "steps_s": r.entry["timings_s"]}
        console.print(f"quantize {step}: {quant_s[step]['wall_s']}s")
    paths = {"fp32": art / "fp32" / "model.onnx", "int8_edgeforge": art / "int8-minmax-int32" / "model.onnx",
             "int8_edgeforge_saturation_safe": art / "int8-minmax-int16-pairs" / "model.onnx",
             "int8_edgeforge_openvino_placement": art / "int8-minmax-cpu-openvino-int32" / "model.onnx",
             "int8_edgeforge_openvino_saturation_safe": art / "int8-minmax-cpu-openvino-int16-pairs" / "model.onnx",
             "int8_ort_quantize_static": art / "int8-ort" / "model.onnx"}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    results = dict(previous.get("latency", {}))
    for rt, make in (("cpu-ort", _ort_runner), ("cpu-openvino", _ov_runner)):
        if rt not in args.runtimes:
            continue
        runners, errors = {}, {}
        for k, p in paths.items():
            try:
                runners[k] = make(p, args.threads)
            except Exception as e:  # noqa: BLE001 - a model the runtime cannot load is reported, not hidden
                errors[k] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        results[rt] = {**summarize(alternate(runners, x, args.blocks, args.calls)), **errors}
        console.print(rt, {k: (v.get("median_ms"), v.get("ratio_vs_fp32"), v.get("error", "")[:80]) for k, v in results[rt].items()})
        del runners
    import onnxruntime
    import openvino

    doc = {"model": args.recipe, "weights": "random init (latency does not depend on values)",
           "calibration": {"set": "natural", "samples": args.num_samples}, "quantize_seconds": quant_s,
           "latency": results,
           "targets": {"cpu-ort": {"ratio_max": 0.7, "ort_quantize_static_reference": 0.9},
                       "cpu-openvino": {"ratio_max": 0.5}},
           "openvino_inference_precision_hint": args.ov_precision,
           "method": f"alternating blocks: {args.blocks} blocks x {args.calls} calls, each after a "
                     "150 ms idle pause and 2 untimed calls; median per block, median over blocks; "
                     "ratio = median of per-block ratios",
           "machine": {"cpu": cpu_record(), "cores": os.cpu_count(),
                       "threads": args.threads or "runtime default",
                       "load_avg_at_end": os.getloadavg()},
           "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}}
    write_json_atomic(args.out, doc)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
