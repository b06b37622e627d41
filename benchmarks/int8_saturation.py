"""INT8 on CPUs without VNNI: accuracy with the real AVX2 integer kernels, per overflow fix.

    .venv/bin/python benchmarks/int8_saturation.py [FIXTURE ...] [--methods minmax percentile mse]
        [--fixes none pairs reduce-range] [--runtimes openvino onnxruntime] [--eval 500]

For every trained fixture (fixtures/, held-out digits or clips), method and overflow fix
(`none`: plain 8-bit weights, what a VNNI host makes; `pairs`: edgeforge's saturation-safe
weights; `reduce-range`: 7-bit weights, ORT's and NNCF's answer), the W8A8 QDQ model is run
- as float emulation of its graph (ONNX Runtime, graph optimisation off: exact on any CPU),
- on each runtime's AVX2 int8 kernels (edgeforge.runtimes.isa: natively on an AVX2 CPU; on a
  VNNI CPU OpenVINO with ONEDNN_MAX_CPU_ISA=AVX2 and ONNX Runtime under qemu -cpu Haswell),
and reports top-1 against the labels, the drop from FP32, and the top-1 agreement of the
kernels with the emulation. Writes benchmarks/results/int8_saturation.json with the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeforge.artifacts import write_json_atomic  # noqa: E402
from edgeforge.targets.host import cpu_record  # noqa: E402


def fixtures(names: list[str]) -> list[dict]:
    out = []
    for meta in sorted((ROOT / "fixtures").glob("*.json")):
        m = json.loads(meta.read_text())
        if (ROOT / m["weights"]).is_file() and (not names or m["name"] in names):
            out.append(m)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="fixture names (default: every trained fixture)")
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile", "mse"])
    ap.add_argument("--fixes", nargs="+", default=["none", "pairs", "reduce-range"])
    ap.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    ap.add_argument("--eval", type=int, default=500, help="held-out samples (digits: 500 at most)")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "saturation"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_saturation.json"))
    args = ap.parse_args(argv)

    import onnx
    from rich.console import Console

    from edgeforge.data.calib import load_calib
    from edgeforge.errors import NotAvailable
    from edgeforge.export import export_recipe
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.engine import quantize_onnx
    from edgeforge.quant.overflow import saturation_check
    from edgeforge.quant.pipeline import _input_spec, eval_split
    from edgeforge.quant.scheme import resolve
    from edgeforge.artifacts import Manifest
    from edgeforge.runtimes import isa

    console = Console()
    out_path = Path(args.out)
    # rows merge with an earlier run's by (model, method, fix): one run per runtime is fine
    previous = json.loads(out_path.read_text()).get("rows", []) if out_path.is_file() else []
    rows = {(r["model"], r["method"], r["overflow_fix"]): r for r in previous}

    def write() -> None:
        doc = {"cpu": cpu_record(), "how": ("AVX2 int8 kernels via edgeforge.runtimes.isa: OpenVINO with "
                                            "ONEDNN_MAX_CPU_ISA=AVX2, ONNX Runtime under qemu-x86_64 -cpu Haswell "
                                            "(natively where the CPU has no VNNI)"),
               "calibration_samples": args.num_samples, "rows": list(rows.values())}
        write_json_atomic(out_path, doc)

    for fx in fixtures(args.names):
        recipe = str(ROOT / fx["recipe"]) if fx["recipe"].endswith(".yaml") else fx["recipe"]
        art = Path(args.cache) / fx["name"]
        export_recipe(recipe, out_dir=art, weights=str(ROOT / fx["weights"]), check_simplify_latency=False)
        spec, _ = _input_spec(Manifest(art).step("export"))
        calib_name = "digits"  # the fixtures are trained on digits (clips of them for video): labelled
        calib = load_calib(calib_name, spec, args.num_samples)
        ev = eval_split(calib_name, calib.preprocess)
        x, labels = ev.x[:args.eval], ev.labels[:args.eval]
        fp32 = onnx.load(str(art / "fp32" / "model.onnx"))
        out_name = fp32.graph.output[0].name
        fp32_top1 = float((run_outputs(fp32, x, [out_name], optimize="all")[out_name].argmax(-1) == labels).mean())
        console.print(f"[bold]{fx['name']}[/] FP32 top-1 {fp32_top1:.4f} on {len(x)} held-out samples")
        for method in args.methods:
            for fix in args.fixes:
                acc = "int32" if fix == "none" else "int16-pairs"
                scheme = resolve("w8a8", "cpu-openvino", method, int8_accumulation=acc, overflow_fix=fix)
                q = quantize_onnx(fp32, calib.x, method, scheme, show_progress=False)
                emu = run_outputs(q.model, x, [out_name], optimize="disable")[out_name].argmax(-1)
                row = rows.setdefault((fx["name"], method, fix), {})
                row.update({"model": fx["name"], "method": method, "overflow_fix": fix, "fp32_top1": fp32_top1,
                       "emulation_top1": round(float((emu == labels).mean()), 4), "eval_count": len(x),
                       "layers_that_can_saturate": saturation_check(q.model)["layers_that_can_saturate"]})
                with tempfile.TemporaryDirectory() as td:
                    path = Path(td) / "int8.onnx"
                    onnx.save(q.model, str(path))
                    for rt in args.runtimes:
                        t0 = time.perf_counter()
                        try:
                            kern = isa.run(path, x, rt, "avx2").argmax(-1)
                        except NotAvailable as e:
                            row[f"{rt}_avx2"] = {"not_run": str(e)[:300]}
                            continue
                        top1 = float((kern == labels).mean())
                        row[f"{rt}_avx2"] = {"top1": round(top1, 4), "drop": round(fp32_top1 - top1, 4),
                                             "agreement_with_emulation": round(float((kern == emu).mean()), 4),
                                             "seconds": round(time.perf_counter() - t0, 1)}
                write()
                console.print({k: v for k, v in row.items() if k not in ("model",)})
    write()
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
