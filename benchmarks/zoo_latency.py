"""ONNX Runtime CPU latency of the model zoo (RMT, SiT, token filtering, TRecViT, FMViT) at batch 1,
and token filtering's latency against its keep ratio, with MACs beside every figure.

    .venv/bin/python benchmarks/zoo_latency.py                     # every variant, then the sweep
    .venv/bin/python benchmarks/zoo_latency.py --variants rmt_t,sit_t --skip-sweep

Each variant is exported by the real pipeline (`edgeforge.export.export_recipe`, custom ops
decomposed to standard ONNX, parity checked), so the export time recorded here is what the
generic recipe test pays for that variant. Latency: ONNX Runtime CPU, 2 intra-op threads, medians
over blocks of calls (`edgeforge.bench.latency`). Variants above `--max-gmacs` are exported but
not timed (a single call would take seconds on a 2-core machine); the JSON says so.

The keep-ratio sweep times the four token-filtering models in alternating blocks (a runtime's
spinning threads slow whatever runs right after it, so back-to-back runs would be unfair) and
reports, per ratio, latency and MACs relative to keep ratio 1.0: how much of the MAC reduction
turns into a latency reduction.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from edgeforge.bench.latency import Settings, measure, summarize
from edgeforge.export import export_recipe
from edgeforge.export.model_card import measure as measure_card
from edgeforge.export.model_stats import count_macs
from edgeforge.models import build_model
from edgeforge.recipes import all_recipes
from edgeforge.runtimes import create_runner

FAMILIES = ("rmt", "sit", "token_filter", "trecvit", "fmvit")
KEEP_RATIOS = (1.0, 0.7, 0.5, 0.3)
OUT = Path(__file__).resolve().parent / "results" / "zoo_latency.json"


def _latency(paths: dict[str, Path], feeds: dict[str, dict[str, np.ndarray]], settings: Settings,
             threads: int) -> dict[str, dict]:
    """Median-based latency of each model, alternating blocks between them when several."""
    runners = {k: create_runner("onnxruntime", p, threads=threads) for k, p in paths.items()}
    for r in runners.values():
        r.activate()
    try:
        samples = measure(runners, feeds, settings)
    finally:
        for r in runners.values():
            r.deactivate()
    out = {}
    for k, s in samples.items():
        summary = summarize(s, batch=1)
        out[k] = {key: summary[key] for key in ("p50", "p90", "mean", "std", "noise_pct", "noisy",
                                                 "iterations", "blocks")}
    return out


def _feed_for(onnx_path: Path, entry: dict) -> dict[str, np.ndarray]:
    """Random inputs of the exported graph's declared shapes (latency does not depend on values)."""
    rng = np.random.default_rng(0)
    return {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in entry["inputs"]}


