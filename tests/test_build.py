"""`edgeforge build` through the real CLI, each command in its own process: a small matrix (the
trained EfficientFormerV2-digits fixture at FP32 and INT8, a token-filter recipe from a local
YAML) with a cell over its budget and a cell whose calibration set does not exist; the cache, a
changed recipe, the CI path (list -> jobs in separate processes -> merge), and --check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeforge.artifacts import sha256_file

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["digits.cpu-ort.fp32", "digits.cpu-ort.int8"]
OVER = "token_filter_tiny.cpu-ort.fp32"
FAIL = "token_filter_tiny.cpu-ort.int8"


def _build_file(tmp: Path) -> Path:
    fam = yaml.safe_load((ROOT / "recipes" / "token_filter.yaml").read_text())
    fam["variants"] = {"tiny": fam["variants"]["tiny"]}
    (tmp / "token_filter.yaml").write_text(yaml.safe_dump(fam))
    spec = {
        "name": "test build",
        "recipes": [{"recipe": str(ROOT / "fixtures" / "efficientformer_v2_digits.yaml"),
                     "weights": str(ROOT / "fixtures" / "efficientformer_v2_digits.pt"), "name": "digits"},
                    "token_filter.yaml:tiny"],  # relative to the build file
        "targets": ["cpu-ort"],
        "precisions": ["fp32", "int8"],
        "settings": {"calib": "digits", "num_samples": 8, "eval": "digits", "eval_limit": 40,
                     "bench": {"iterations": 20, "warmup": 2, "block_size": 5}},
        "cells": [{"match": {"recipe": "token_filter_tiny", "precision": "fp32"},
                   "settings": {"budgets": {"max_latency_ms": 1e-6}}},
                  {"match": {"recipe": "token_filter_tiny", "precision": "int8"},
                   "settings": {"calib": "no-such-calibration-set"}}],
    }
    path = tmp / "BUILD.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edgeforge.cli", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    bf = _build_file(tmp)
    out = tmp / "out"
    proc = _cli("build", bf, "--out", out, "-j", "2")
    return bf, out, proc


def _cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def test_build_runs_every_cell_and_writes_summary_html_and_dist(built):
    bf, out, proc = built
    assert proc.returncode == 1, proc.stderr[-3000:]  # one cell over budget, one failed
    assert "failed or broke a budget" in proc.stderr
    cells = _cells(out)
    assert {c: cells[c]["status"] for c in cells} == {GOOD[0]: "ok", GOOD[1]: "ok", OVER: "over_budget",
                                                      FAIL: "failed"}
    assert "max_latency_ms" in cells[OVER]["budget_failures"][0]
    assert "no-such-calibration-set" in cells[FAIL]["error"]
    assert cells[GOOD[1]]["steps"]["quantize"]["step"] == "int8-minmax"
    md = (out / "summary.md").read_text()
    for c in cells:
        assert f"`{c}`" in md
    assert "over budget" in md and "failed" in md
    assert md.count("top-1 ") >= 3  # digits at FP32 and INT8, token filter: measured on the labelled digits
    html = (out / "report.html").read_text()
    assert "accuracy vs latency" in html and html.count("<section") == 3  # three cells have reports
    idx = json.loads((out / "dist" / "index.json").read_text())
    for rel, entry in idx["files"].items():
        assert sha256_file(out / "dist" / rel) == entry["sha256"], rel
    assert idx["files"]["digits/fp32/model.onnx"]["kind"] == "model"
    assert "digits/int8-minmax/model.onnx" in idx["files"] and "digits/manifest.json" in idx["files"]
    assert "digits/reports/cpu-ort-int8-minmax.json" in idx["files"]
    sums = (out / "dist" / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(idx["files"])
    build_json = json.loads((out / "build.json").read_text())
    assert build_json["exit_code"] == 1 and sorted(build_json["failing"]) == sorted([OVER, FAIL])


def test_second_build_is_served_from_the_cache(built):
    bf, out, _ = built
    before = _cells(out)
    proc = _cli("build", bf, "--out", out, "-j", "2")
    assert proc.returncode == 1
    after = _cells(out)
    for c in (*GOOD, OVER):
        assert after[c].get("cached") is True, c
        assert after[c]["files"] == before[c]["files"]
    assert after[FAIL]["status"] == "failed"  # failures are never cached
    assert proc.stdout.count("cached") >= 3


def test_changing_one_recipe_rebuilds_only_its_cells(built, tmp_path):
    bf, out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(bf.parent, copy, symlinks=True)
    fam = yaml.safe_load((copy / "token_filter.yaml").read_text())
    fam["variants"]["tiny"]["builder_args"]["keep_ratio"] = 0.75
    (copy / "token_filter.yaml").write_text(yaml.safe_dump(fam))
    proc = _cli("build", copy / "BUILD.yaml", "--out", copy / "out", "-j", "2")
    assert proc.returncode == 1, proc.stderr[-2000:]
    cells = _cells(copy / "out")
    assert all(cells[c].get("cached") for c in GOOD)
    assert not cells[OVER].get("cached") and cells[OVER]["status"] == "over_budget"
    assert cells[OVER]["key"] != _cells(out)[OVER]["key"]


def _workflow_commands() -> tuple[str, str, str]:
    """The list, cell and merge commands of examples/ci/github-actions.yml, as CI runs them."""
    wf = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    runs = {name: [s["run"] for s in job["steps"] if "run" in s and "edgeforge build" in s["run"]]
            for name, job in wf["jobs"].items()}
    return runs["list"][0], runs["cell"][0], runs["merge"][0]


def test_ci_example_list_jobs_in_separate_processes_merge_equals_one_process_build(built, tmp_path):
    """The GitHub Actions example's own commands (list -> one process per cell, two at a time ->
    merge) on this build file: the merged dist/ has the same files, the same model bytes and the
    same cell results as the one-process build."""
    from edgeforge.build.run import model_files

    bf, out, _ = built
    list_cmd, cell_cmd, merge_cmd = _workflow_commands()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BUILD_FILE": str(bf), "GITHUB_OUTPUT": str(tmp_path / "gh_out"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-ec", list_cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    matrix = (tmp_path / "gh_out").read_text().strip().removeprefix("matrix=")
    jobs = json.loads(matrix)["include"]
    assert sorted(j["id"] for j in jobs) == sorted([*GOOD, OVER, FAIL])
    gitlab = yaml.safe_load(_cli("build", bf, "--list-jobs", "--format", "gitlab").stdout)
    assert sorted(k for k in gitlab if k.startswith("cell ")) == sorted(f"cell {j['id']}" for j in jobs)
    assert f"--job {GOOD[1]}" in gitlab[f"cell {GOOD[1]}"]["script"][0]
    codes = {}
    for pair in (jobs[:2], jobs[2:]):  # two runners at a time
        procs = {j["id"]: subprocess.Popen(["bash", "-ec", cell_cmd.replace("${{ matrix.id }}", j["id"])],
                                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True) for j in pair}
        codes.update({k: (p.communicate(timeout=600), p.returncode)[1] for k, p in procs.items()})
    assert codes == {GOOD[0]: 0, GOOD[1]: 0, OVER: 1, FAIL: 1}
    merge = merge_cmd.replace("${{ github.sha }}", "test")
    proc = subprocess.run(["bash", "-ec", merge], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # the same cells fail as in the one-process build
    merged = tmp_path / "merged"
    assert model_files(merged / "dist") == model_files(out / "dist")
    one = json.loads((out / "dist" / "index.json").read_text())
    two = json.loads((merged / "dist" / "index.json").read_text())
    assert one["cells"] == two["cells"]
    assert sorted(one["files"]) == sorted(two["files"])  # the same files (reports and manifests too)
    steps = json.loads((merged / "artifacts" / "digits" / "manifest.json").read_text())["steps"]
    assert {"export", "int8-minmax", "bench/cpu-ort/fp32", "bench/cpu-ort/int8-minmax"} <= set(steps)
    assert "edgeforge build test" in (merged / "summary.md").read_text()
    # two jobs that wrote different bytes for one model file: merge names it and fails
    victim = tmp_path / "out" / GOOD[1] / "artifacts" / "digits" / "fp32" / "model.onnx"
    victim.write_bytes(victim.read_bytes() + b"\0")
    proc = _cli("build", "merge", *sorted((tmp_path / "out").iterdir()), "--out", tmp_path / "merged2")
    conflicts = json.loads((tmp_path / "merged2" / "build.json").read_text())["conflicts"]
    assert proc.returncode == 1 and len(conflicts) == 1 and "artifacts/digits/fp32/model.onnx" in conflicts[0]
    assert "Drift between jobs" in (tmp_path / "merged2" / "summary.md").read_text()


def test_check_rebuilds_and_names_the_file_and_step_that_drifted(built, tmp_path):
    bf, out, _ = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # Pretend the build had recorded other bytes for the INT8 model: the rebuild must flag exactly it.
    mpath = copy / "artifacts" / "digits" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["steps"]["int8-minmax"]["files"]["int8-minmax/model.onnx"] = "0" * 64
    mpath.write_text(json.dumps(m))
    proc = _cli("build", bf, "--out", copy, "--check", "-j", "2")
    assert proc.returncode == 1, proc.stderr[-2000:]
    check = json.loads((copy / "check.json").read_text())
    assert [f["id"] for f in check["failed"]] == [FAIL]  # the cell with no calibration set cannot rebuild
    assert f"rebuild failed {FAIL}" in proc.stderr.replace("\n", " ")
    drifts = check["drifts"]
    assert drifts == [{"file": "artifacts/digits/int8-minmax/model.onnx", "step": "int8-minmax",
                       "recorded": "0" * 64, "rebuilt": sha256_file(out / "artifacts/digits/int8-minmax/model.onnx")}]
    assert "artifacts/digits/int8-minmax/model.onnx (step int8-minmax)" in proc.stderr.replace("\n", " ")


def test_bad_build_files_name_the_field(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("recipes: [fmvit_tiny]\ntargets: [cpu-ort]\nprecisions: [int4]\n")
    proc = _cli("build", bad, "--list-jobs")
    assert proc.returncode == 2 and "precisions.0" in proc.stderr
    bad.write_text("recipes: [fmvit_tiny]\ntargets: [no-such-target]\n")
    proc = _cli("build", bad, "--list-jobs")
    assert proc.returncode == 2 and "no-such-target" in proc.stderr
    bad.write_text("recipes: [fmvit_tiny]\ntargets: [cpu-ort]\nexclude: [{recipe: fmvit_tiny}]\n")
    proc = _cli("build", bad, "--list-jobs")
    assert proc.returncode == 2 and "no cell" in proc.stderr


def test_target_without_its_toolchain_is_not_measured_and_not_cached(built, tmp_path):
    """gpu-tensorrt on a machine without TensorRT: the cell says "not measured" with the reason (no
    number invented, no failure), and runs again next time (the toolchain may be there then)."""
    bf, out, _ = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    gpu = tmp_path / "gpu.yaml"
    spec = yaml.safe_load(bf.read_text())
    spec.update(recipes=spec["recipes"][:1], targets=["gpu-tensorrt"], precisions=["fp32"], cells=[])
    gpu.write_text(yaml.safe_dump(spec))
    for _ in range(2):
        proc = _cli("build", gpu, "--out", copy)
        cell = _cells(copy)["digits.gpu-tensorrt.fp32"]
        if "tensorrt" in json.loads((copy / "build.json").read_text())["cells"][0]["id"] and \
                cell["status"] == "ok":  # pragma: no cover - a machine with TensorRT and a GPU
            pytest.skip("TensorRT runs here")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert cell["status"] == "not_measured" and cell["error"] and not cell.get("cached")
        assert "not measured" in (copy / "summary.md").read_text()


def test_example_build_file_and_pipelines_are_consistent():
    """examples/ci: BUILD.yaml is 3 recipes x 2 targets x 2 precisions; the GitLab pipeline lists the
    jobs as a child pipeline and merges them with the same commands as the GitHub workflow."""
    proc = _cli("build", ROOT / "examples" / "ci" / "BUILD.yaml", "--list-jobs")
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["include"]
    assert len(jobs) == 12 and {j["target"] for j in jobs} == {"cpu-ort", "cpu-openvino"}
    assert len({j["recipe"] for j in jobs}) == 3 and {j["precision"] for j in jobs} == {"fp32", "int8"}
    gl = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())
    assert "--list-jobs --format gitlab" in " ".join(gl["list-jobs"]["script"])
    assert gl["cells"]["trigger"]["include"][0] == {"artifact": "cells.yml", "job": "list-jobs"}
    assert any(line.startswith("edgeforge build merge out/*") for line in gl["merge"]["script"])
