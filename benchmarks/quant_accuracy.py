"""Accuracy of every quantization method: on the trained fixtures (held-out digits) and on real
ImageNet-pretrained models (INT8 against FP32 on random crops of the bundled photos).

    .venv/bin/python benchmarks/quant_accuracy.py [FIXTURE ...] [--bits w8a8 w4a8] [--num-samples 32]
    .venv/bin/python benchmarks/quant_accuracy.py --models mobilenetv2,dinov2 [--eval-count 200]

Fixtures (fixtures/<name>.json + .pt from scripts/train_fixtures.py): export the FP32 ONNX with
its weights (`edgeforge export`), quantize with minmax / percentile / mse / entropy and ONNX
Runtime's own quantize_static (`ort`) on 32 digits calibration samples, and evaluate FP32 and
INT8 in ONNX Runtime on the 500 held-out digits. Rows: model, method, bits, fp32_top1,
quant_top1, drop, agreement (top-1 agreement torch simulation vs ORT QDQ; null for ort, which
has no simulation), agreement_fp32_int8.

Real models (`--models`; recipes/pretrained.yaml, weights fetched from the package registry):
`mobilenetv2` (torchvision's ImageNet MobileNetV2) and `dinov2` (DINOv2 ViT-S/14 backbone). Each
is quantized W8A8 for cpu-ort on 32 `natural` calibration crops by every edgeforge method (the
library's quantize_artifact), by ONNX Runtime's quantize_static (QDQ, per-channel, MinMax) with
and without reduce_range (7-bit weights), and by NNCF's nncf.quantize with its defaults (ONNX
backend; installed for the benchmark only, not an edgeforge dependency; if it cannot run, the
JSON says why). Every INT8 model is compared with its FP32 model (ONNX Runtime) on
`--eval-count` other crops (seed 2024, not the calibration crops), run three ways: ONNX Runtime's
integer kernels (full optimisation), the float emulation of the QDQ graph (ONNX Runtime with
graph optimisation disabled) and OpenVINO. Classifiers: top-1 / top-5 agreement; the backbone:
nearest-neighbour agreement and embedding cosine (edgeforge.bench.photo_eval). Exported and
quantized models are cached under benchmarks/.cache (git-ignored); a step whose inputs did not
change is skipped, so a rerun after a quantizer change only redoes the quantization.

Writes benchmarks/results/quant_accuracy.json ({"cpu", "rows", "photo_eval"}; every row names
the CPU that measured it: int8 kernels compute differently with and without VNNI) and prints
the tables.
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

from edgeforge.quant.methods import names as _method_names  # noqa: E402

METHODS = _method_names()  # the registry: every method edgeforge has, the ort baseline included


def trained_fixtures() -> list[dict]:
    out = []
    for meta in sorted((ROOT / "fixtures").glob("*.json")):
        m = json.loads(meta.read_text())
        if (ROOT / m["weights"]).is_file():
            out.append(m)
    return out


def run(names: list[str], bits_list: list[str], num_samples: int, cache: Path, console: Console,
        methods: tuple[str, ...] = ()) -> list[dict]:
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
            for method in methods or METHODS:
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


# ----------------------------------------------------------------------------- real models
REAL = {  # --models name -> (recipe, kind)
    "mobilenetv2": ("pretrained_mobilenetv2", "classifier"),
    "dinov2": ("pretrained_dinov2_vits14", "embedding"),
}
EVAL_SEED = 2024  # the calibration crops are `natural` (seed 0): these are other crops
OURS = tuple(m for m in METHODS if m != "ort")  # ort is run below with the other baselines
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """The CPU model and the flags that decide how its int8 kernels compute."""
    from edgeforge.targets import host

    flags = host._cpu_flags()
    info = {"model": host._cpu_name(), "flags": {f: f in flags for f in INT8_FLAGS}, "cores": host.cpu_count()}
    if hasattr(host, "int8_accumulation"):  # the targets' own reading, where this version has it
        info["int8_accumulation"] = dict(zip(("onnxruntime", "why"), host.int8_accumulation("onnxruntime")))
    return info


def source_state() -> dict:
    """The commit measured, and uncommitted changes to the code that decides the numbers (the
    working tree may hold someone's quantizer work in progress)."""
    import subprocess

    def git(*a):
        p = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "uncommitted": [ln[3:] for ln in git("status", "--porcelain", "--", "edgeforge").splitlines()]}