def bench_variants(names: list[str], settings: Settings, threads: int, max_gmacs: float, workdir: Path,
                   on_result=None) -> dict:
    """Export and time each variant, cheapest first; `on_result(results)` after each one."""
    recipes = all_recipes()
    cards = {n: measure_card(recipes[n]) for n in names}
    names = sorted(names, key=lambda n: cards[n].macs or 0)
    results = {}
    for name in names:
        recipe, card = recipes[name], cards[name]
        row: dict = {"builder": recipe.spec.builder, "input": recipe.spec.input.shape,
                     "params_m": card.params / 1e6 if card.params else None,
                     "gmacs": card.macs / 1e9 if card.macs else None,
                     "published": recipe.spec.published.model_dump(exclude_none=True)}
        t0 = time.perf_counter()
        try:
            res = export_recipe(recipe, out_dir=workdir / name, custom_ops="decompose", force=True,
                                check_simplify_latency=False)
        except Exception as e:  # noqa: BLE001 - record the failure, keep benchmarking the others
            row["export_error"] = f"{type(e).__name__}: {e}"
            results[name] = row
            print(f"{name}: export failed: {row['export_error']}", flush=True)
            if on_result:
                on_result(results)
            continue
        row["export_s"] = round(time.perf_counter() - t0, 1)  # build + transforms + export + parity
        row["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        row["parity_rel_err"] = res.entry["parity"].get("rel_err")
        row["onnx_nodes"] = len(onnx.load(str(res.onnx_path), load_external_data=False).graph.node)
        if row["gmacs"] is not None and row["gmacs"] > max_gmacs:
            row["latency_ms"] = None
            row["latency_note"] = f"not timed: {row['gmacs']:.0f} GMACs exceed --max-gmacs {max_gmacs:g}"
        else:
            lat = _latency({name: res.onnx_path}, {name: _feed_for(res.onnx_path, res.entry)}, settings, threads)[name]
            row["latency_ms"] = lat
        results[name] = row
        p50 = row["latency_ms"]["p50"] if row.get("latency_ms") else None
        print(f"{name}: export {row['export_s']}s, {row['gmacs'] or 0:.3f} GMACs, "
              f"p50 {p50 if p50 is None else round(p50, 2)} ms", flush=True)
        # free the export's files as we go (the big variants are hundreds of MB)
        for f in sorted((workdir / name).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        if on_result:
            on_result(results)
    return results


def bench_keep_ratio(builder: str, settings: Settings, threads: int, workdir: Path) -> dict:
    """Token filtering: latency and MACs at each keep ratio, timed in alternating blocks."""
    paths, feeds, macs, keep = {}, {}, {}, {}
    x = torch.randn(1, 3, 224, 224)
    for r in KEEP_RATIOS:
        torch.manual_seed(0)
        model = build_model(builder, keep_ratio=r)
        key = f"keep_{r:.1f}"
        path = workdir / f"{key}.onnx"
        f = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"])
        path.write_bytes(f.getvalue())
        paths[key], feeds[key] = path, {"input": x.numpy()}
        macs[key] = count_macs(model, (x,))
        keep[key] = model.keep
    lat = _latency(paths, feeds, settings, threads)
    base_ms, base_macs = lat["keep_1.0"]["p50"], macs["keep_1.0"]
    rows = {}
    for r in KEEP_RATIOS:
        key = f"keep_{r:.1f}"
        lat_rel = lat[key]["p50"] / base_ms
        mac_rel = macs[key] / base_macs
        rows[key] = {
            "keep_ratio": r, "tokens_kept": keep[key], "gmacs": macs[key] / 1e9, "macs_rel": mac_rel,
            "latency_ms": lat[key], "latency_rel": lat_rel,
            # share of the MAC saving that shows up as a latency saving (1.0 = all of it)
            "latency_saving_per_mac_saving": None if r == 1.0 else (1 - lat_rel) / (1 - mac_rel),
        }
        print(f"{builder} keep {r}: {keep[key]} tokens, {macs[key] / 1e9:.3f} GMACs ({mac_rel:.2f}x), "
              f"p50 {lat[key]['p50']:.2f} ms ({lat_rel:.2f}x)", flush=True)
    return {"builder": builder, "command": " ".join([Path(sys.executable).name, *sys.argv]), "ratios": rows,
            "note": "latency_rel vs macs_rel: below 1 means the token reduction saves less time than "
                    "MACs (fixed costs: patch embedding, scoring, TopK/Gather, the head, and "
                    "per-op overheads that do not shrink with the token count)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", help="comma-separated recipe names (default: every variant of our families)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--block-size", type=int, default=5)
    ap.add_argument("--max-gmacs", type=float, default=40.0)
    ap.add_argument("--sweep-builder", default="edgeforge:token_filter_deit_s")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-variants", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = args.variants.split(",") if args.variants else sorted(
        n for n, r in all_recipes().items() if r.family in FAMILIES)
    settings = Settings(warmup=2, warmup_time_s=0.2, iterations=args.iterations, block_size=args.block_size)
    result = {
        "what": "ONNX Runtime CPU latency at batch 1 of the model zoo, and token filtering vs keep ratio",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                        "onnx": onnx.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "processor": platform.processor() or None,
                        "threads": args.threads,
                        "note": "shared 2-core machine (other jobs running): compare figures within "
                                "one run, not across runs"},
        "settings": settings.to_dict(),
        "macs": "torch.utils.flop_counter.FlopCounterMode, flops / 2 (matmuls and convolutions)",
    }
    if args.out.exists():  # keep the part not re-measured this time
        previous = json.loads(args.out.read_text())
        for key in ("variants", "token_filter_keep_ratio"):
            if key in previous:
                result[key] = previous[key]
    def write(variants: dict | None = None) -> None:
        if variants:
            result.setdefault("variants", {}).update(variants)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".json.tmp")  # atomic: a killed run leaves the last good file
        tmp_out.write_text(json.dumps(result, indent=1) + "\n")
        tmp_out.replace(args.out)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_variants:
            bench_variants(names, settings, args.threads, args.max_gmacs, work, on_result=write)
        if not args.skip_sweep:
            result["token_filter_keep_ratio"] = bench_keep_ratio(args.sweep_builder, settings, args.threads, work)
    write()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
