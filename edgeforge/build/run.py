"""`edgeforge build`: run a build's cells in parallel with a cache, list them as CI jobs, merge
the outputs of CI jobs, and check that a rebuild gives the same bytes.

    OUT/artifacts/<recipe>/   the artifacts (export, int8-*, compiled, reports), shared by its cells
    OUT/cells/<id>.json       each cell's result (status, steps, files with sha256, report, error)
    OUT/cache/<key>.json      the same results by content address (see edgeforge.build.cell)
    OUT/summary.md            Markdown table for a pull-request comment
    OUT/report.html           every cell's report on one page, with the accuracy-vs-latency chart
    OUT/build.json            the summary as JSON (cells, exit status)
    OUT/dist/                 every artifact with its manifest and reports, summary.md, report.html,
                              index.json and SHA256SUMS (the sha256 of every file in dist/)

Each cell runs as its own process (`edgeforge build BUILD.yaml --job ID`), the command CI
runs too, so a crash or a hang is that cell's failure alone. The CI system distributes the
cells (`--list-jobs`); edgeforge runs no scheduler of its own beyond `-j N` on one machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

from edgeforge.artifacts import MANIFEST, file_lock, sha256_file, write_json_atomic, write_text_atomic
from edgeforge.build.cell import cached_result, cell_key
from edgeforge.build.spec import Build, Cell
from edgeforge.errors import BadInput

FAILING = ("failed", "over_budget")


def _cell_command(build: Build, cell: Cell, out: Path, force: bool, bench: bool, use_cache: bool) -> list[str]:
    cmd = [sys.executable, "-m", "edgeforge.cli", "build", str(build.path), "--job", cell.id, "--out", str(out),
           "--no-summary"]
    return cmd + (["--force"] if force else []) + ([] if bench else ["--no-bench"]) + \
        ([] if use_cache else ["--no-cache"])


def _run_subprocess(build: Build, cell: Cell, out: Path, key: str, force: bool, bench: bool,
                    timeout_s: float, use_cache: bool = True) -> dict:
    log = out / "logs" / f"{cell.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    res_path = out / "cells" / f"{cell.id}.json"
    res_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        try:
            proc = subprocess.run(_cell_command(build, cell, out, force, bench, use_cache), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, env={**os.environ, "EDGEFORGE_BUILD_KEY": key})
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    if res_path.is_file():
        return json.loads(res_path.read_text())
    tail = log.read_bytes()[-2000:].decode(errors="replace")
    why = f"timed out after {timeout_s:.0f} s" if rc is None else f"its process exited {rc} without a result"
    res = {"id": cell.id, "job": cell.job(), "key": key, "status": "failed", "error": f"{why}; log {log}:\n{tail}",
           "files": {}, "steps": {}, "budget_failures": [], "report": None,
           "seconds": round(time.perf_counter() - t0, 3)}
    write_json_atomic(res_path, res)
    return res


def run_build(build: Build, out: str | os.PathLike, jobs: int = 1, force: bool = False, bench: bool = True,
              use_cache: bool = True, console=None, timeout_s: float = 3600.0,
              summary: bool = True) -> list[dict]:
    """Run every cell of `build` into `out` (`jobs` at a time); see the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    todo: list[tuple[Cell, str]] = []
    for cell in build.cells:
        try:
            key = cell_key(cell, bench)
        except Exception as e:  # noqa: BLE001 - a cell whose inputs cannot be read fails alone
            results[cell.id] = _key_failure(out, cell, e)
            continue
        hit = None if (force or not use_cache) else cached_result(out, key)
        if hit is not None:
            hit = {**hit, "id": cell.id, "job": cell.job(), "cached": True}
            write_json_atomic(out / "cells" / f"{cell.id}.json", hit)
            results[cell.id] = hit
        else:
            todo.append((cell, key))
    progress = _Progress(console, len(build.cells))
    for r in results.values():
        progress.done(r)

    def work(cell: Cell, key: str) -> dict:
        progress.started(cell)
        return _run_subprocess(build, cell, out, key, force, bench, timeout_s, use_cache)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(work, cell, key) for cell, key in _interleave(todo)]
        for fut in as_completed(futures):
            res = fut.result()
            results[res["id"]] = res
            progress.done(res)
    progress.close()
    ordered = [results[c.id] for c in build.cells]
    if summary:
        write_summary(out, ordered, build.spec.name)
    return ordered