def _ort_static(fp32: Path, x, reduce_range: bool, out: Path) -> dict:
    """ONNX Runtime's quantize_static as a user calls it for x86 (edgeforge.quant.ort_baseline's
    settings: QDQ, per-channel int8 weights, uint8 activations, MinMax), +- reduce_range."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeforge.quant.ort_baseline import _Reader
    from edgeforge.quant.calibrate import input_name
    import onnx

    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), _Reader(input_name(onnx.load(str(fp32))), x), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    tmp.replace(out)
    return {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True,
            "reduce_range": reduce_range, "activation_type": "QUInt8", "weight_type": "QInt8",
            "calibrate_method": "MinMax", "extra_options": extra}


def _nncf(fp32: Path, x, out: Path, transformer: bool = False) -> dict:
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    opts = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize(model, nncf.Dataset([{name: x[i:i + 1]} for i in range(len(x))]), **opts)
    onnx.save(q, str(out.with_suffix(".tmp.onnx")))
    out.with_suffix(".tmp.onnx").replace(out)
    return {"tool": "nncf.quantize", "nncf": nncf.__version__, "backend": "onnx",
            "settings": ("model_type=TRANSFORMER (SmoothQuant and its transformer rules), " if transformer else
                         "defaults (") + "preset performance, subset_size 300: all calibration samples given"
                        + ("" if transformer else ")")}


def baseline_models(art: Path, data, console: Console) -> dict[str, dict]:
    """ORT quantize_static (+- reduce_range) and NNCF on the artifact's FP32 model, cached in
    ART/bench-<name>/ under the hash of (fp32 model, calibration set, tool versions)."""
    import importlib.metadata as md

    from edgeforge.artifacts import sha256_file, sha256_json

    fp32 = art / "fp32" / "model.onnx"
    out: dict[str, dict] = {}
    jobs = {"ort": lambda p: _ort_static(fp32, data.x, False, p),
            "ort-reduce-range": lambda p: _ort_static(fp32, data.x, True, p),
            "nncf": lambda p: _nncf(fp32, data.x, p),
            "nncf-transformer": lambda p: _nncf(fp32, data.x, p, transformer=True)}
    for name, job in jobs.items():
        versions = {}
        for pkg in ("onnxruntime", "nncf") if name.startswith("nncf") else ("onnxruntime",):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        key = sha256_json({"fp32": sha256_file(fp32), "calib": data.hash, "versions": versions, "v": 1})
        d = art / f"bench-{name}"
        path, meta = d / "model.onnx", d / "meta.json"
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
            out[name] = json.loads(meta.read_text())
            continue
        if name.startswith("nncf") and versions.get("nncf") is None:
            out[name] = {"error": "nncf is not installed: `.venv/bin/python -m pip install nncf "
                                  "-c .venv/torch-constraints.txt` (benchmark only, not an edgeforge dependency)"}
            continue
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            settings = job(path)
        except Exception as e:  # noqa: BLE001 - a baseline that cannot run is recorded, not fatal
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            console.print(f"  {name}: [red]failed[/] {out[name]['error']}")
            continue
        out[name] = {"key": key, "settings": settings, "path": str(path),
                     "quantize_seconds": round(time.perf_counter() - t0, 1)}
        write_json_atomic(meta, out[name])
    return out


def cached_run(store: Path, path: Path, x, eval_key: str, runtime: str = "onnxruntime", **opts):
    """photo_eval.run, its outputs kept in `store` (benchmarks/.cache/outputs) under the hash of (model
    file, crops, runtime and its version, options): a rerun after a quantizer change evaluates
    only the models whose file changed (the baselines' do not). Returns (outputs, cached)."""
    import importlib.metadata as md

    import numpy as np

    from edgeforge.artifacts import sha256_file, sha256_json
    from edgeforge.bench import photo_eval as pe

    pkg = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(runtime, runtime)
    key = sha256_json({"model": sha256_file(path), "crops": eval_key, "runtime": runtime,
                       "version": md.version(pkg), "options": opts})
    f = store / f"{key[:32]}.npy"
    if f.is_file():
        return np.load(f), True
    out = pe.run(path, x, runtime, **opts)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(f)
    return out, False


def evaluate_int8(store: Path, path: Path, x, ref, kind: str, eval_key: str) -> dict:
    """The INT8 model on the eval crops: ORT integer kernels, ORT float emulation, OpenVINO,
    each against FP32 (`ref`), and the kernels against the emulation."""
    from edgeforge.bench import photo_eval as pe

    res, outs = {}, {}
    for col, runtime, opts in (("ort", "onnxruntime", {"graph_optimization": "all"}),
                               ("emulation", "onnxruntime", {"graph_optimization": "disable"}),
                               ("openvino", "openvino", {})):
        t0 = time.perf_counter()
        try:
            outs[col], cached = cached_run(store, path, x, eval_key, runtime, **opts)
        except Exception as e:  # noqa: BLE001 - e.g. OpenVINO missing: say so in the row
            res[col] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        res[col] = pe.agreement(ref, outs[col], kind) | (
            {"cached": True} if cached else {"seconds": round(time.perf_counter() - t0, 1)})
    for col in ("ort", "openvino"):
        if col in outs and "emulation" in outs:
            res[f"{col}_vs_emulation"] = pe.agreement(outs["emulation"], outs[col], kind)
    res["_outputs"] = outs
    return res


def run_real(models: list[str], num_samples: int, eval_count: int, cache: Path, console: Console,
             cpu: dict, methods: tuple[str, ...] = (),
             bits_list: tuple[str, ...] = ("w8a8",), eval_seed: int = EVAL_SEED) -> tuple[list[dict], dict]:
    from edgeforge.bench import photo_eval as pe
    from edgeforge.data.calib import load_calib
    from edgeforge.data.preprocess import Preprocess
    from edgeforge.export import export_recipe
    from edgeforge.quant.pipeline import quantize_artifact
    from edgeforge.recipes import load

    rows, details = [], {}
    for short in models:
        recipe_name, kind = REAL[short]
        recipe = load(recipe_name)
        art = cache / recipe_name
        t0 = time.perf_counter()
        exp = export_recipe(recipe, out_dir=art, check_simplify_latency=False)
        console.print(f"[bold]{short}[/] ({recipe_name}): export {'up to date' if exp.skipped else 'done'} "
                      f"in {time.perf_counter() - t0:.0f}s; weights {exp.entry['weights'].get('package')}")
        pre = Preprocess.from_input_spec(recipe.spec.input)
        x, ids = pe.crops(pre, eval_count, eval_seed)
        eval_key = f"natural seed {eval_seed} x{eval_count} {pre.describe()}"
        fp32 = art / "fp32" / "model.onnx"
        ref, _ = cached_run(cache / "outputs", fp32, x, eval_key)
        models_to_eval: dict[str, tuple[Path | None, dict]] = {}
        for bits in bits_list:
            for method in [m for m in OURS if not methods or m in methods]:
                t0 = time.perf_counter()
                r = quantize_artifact(art, calib="natural", method=method, bits=bits, target="cpu-ort",
                                      num_samples=num_samples, analyze=False, simulate=False, console=console,
                                      show_progress=False)
                key = method if bits == "w8a8" else f"{method}@{bits}"  # rows split it back
                models_to_eval[key] = (r.onnx_path, {"tool": "edgeforge", "skipped": r.skipped,
                                                     "quantize_seconds": None if r.skipped else
                                                     round(time.perf_counter() - t0, 1)})
        data = load_calib("natural", recipe.spec.input, num_samples)
        # the baselines are 8-bit tools (quantize_static, NNCF): W8A8 rows only
        for name, b in (baseline_models(art, data, console).items() if "w8a8" in bits_list else ()):
            if not methods or name in methods or (name.startswith("ort") and "ort" in methods) \
                    or (name.startswith("nncf") and "nncf" in methods):
                models_to_eval[name] = (Path(b["path"]) if "path" in b else None, b)
        per_model_outputs = {}
        fp32_ov = None
        try:
            fp32_ov = pe.agreement(ref, cached_run(cache / "outputs", fp32, x, eval_key, "openvino")[0], kind)
        except Exception as e:  # noqa: BLE001
            fp32_ov = {"error": f"{type(e).__name__}: {e}"[:300]}
        for method, (path, meta) in models_to_eval.items():
            row = {"model": short, "recipe": recipe_name, "kind": kind, "method": method.split("@")[0],
                   "bits": method.split("@")[1] if "@" in method else "w8a8",
                   "target": "cpu-ort", "calib": f"natural x{num_samples}",
                   "eval": f"natural crops seed {eval_seed} x{eval_count}", "cpu": cpu["model"],
                   "quantize_seconds": meta.get("quantize_seconds"),
                   "settings": meta.get("settings", {"tool": "edgeforge.quant.pipeline.quantize_artifact"})}
            if path is None:
                row["error"] = meta.get("error")
                rows.append(row)
                console.print(f"  {method}: not measured ({row['error']})")
                continue
            t0 = time.perf_counter()
            res = evaluate_int8(cache / "outputs", path, x, ref, kind, eval_key)
            per_model_outputs[method] = res.pop("_outputs")
            row |= res
            rows.append(row)
            console.print(f"  {method}: " + ", ".join(
                f"{c} {pe.headline(res[c], kind)}" for c in ("ort", "emulation", "openvino")
                if isinstance(res.get(c), dict) and "error" not in res[c])
                + f" ({time.perf_counter() - t0:.0f}s)")
        detail = {"recipe": recipe_name, "kind": kind, "weights": {k: v for k, v in exp.entry["weights"].items()
                                                                    if k != "local_path"},
                  "eval_count": eval_count, "eval_seed": eval_seed, "fp32_openvino_vs_ort": fp32_ov}
        if kind == "classifier":
            # a few crops a person can look at: FP32 vs each method's INT8 (ORT kernels) top-1 class
            r1 = ref.argmax(1)
            picks = sorted(range(len(ids)), key=lambda i: -sum(
                int(o["ort"][i].argmax() != r1[i]) for o in per_model_outputs.values() if "ort" in o))[:6]
            detail["examples"] = [{"crop": ids[i], "fp32": pe.class_name(int(r1[i])),
                                   **{m: pe.class_name(int(o["ort"][i].argmax()))
                                      for m, o in per_model_outputs.items() if "ort" in o}} for i in sorted(picks)]
            detail["fp32_top1_classes"] = dict(sorted(
                {pe.class_name(int(c)): int((r1 == c).sum()) for c in set(r1.tolist())}.items(),
                key=lambda kv: -kv[1])[:10])
        details[short] = detail
    return rows, details


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def real_table(rows: list[dict], cpu: dict) -> Table:
    flags = " ".join(f for f, on in cpu.get("flags", {}).items() if on) or "-"
    t = Table(title=f"INT8 vs FP32 on photo crops, {cpu.get('model')} ({flags}): top-1 agreement "
                    "(classifier) / nearest-neighbour agreement (backbone); KL(FP32 || INT8) of the classifier's "
                    "softmax; kernels vs emulation on the crops the emulation decides clearly")
    cols = ("model", "method", "ort", "ort top5/cos", "emulation", "openvino", "ort=emul", "ov=emul",
            "ort KL", "ov KL", "ort=emul decided")
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "method") else "right")
    for r in rows:
        if "kind" not in r:
            continue
        head = "top1_agreement" if r["kind"] == "classifier" else "nn_agreement"
        second = "top5_agreement" if r["kind"] == "classifier" else "mean_cosine"

        def g(col, key=head):
            v = r.get(col)
            return _fmt(v.get(key)) if isinstance(v, dict) and "error" not in v else "n/a"

        method = r["method"] + ("" if r.get("bits", "w8a8") == "w8a8" else f" {r['bits']}")
        def decided(col):
            v = r.get(col)
            d = v.get("decided") if isinstance(v, dict) else None
            return f"{_fmt(d['top1_agreement'])} of {d['count']}" if d else "n/a"

        t.add_row(r["model"], method, g("ort"), g("ort", second), g("emulation"), g("openvino"),
                  g("ort_vs_emulation"), g("openvino_vs_emulation"), g("ort", "kl"), g("openvino", "kl"),
                  decided("ort_vs_emulation"))
    return t


