"""Accuracy of every quantization method on the trained fixtures (held-out digits eval split).

    .venv/bin/python benchmarks/quant_accuracy.py [FIXTURE ...] [--bits w8a8 w4a8] [--num-samples 32]

For each trained fixture (fixtures/<name>.json + .pt from scripts/train_fixtures.py): export the
FP32 ONNX with its weights (`edgeforge export`), quantize with minmax / percentile / mse /
entropy and ONNX Runtime's own quantize_static (`ort`) on 32 digits calibration samples, and
evaluate FP32 and INT8 in ONNX Runtime on the 500 held-out digits. Rows: model, method, bits,
fp32_top1, quant_top1, drop, agreement (top-1 agreement torch simulation vs ORT QDQ; null for
ort, which has no simulation), agreement_fp32_int8. Writes benchmarks/results/quant_accuracy.json
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgeforge.artifacts import write_json_atomic  # noqa: E402

METHODS = ("minmax", "percentile", "mse", "entropy", "ort")


def trained_fixtures() -> list[dict]:
    out = []
    for meta in sorted((ROOT / "fixtures").glob("*.json")):
        m = json.loads(meta.read_text())
        if (ROOT / m["weights"]).is_file():
            out.append(m)
    return out


def run(names: list[str], bits_list: list[str], num_samples: int, cache: Path, console: Console) -> list[dict]:
    from edgeforge.export import export_recipe
    from edgeforge.quant.pipeline import quantize_artifact

    rows = []
    for fx in trained_fixtures():
        if names and fx["name"] not in names:
            continue
        recipe = str(ROOT / fx["recipe"]) if fx["recipe"].endswith(".yaml") else fx["recipe"]
        art = cache / fx["name"]
        t0 = time.perf_counter()
        export_recipe(recipe, out_dir=art, weights=str(ROOT / fx["weights"]), check_simplify_latency=False)
        console.print(f"[bold]{fx['name']}[/]: exported in {time.perf_counter() - t0:.0f}s")
        for bits in bits_list:
            for method in METHODS:
                if method == "ort" and bits != "w8a8":
                    continue
                t0 = time.perf_counter()
                r = quantize_artifact(art, calib="digits", method=method, bits=bits, num_samples=num_samples,
                                      analyze=False, simulate=True, console=console)
                acc = r.entry["accuracy"]
                row = {"model": fx["name"], "method": method, "bits": bits, "fp32_top1": acc.get("fp32_top1"),
                       "quant_top1": acc.get("int8_top1"), "drop": acc.get("drop"),
                       "agreement": acc.get("agreement_torch_sim_ort"),
                       "agreement_fp32_int8": acc.get("agreement_fp32_int8"),
                       "torch_sim_top1": acc.get("torch_sim_top1"), "eval_count": acc.get("eval_count"),
                       "calib_samples": num_samples, "seconds": round(time.perf_counter() - t0, 1)}
                if "torch_sim" in acc:
                    row["torch_sim"] = acc["torch_sim"]
                rows.append(row)
                console.print(row)
    return rows


def table(rows: list[dict]) -> Table:
    t = Table(title="quantization accuracy on the held-out digits split (ONNX Runtime CPU)")
    cols = ("model", "method", "bits", "fp32_top1", "quant_top1", "drop", "agreement", "agreement_fp32_int8")
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "method", "bits") else "right")
    for r in rows:
        t.add_row(*("-" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]))
                    for c in cols))
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="fixtures (default: every trained one)")
    ap.add_argument("--bits", nargs="+", default=["w8a8"], choices=["w8a8", "w6a6", "w4a8", "w4a4"])
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--cache", default=str(ROOT / "artifacts" / "fixtures"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quant_accuracy.json"))
    args = ap.parse_args(argv)
    console = Console()
    rows = run(args.names, args.bits, args.num_samples, Path(args.cache), console)
    if not rows:
        console.print("no trained fixtures found: run scripts/train_fixtures.py first")
        return 1
    out = Path(args.out)
    if out.is_file() and args.names:  # keep other fixtures' rows when re-running a subset
        old = [r for r in json.loads(out.read_text()) if r["model"] not in args.names]
        rows = old + rows
    write_json_atomic(out, rows)
    console.print(table(rows))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