def _interleave(todo: list[tuple[Cell, str]]) -> list[tuple[Cell, str]]:
    """Round-robin over recipes, so that parallel workers start on different recipes' exports
    instead of queueing on one artifact's lock."""
    by_recipe: dict[str, list] = {}
    for item in todo:
        by_recipe.setdefault(item[0].recipe_id, []).append(item)
    queues = list(by_recipe.values())
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


class _Progress:
    """A live bar on a terminal; one line per finished cell everywhere (CI logs)."""

    def __init__(self, console, total: int):
        self.console = console
        self.total = total
        self.n = 0
        self.bar = None
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("building"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=console)
            self.task = self.bar.add_task("", total=total)
            self.bar.start()
        self.running: list[str] = []
        self.lock = threading.Lock()

    def started(self, cell: Cell) -> None:
        with self.lock:
            self.running.append(cell.id)
            self._describe()

    def _describe(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=("running: " + ", ".join(self.running[:3])
                                                    + (" ..." if len(self.running) > 3 else "")))

    def done(self, res: dict) -> None:
        with self.lock:
            self._done(res)

    def _done(self, res: dict) -> None:
        self.n += 1
        if res["id"] in self.running:
            self.running.remove(res["id"])
        if self.console is None:
            return
        colour = {"ok": "green", "failed": "red", "over_budget": "red"}.get(res["status"], "yellow")
        state = "cached" if res.get("cached") else res["status"]
        extra = f" {res['seconds']:.1f} s" if not res.get("cached") and res.get("seconds") is not None else ""
        from rich.markup import escape

        line = f"\\[{self.n}/{self.total}] {escape(res['id'])}: [{colour}]{state}[/]{extra}"
        if res["status"] in FAILING or res["status"] == "not_measured":
            why = (res.get("error") or "; ".join(res.get("budget_failures") or [])).splitlines()
            line += f" - {escape(why[0][:300])}" if why else ""
        (self.bar.console if self.bar is not None else self.console).print(line, highlight=False)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.n)
            self._describe()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _key_failure(out: Path, cell: Cell, e: Exception) -> dict:
    res = {"id": cell.id, "job": cell.job(), "key": None, "status": "failed", "failed_step": "inputs",
           "error": f"inputs: {type(e).__name__}: {e}", "files": {}, "steps": {}, "budget_failures": [],
           "report": None, "seconds": 0.0, "artifact": None}
    write_json_atomic(out / "cells" / f"{cell.id}.json", res)
    return res


def run_job(build: Build, cell_id: str, out: str | os.PathLike, force: bool = False, bench: bool = True,
            use_cache: bool = True) -> dict:
    """One cell in this process (what `--job ID` runs, in CI or as a worker of `run_build`)."""
    from edgeforge.build.cell import run_cell

    cell = build.cell(cell_id)
    out = Path(out)
    try:
        key = os.environ.get("EDGEFORGE_BUILD_KEY") or cell_key(cell, bench)
    except Exception as e:  # noqa: BLE001 - reported as this cell's failure, like any step's
        return _key_failure(out, cell, e)
    if not force and use_cache and (hit := cached_result(out, key)) is not None:
        hit = {**hit, "id": cell.id, "job": cell.job(), "cached": True}
        write_json_atomic(out / "cells" / f"{cell.id}.json", hit)
        return hit
    return run_cell(cell, out, key=key, bench=bench, force=force, argv=["edgeforge", *sys.argv[1:]])