def examples_table(short: str, detail: dict) -> Table | None:
    ex = detail.get("examples")
    if not ex:
        return None
    t = Table(title=f"{short}: example crops, FP32 vs INT8 top-1 (ONNX Runtime kernels)")
    for c in ex[0]:
        t.add_column(c)
    for e in ex:
        t.add_row(*(str(e.get(c, "")) for c in ex[0]))
    return t


def table(rows: list[dict]) -> Table:
    t = Table(title="quantization accuracy on the held-out digits split (ONNX Runtime CPU)")
    cols = ("model", "method", "bits", "fp32_top1", "quant_top1", "drop", "agreement", "agreement_fp32_int8")
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "method", "bits") else "right")
    for r in rows:
        if "kind" in r:  # a real model's row: real_table
            continue
        t.add_row(*("-" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]))
                    for c in cols))
    return t


def _read_old(out: Path) -> dict:
    if not out.is_file():
        return {"rows": [], "photo_eval": {}}
    old = json.loads(out.read_text())
    if isinstance(old, list):  # the format before the CPU was recorded: rows only
        return {"rows": old, "photo_eval": {}}
    return old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="fixtures (default: every trained one, unless --models is given)")
    ap.add_argument("--models", default="", help=f"real pretrained models, comma-separated: {','.join(REAL)} "
                                                 "(or 'all'); fixtures then run only when named")
    ap.add_argument("--bits", nargs="+", default=["w8a8"], choices=["w8a8", "w6a6", "w4a8", "w4a4"])
    ap.add_argument("--methods", default="", help="comma-separated methods to (re)measure (default: every "
                                                  f"registered one: {','.join(METHODS)}; real models also run the "
                                                  "baselines ort* and nncf*); rows of other methods are kept")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--eval-count", type=int, default=200, help="photo crops the real models are compared on")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                    help="seed of those crops (the calibration crops are seed 0): a second seed and a larger "
                         "count show how much of a difference between methods is the crops' noise")
    ap.add_argument("--cache", default=str(ROOT / "artifacts" / "fixtures"))
    ap.add_argument("--real-cache", default=str(ROOT / "benchmarks" / ".cache"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quant_accuracy.json"))
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 150))
    models = list(REAL) if args.models == "all" else [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in REAL]
    if unknown:
        ap.error(f"--models: unknown {unknown}; accepted: {', '.join(REAL)}, all")
    cpu, source = cpu_info(), source_state()
    rows: list[dict] = []
    details: dict = {}
    chosen = tuple(m for m in args.methods.split(",") if m)
    if set(chosen) - set(METHODS) - {"nncf"}:
        ap.error(f"--methods: unknown {sorted(set(chosen) - set(METHODS) - {'nncf'})}; accepted: "
                 f"{', '.join(METHODS)}, nncf (real models)")
    run_fixtures = bool(args.names) or not models
    if run_fixtures:
        rows = run(args.names, args.bits, args.num_samples, Path(args.cache), console, chosen)
        for r in rows:
            r["cpu"] = cpu["model"]
        if not rows:
            console.print("no trained fixtures found: run scripts/train_fixtures.py first")
            if not models:
                return 1
    if models:
        real_rows, details = run_real(models, args.num_samples, args.eval_count, Path(args.real_cache), console, cpu,
                                      tuple(m for m in args.methods.split(",") if m), tuple(args.bits),
                                      args.eval_seed)
        for d in details.values():  # rows of other models kept from an earlier run keep their own
            d["source"] = source
        rows += real_rows
    out = Path(args.out)
    old = _read_old(out)
    # keep the rows this run did not redo, per (model, method, bits): a run of some methods or
    # bits keeps the others
    redone = {(r["model"], r["method"], r["bits"]) for r in rows}
    kept = [r for r in old.get("rows", []) if (r["model"], r["method"], r.get("bits")) not in redone]
    all_rows = kept + rows
    photo = {k: v for k, v in old.get("photo_eval", {}).items() if k not in details} | details
    write_json_atomic(out, {"cpu": cpu, "source": source, "rows": all_rows, "photo_eval": photo})
    if any("kind" not in r for r in all_rows):
        console.print(table(all_rows))
    if any("kind" in r for r in all_rows):
        console.print(real_table(all_rows, cpu))
        for short, d in photo.items():
            t = examples_table(short, d)
            if t is not None:
                console.print(t)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
