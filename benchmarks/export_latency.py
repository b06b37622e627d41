"""ONNX Runtime CPU latency of each exported EfficientFormer variant vs PyTorch eager.

For every variant: export (cached under artifacts/bench/<variant>, skipped when unchanged), then
time ONNX Runtime and PyTorch eager on the same input with the same thread count, alternating
the two in blocks of calls (a runtime's spinning threads slow whatever runs right after it) and
taking medians. `peak_fraction` = 2 x MACs / ORT latency / this machine's fp32 matmul peak, where
the peak is measured here with a large matmul at the same thread count.

    .venv/bin/python benchmarks/export_latency.py [--threads 2] [--variants efficientformer_l1 ...]

Writes benchmarks/results/export_latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7", "efficientformer_v2_s0",
                    "efficientformer_v2_s1", "efficientformer_v2_s2", "efficientformer_v2_l"]


def best_seconds(fn, reps: int, warmup: int = 2) -> float:
    """Fastest of `reps` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak_gflops(threads: int, n: int = 2048, reps: int = 10) -> dict:
    """Best sustained fp32 GFLOP/s of a large square matmul, in torch and in ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch_gflops = 2 * n ** 3 / best_seconds(lambda: torch.mm(a, b), reps) / 1e9
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"A": a.numpy(), "B": b.numpy()}
    ort_gflops = 2 * n ** 3 / best_seconds(lambda: sess.run(None, feed), reps) / 1e9
    return {"n": n, "torch_gflops": torch_gflops, "ort_gflops": ort_gflops, "peak_gflops": max(torch_gflops, ort_gflops)}


def alternate(fns: dict, blocks: int, calls: int) -> dict[str, float]:
    """Median ms per call of each fn, alternating them in blocks of `calls` calls."""
    samples = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    keys = list(fns)
    for b in range(blocks):
        for k in (keys if b % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3 / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_latency.json"))
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from edgeforge.export import export_recipe
    from edgeforge.export.pipeline import prepare_model

    peak = matmul_peak_gflops(args.threads)
    print(f"fp32 matmul peak ({args.threads} threads): {peak['peak_gflops']:.1f} GFLOP/s", file=sys.stderr)
    rows = []
    for name in args.variants:
        result = export_recipe(name, out_dir=ROOT / "artifacts" / "bench" / name)
        prepared = prepare_model(name)
        torch.set_num_threads(args.threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(result.onnx_path), so, providers=["CPUExecutionProvider"])
        x = next(iter(prepared.inputs.values()))
        feed = {sess.get_inputs()[0].name: x.numpy()}
        model = prepared.model

        def eager():
            with torch.inference_mode():
                model(x)

        med = alternate({"ort": lambda: sess.run(None, feed), "eager": eager}, args.blocks, args.calls)
        macs = result.entry["model"]["macs"]
        row = {"variant": name, "ort_ms": round(med["ort"], 3), "eager_ms": round(med["eager"], 3),
               "ratio": round(med["ort"] / med["eager"], 3), "gmacs": round(macs / 1e9, 3),
               "peak_fraction": round(2 * macs / (med["ort"] / 1e3) / (peak["peak_gflops"] * 1e9), 3)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    out = {"benchmark": "export_latency", "threads": args.threads, "blocks": args.blocks, "calls": args.calls,
           "machine": {"platform": platform.platform(), "processor": platform.processor()},
           "matmul_peak": peak, "toolchain": __import__("edgeforge.versions").versions.toolchain_versions(),
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'variant':24} {'ort_ms':>8} {'eager_ms':>9} {'ratio':>6} {'peak_frac':>9}")
    for r in rows:
        print(f"{r['variant']:24} {r['ort_ms']:8.2f} {r['eager_ms']:9.2f} {r['ratio']:6.3f} {r['peak_fraction']:9.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