# ------------------------------------------------------------------ CI jobs
def list_jobs(build: Build, fmt: str, out_root: str = "out") -> str:
    """The build's cells as a CI job matrix.

    github: JSON `{"include": [{id, recipe, target, precision}, ...]}` for
    `strategy.matrix: ${{ fromJSON(needs.<job>.outputs.matrix) }}`.
    gitlab: a child-pipeline YAML with one job per cell, each running `--job ID --out OUT/ID` and
    keeping that folder as its artifact (trigger it with `trigger: include: artifact:`).
    """
    jobs = [c.job() for c in build.cells]
    if fmt == "github":
        return json.dumps({"include": jobs})
    if fmt == "gitlab":
        import yaml

        image = os.environ.get("EDGEFORGE_CI_IMAGE", "python:3.12")
        setup = os.environ.get("EDGEFORGE_CI_SETUP", "pip install -e .")
        doc: dict = {"stages": ["build"], "default": {"image": image, "before_script": [setup]}}
        for j in jobs:
            doc[f"cell {j['id']}"] = {
                "stage": "build",
                "script": [f"edgeforge build {build.path} --job {j['id']} --out {out_root}/{j['id']}"],
                "artifacts": {"when": "always", "paths": [f"{out_root}/{j['id']}/"]},
                "variables": {"EDGEFORGE_RECIPE": j["recipe"], "EDGEFORGE_TARGET": j["target"],
                              "EDGEFORGE_PRECISION": j["precision"]},
            }
        return "# generated by `edgeforge build --list-jobs --format gitlab`\n" + yaml.safe_dump(doc, sort_keys=False)
    raise BadInput(f"--format {fmt!r}: accepted github, gitlab")


def merge(dirs: Sequence[str | os.PathLike], out: str | os.PathLike, title: str = "edgeforge build") -> list[dict]:
    """Join the outputs of CI jobs (each an OUT folder of `--job`) into `out` and write the summary.

    Artifact files are copied; two jobs that wrote the same file with different bytes are a
    drift, reported in the summary (the first copy is kept). Manifests are merged step by step.
    """
    out = Path(out)
    results: dict[str, dict] = {}
    conflicts: list[str] = []
    for d in map(Path, dirs):
        cells = sorted((d / "cells").glob("*.json"))
        if not cells:
            raise BadInput(f"{d}: no cells/*.json: not the output of `edgeforge build ... --job ID --out {d}`")
        arts = d / "artifacts"
        for f in sorted(arts.rglob("*")) if arts.is_dir() else []:
            if not f.is_file() or f.name.startswith(".") or f.name == MANIFEST:
                continue
            dest = out / f.relative_to(d)
            if dest.is_file() and dest.resolve() != f.resolve():
                if sha256_file(dest) != sha256_file(f):
                    rel = str(f.relative_to(d))
                    if _kind(str(f.relative_to(arts))) == "model":  # records (reports, quant.json) hold times
                        conflicts.append(f"{rel}: {d} has sha256 {sha256_file(f)[:16]}, another job "
                                         f"{sha256_file(dest)[:16]}")
                        continue
                    if f.stat().st_mtime <= dest.stat().st_mtime:
                        continue
            if dest.resolve() != f.resolve():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
        for m in sorted(arts.glob(f"*/{MANIFEST}")) if arts.is_dir() else []:
            _merge_manifest(m, out / m.relative_to(d))
        for c in cells:
            res = json.loads(c.read_text())
            if res["id"] in results and results[res["id"]].get("status") == "ok":
                continue
            results[res["id"]] = res
            write_json_atomic(out / "cells" / c.name, res)
    from edgeforge.report.io import write_index

    for reports in sorted((out / "artifacts").glob("*/reports")):
        write_index(reports)  # each job's index listed only its own reports
    ordered = [results[k] for k in sorted(results)]
    write_summary(out, ordered, title, conflicts=conflicts)
    return ordered


def _merge_manifest(src: Path, dest: Path) -> None:
    theirs = json.loads(src.read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / ".manifest.lock"):
        mine = json.loads(dest.read_text()) if dest.is_file() else {k: v for k, v in theirs.items() if k != "steps"}
        steps = mine.setdefault("steps", {})
        for name, entry in theirs.get("steps", {}).items():
            if name not in steps or str(entry.get("finished_at", "")) > str(steps[name].get("finished_at", "")):
                steps[name] = entry
        write_json_atomic(dest, mine)


# ------------------------------------------------------------------ summary, HTML, dist
def _load_reports(out: Path, results: Sequence[dict]) -> list:
    from edgeforge.errors import BadInput as _Bad
    from edgeforge.report.schema import load_report

    reports = []
    for r in results:
        if r.get("report") and (out / r["report"]).is_file():
            try:
                reports.append((r, load_report(out / r["report"])))
            except _Bad:
                continue
    return reports


def summary_markdown(out: Path, results: Sequence[dict], title: str, conflicts: Sequence[str] = ()) -> str:
    reports = dict((r["id"], rep) for r, rep in _load_reports(out, results))
    n_fail = sum(r["status"] in FAILING for r in results)
    n_nm = sum(r["status"] == "not_measured" for r in results)
    head = f"{n_fail} failing" if n_fail else "all passed" if not n_nm else "none failing"
    if n_nm:
        head += f", {n_nm} not measured"
    lines = [f"## {title}: {len(results)} cells, {head}", "",
             "| cell | status | p50 ms | noise | accuracy, vs FP32 | size MB | time s | note |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    icon = {"ok": "✅ ok", "failed": "❌ failed", "over_budget": "❌ over budget",
            "not_measured": "⚪ not measured"}
    for r in results:
        rep = reports.get(r["id"])
        p50 = noise = vs = size = "-"
        if rep is not None and rep.status == "measured":
            p50, noise = f"{rep.latency.p50:.3f}", f"±{rep.latency.noise_pct:.1f}%"
            parts = []
            if rep.baseline is not None:
                parts.append(f"{rep.baseline.speedup:.2f}x")
            if rep.accuracy is not None and rep.accuracy.agreement_top1 is not None:
                parts.append(f"agree {rep.accuracy.agreement_top1:.1f}%")
            if rep.accuracy is not None and rep.accuracy.top1 is not None:
                parts.append(f"top-1 {rep.accuracy.top1:.1f}%")
            vs = ", ".join(parts) or "-"
        if rep is not None:
            size = f"{rep.model.size_bytes / 1e6:.2f}"
        note = "; ".join(r.get("budget_failures") or []) or (r.get("error") or "").splitlines()[0][:200] \
            if r.get("error") or r.get("budget_failures") else ""
        secs = "cached" if r.get("cached") else f"{r.get('seconds', 0):.1f}"
        lines.append(f"| `{r['id']}` | {icon.get(r['status'], r['status'])} | {p50} | {noise} | {vs} | {size} | "
                     f"{secs} | {note.replace('|', '/')} |")
    if conflicts:
        lines += ["", "**Drift between jobs** (the same file with different bytes):", ""]
        lines += [f"- {c}" for c in conflicts]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, results: Sequence[dict], title: str, conflicts: Sequence[str] = ()) -> dict[str, Path]:
    """summary.md, report.html, build.json and dist/ (see the module docstring)."""
    out = Path(out)
    with file_lock(out / ".summary.lock"):  # two builds into one folder: one summary at a time
        return _write_summary(out, results, title, conflicts)


def _write_summary(out: Path, results: Sequence[dict], title: str, conflicts: Sequence[str]) -> dict[str, Path]:
    from html import escape

    from edgeforge.report.render import to_html

    md = summary_markdown(out, results, title, conflicts)
    write_text_atomic(out / "summary.md", md)
    reports = [rep for _, rep in _load_reports(out, results)]
    html = to_html(reports, f"{title}: {len(results)} cells") if reports else \
        f"<!DOCTYPE html><html><body><h1>{escape(title)}</h1><p>no reports</p></body></html>\n"
    write_text_atomic(out / "report.html", html)
    failing = [r["id"] for r in results if r["status"] in FAILING]
    status = {"title": title, "cells": [{k: r.get(k) for k in ("id", "job", "status", "key", "report", "error",
                                                               "budget_failures", "files", "cached")}
                                        for r in results],
              "failing": failing, "conflicts": list(conflicts), "exit_code": 1 if failing or conflicts else 0}
    write_json_atomic(out / "build.json", status)
    dist = write_dist(out, results, md, html)
    return {"summary": out / "summary.md", "html": out / "report.html", "json": out / "build.json", "dist": dist}


def write_dist(out: Path, results: Sequence[dict], md: str, html: str) -> Path:
    """dist/: the artifacts of the cells (models, compiled files, quant.json, manifests, reports),
    summary.md, report.html, index.json {file: {sha256, size, kind}} and SHA256SUMS."""
    dist = out / "dist"
    tmp = out / ".dist.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arts = sorted({r["artifact"] for r in results if r.get("artifact")} |
                  {str(Path(r["report"]).parents[1]) for r in results if r.get("report")})
    for a in arts:
        src = out / a
        if not src.is_dir():
            continue
        for f in sorted(src.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                dest = tmp / Path(a).name / f.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
    (tmp / "summary.md").write_text(md)
    (tmp / "report.html").write_text(html)
    index = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            rel = str(f.relative_to(tmp))
            index[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size, "kind": _kind(rel)}
    (tmp / "index.json").write_text(json.dumps({"files": index, "cells": {r["id"]: r["status"] for r in results}},
                                               indent=2, sort_keys=True) + "\n")
    (tmp / "SHA256SUMS").write_text("".join(f"{v['sha256']}  {k}\n" for k, v in index.items()))
    old = out / ".dist.old"
    shutil.rmtree(old, ignore_errors=True)
    if dist.exists():
        dist.rename(old)
    tmp.rename(dist)
    shutil.rmtree(old, ignore_errors=True)
    return dist


def _kind(rel: str) -> str:
    """model: what a build must reproduce byte for byte; record: manifests and reports (they hold
    times and measurements); summary: the build's own pages."""
    parts = rel.split("/")
    if len(parts) == 1:
        return "summary"
    if parts[-1] == MANIFEST or "reports" in parts[1:-1]:
        return "record"
    if parts[-1] == "quant.json":
        return "record"  # holds timings and this CPU's record; its model file is the reproducible part
    return "model"


def model_files(dist: Path) -> dict[str, str]:
    """{file: sha256} of the reproducible files in a dist/ (see _kind)."""
    idx = json.loads((Path(dist) / "index.json").read_text())
    return {k: v["sha256"] for k, v in idx["files"].items() if v["kind"] == "model"}


# ------------------------------------------------------------------ --check
def check(build: Build, out: str | os.PathLike, jobs: int = 1, console=None) -> tuple[list[dict], list[dict]]:
    """Rebuild every cell's artifacts from scratch (export, quantize, compile; no bench) in
    OUT/check/ and compare each file with the one the build recorded. Returns (drifts, failed):
    drifts [{file, step, recorded, rebuilt}] and the cells whose rebuild failed ({id, error});
    both empty: the build is reproducible."""
    out = Path(out)
    if not (out / "cells").is_dir():
        raise BadInput(f"{out}: no build here to check; run `edgeforge build {build.path} --out {out}` first")
    scratch = out / "check"
    shutil.rmtree(scratch, ignore_errors=True)
    rebuilt = run_build(build, scratch, jobs=jobs, force=True, bench=False, use_cache=False, console=console,
                        summary=False)
    failed = [{"id": r["id"], "error": r.get("error")} for r in rebuilt if r["status"] == "failed"]
    drifts = []
    for cell in build.cells:
        art_old, art_new = out / "artifacts" / cell.recipe_id, scratch / "artifacts" / cell.recipe_id
        if not (art_old / MANIFEST).is_file():
            continue
        old_steps = json.loads((art_old / MANIFEST).read_text()).get("steps", {})
        new_steps = json.loads((art_new / MANIFEST).read_text()).get("steps", {}) \
            if (art_new / MANIFEST).is_file() else {}
        for step, entry in old_steps.items():
            if step.startswith("bench/"):
                continue
            for rel, digest in (entry.get("files") or {}).items():
                if rel.endswith("quant.json"):
                    continue  # timings and this CPU's record; the model file is what must match
                new = (new_steps.get(step) or {}).get("files", {}).get(rel)
                if new is None:
                    continue  # a step this build's cells did not run again (e.g. an extra method)
                if new != digest:
                    d = {"file": str(Path("artifacts") / cell.recipe_id / rel), "step": step,
                         "recorded": digest, "rebuilt": new}
                    if d not in drifts:
                        drifts.append(d)
    write_json_atomic(out / "check.json", {"drifts": drifts, "failed": failed, "ok": not drifts and not failed})
    return drifts, failed


def exit_code(results: Sequence[dict]) -> int:
    return 1 if any(r["status"] in FAILING for r in results) else 0

