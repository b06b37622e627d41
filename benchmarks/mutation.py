"""Mutation testing: how much of a silent error in the modules that matter most would the suite catch?

For each module below, mutmut 3 (https://github.com/boxed/mutmut) writes small changes ("mutants")
into a copy of the source (an operator flipped, a constant moved by one, an argument dropped, ...)
and runs the tests that cover that module against each mutant. A mutant is *killed* when a test
fails, *survived* when every test still passes. The score is the share killed (timeouts count as
killed: the change made the tests hang).

Each module runs in its own scratch directory (build/mutation/<module>/, with a generated
pyproject.toml) on its own test selection, so one module's run never executes another's tests,
and mutmut only runs, per mutated function, the selected tests that call that function.

    .venv/bin/python benchmarks/mutation.py                  # all modules -> benchmarks/results/mutation.json
    .venv/bin/python benchmarks/mutation.py --only qdq       # one module (merged into the JSON)
    .venv/bin/python benchmarks/mutation.py --phase before   # existing tests only, recorded as `before`
    .venv/bin/python benchmarks/mutation.py --no-run         # recount the last run (after editing EQUIVALENT)

`make mutation` runs the first (not part of `make test`: it takes a while).

Surviving mutants that cannot change what a user sees (e.g. the text of an error message only)
are listed in EQUIVALENT with a one-line reason; they are reported and left out of the score's
denominator. Every other survivor is a missing test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
OUT = ROOT / "benchmarks" / "results" / "mutation.json"
THRESHOLD_PCT = 80.0

# Directories the tests read relative to the repository root (conftest's ROOT).
DATA_DIRS = ["fixtures", "recipes", "calib", "examples"]
# Tests that take long and exercise none of these modules more sharply than faster ones do.
SLOW_QDQ = "tests/test_quant_qdq.py::test_methods_run_in_ort_and_openvino"

# module key -> (source file, test selection): the module's own test file(s), or the fastest tests
# that exercise it (the export and CLI tests are seconds each: every mutant of a function they call
# runs them). Test files named test_mutation_kills_* were written against this run's survivors;
# `--phase before` leaves them out.
MODULES: dict[str, tuple[str, list[str]]] = {
    "quantizers": ("edgeforge/quant/quantizers.py", [
        "tests/test_quant_quantizers.py", "tests/test_quant_qdq.py::test_batched_matmul_weight_gets_one_scale",
        "tests/test_mutation_kills_quantizers.py"]),
    "scheme": ("edgeforge/quant/scheme.py", [
        "tests/test_quant_quantizers.py", "tests/test_quant_qdq.py::test_batched_matmul_weight_gets_one_scale",
        "tests/test_mutation_kills_scheme.py"]),
    "qdq": ("edgeforge/quant/qdq.py", [
        "tests/test_quant_qdq.py", "--deselect", SLOW_QDQ,
        "--deselect", "tests/test_quant_qdq.py::test_keep_fp_and_analysis",
        "tests/test_mutation_kills_qdq.py"]),
    "parity": ("edgeforge/export/parity.py", [
        "tests/test_export_cli.py::test_failed_parity_exits_1_and_keeps_previous_model",
        "tests/test_mutation_kills_parity.py"]),
    "compare": ("edgeforge/report/compare.py", [
        "tests/test_report.py", "--deselect", "tests/test_report.py::test_html_renders_in_headless_chromium",
        "tests/test_mutation_kills_compare.py"]),
    "artifacts": ("edgeforge/artifacts.py", [
        "tests/test_quant_cli.py",
        "tests/test_mutation_kills_artifacts.py"]),
}

# Surviving mutants judged equivalent (no behaviour a user depends on changes), with the reason.
# Keyed by mutmut's mutant name; the diff is recorded beside it in the JSON so that a renumbering
# after a source edit is visible.
EQUIVALENT: dict[str, str] = {
    'edgeforge.quant.quantizers.x__bcast__mutmut_11':
        "numpy >= 2 reads any negative reshape size as 'infer', so -2 is -1",
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_15':
        "numpy >= 2 reads any negative reshape size as 'infer', so -2 is -1",
    'edgeforge.quant.quantizers.x__tolist__mutmut_3':
        "a 0-d ndarray's tolist() returns the same Python scalar as item()",
    'edgeforge.quant.quantizers.x_dequantize__mutmut_18':
        '(q - z) * s of 8-bit codes is exact in float64, so the final cast rounds once, as the float32 product does',
    'edgeforge.quant.quantizers.x_fit_inside__mutmut_51':
        'per-channel quantizers return early, so qp.axis is always None here',
    'edgeforge.quant.quantizers.x_fit_inside__mutmut_65':
        'the value is already an np.float32 scalar; the dtype argument changes nothing',
    'edgeforge.quant.quantizers.x_fit_inside__mutmut_67':
        'the value is already an np.float32 scalar; the dtype argument changes nothing',
    'edgeforge.quant.quantizers.x_log_params__mutmut_34':
        'the value is already an np.float32 scalar; the dtype argument changes nothing',
    'edgeforge.quant.quantizers.x_log_params__mutmut_36':
        'the value is already an np.float32 scalar; the dtype argument changes nothing',
    'edgeforge.quant.quantizers.x_log_params__mutmut_38':
        'np.asarray(0) is int64 by default (numpy >= 2, every platform)',
    'edgeforge.quant.quantizers.x_log_params__mutmut_40':
        'np.asarray(0) is int64 by default (numpy >= 2, every platform)',
    'edgeforge.quant.quantizers.x_log_fake_quant__mutmut_23':
        'log2 only sees values >= 1e-30 (np.maximum before it): there is no divide-by-zero to silence',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_102':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_104':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_41':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_43':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_56':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_59':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_71':
        'the zero-point is converted with np.asarray(zp, np.int64) on return, whatever dtype it had before',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_73':
        'lo <= 0 <= hi puts qmin - lo/scale in [qmin, qmax] (within rounding < 0.5): the clip never acts',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_74':
        'lo <= 0 <= hi puts qmin - lo/scale in [qmin, qmax] (within rounding < 0.5): the clip never acts',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_26':
        'the symmetric flag of qrange only moves qmin of signed ranges; the symmetric branch uses qmax only',
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_3':
        'a float32/int bias is promoted exactly to float64 when divided by the float64 bias scale',
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_5':
        'a float32/int bias is promoted exactly to float64 when divided by the float64 bias scale',
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_37':
        'below -2^31 the float -> int32 cast already gives INT_MIN (x86 cvttsd2si, Arm saturating fcvtzs)',
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_44':
        'below -2^31 the float -> int32 cast already gives INT_MIN (x86 cvttsd2si, Arm saturating fcvtzs)',
    'edgeforge.quant.quantizers.x_quantize_bias__mutmut_45':
        'below -2^31 the float -> int32 cast already gives INT_MIN (x86 cvttsd2si, Arm saturating fcvtzs)',
    'edgeforge.quant.quantizers.x_sqnr_db__mutmut_12':
        "ref is already float64, so ref - test is computed in float64 whatever test's dtype",
    'edgeforge.quant.quantizers.x_sqnr_db__mutmut_14':
        "ref is already float64, so ref - test is computed in float64 whatever test's dtype",
    'edgeforge.quant.quantizers.x_sqnr_db__mutmut_25':
        "float('INF') is inf: Python's float() parses it case-insensitively",
    'edgeforge.quant.scheme.x_convert_for_target__mutmut_25':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_convert_for_target__mutmut_26':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_28':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_56':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_57':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_58':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_59':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_60':
        'error-message wording only (the refusal itself and the names it gives are tested)',
    'edgeforge.quant.scheme.x_resolve__mutmut_36':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_38':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_41':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_42':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_83':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_85':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_88':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_89':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_98':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_100':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_103':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_104':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_146':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_148':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_151':
        "default of a get() on target_constraints(), which always holds the key (pydantic dumps every field's default)",
    'edgeforge.quant.scheme.x_resolve__mutmut_77':
        "signed is already False for a uint8 target (dtype == 'int8' or dtype == 'any' ...): the override is redundant",
    'edgeforge.quant.scheme.x_resolve__mutmut_78':
        "signed is already False for a uint8 target (dtype == 'int8' or dtype == 'any' ...): the override is redundant",
    'edgeforge.quant.scheme.x_target_constraints__mutmut_5':
        "QuantConstraints holds only bool/str/list[str]: pydantic's python and json dumps are equal (any mode but 'json' is python)",
    'edgeforge.quant.scheme.x_target_constraints__mutmut_6':
        "QuantConstraints holds only bool/str/list[str]: pydantic's python and json dumps are equal (any mode but 'json' is python)",
    'edgeforge.quant.scheme.x_target_constraints__mutmut_7':
        "QuantConstraints holds only bool/str/list[str]: pydantic's python and json dumps are equal (any mode but 'json' is python)",
    'edgeforge.quant.qdq.x__raise_opset__mutmut_11':
        'converting a model already at min_opset is a no-op for its graph (the converter only adds inferred value_info)',
    'edgeforge.quant.qdq.x_build_qdq__mutmut_248':
        'onnx.helper.make_node drops attributes whose value is None, so axis=None for a per-tensor weight writes no axis',
    'edgeforge.quant.qdq.x_build_qdq__mutmut_259':
        'int32 biases come only from Conv/Gemm (placement.py), which have at most 3 inputs: input[2:4] == input[2:3]',
    'edgeforge.export.parity.x_compare_outputs__mutmut_20':
        "float('INF') / float('NAN') are inf / nan: Python's float() parses them case-insensitively",
    'edgeforge.export.parity.x_compare_outputs__mutmut_27':
        "float('INF') / float('NAN') are inf / nan: Python's float() parses them case-insensitively",
    'edgeforge.export.parity.x_compare_outputs__mutmut_22':
        'this branch runs only for a non-empty (non-finite) output, so the reference is non-empty and max() needs no initial',
    'edgeforge.export.parity.x_has_custom_domain__mutmut_5':
        'load_external_data=None is falsy: onnx.load skips external data as with False',
    'edgeforge.export.parity.x_ort_cpu_session__mutmut_4':
        'error-message wording only, in a branch for an install without edgeforge.ops.native (part of the package)',
    'edgeforge.report.compare.x_compare__mutmut_87':
        "the fallback kind string is only ever compared with 'top1' (in _acc and for the label): any other string is the same",
    'edgeforge.report.compare.x_compare__mutmut_88':
        "the fallback kind string is only ever compared with 'top1' (in _acc and for the label): any other string is the same",
    'edgeforge.artifacts.x_sha256_file__mutmut_8':
        'read(None) reads the whole file in one block: the same digest (memory use only)',
    'edgeforge.artifacts.x_write_json_atomic__mutmut_8':
        'sort_keys=None and the default are both false: the same JSON text',
    'edgeforge.artifacts.x_write_json_atomic__mutmut_12':
        'sort_keys=None and the default are both false: the same JSON text',
    'edgeforge.artifacts.xǁManifestǁverify__mutmut_27':
        'error-message wording only (17 instead of 16 hex digits of the recorded digest)',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_9':
        'one side kept float32 is promoted exactly by the other (float64) side: hi - lo, max(|lo|, |hi|) and lo / scale are float64 either way',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_11':
        'one side kept float32 is promoted exactly by the other (float64) side: hi - lo, max(|lo|, |hi|) and lo / scale are float64 either way',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_19':
        'one side kept float32 is promoted exactly by the other (float64) side: hi - lo, max(|lo|, |hi|) and lo / scale are float64 either way',
    'edgeforge.quant.quantizers.x_params_from_range__mutmut_21':
        'one side kept float32 is promoted exactly by the other (float64) side: hi - lo, max(|lo|, |hi|) and lo / scale are float64 either way',
    'edgeforge.quant.quantizers.x_fit_inside__mutmut_20':
        "nan in min()/max() leaves the float64 check alone, and for float32 bounds (a Clip's min/max) a float64 product inside them rounds to a float32 inside them too; no difference in 80k random float64 bounds either",
    'edgeforge.quant.quantizers.x_fit_inside__mutmut_23':
        "nan in min()/max() leaves the float64 check alone, and for float32 bounds (a Clip's min/max) a float64 product inside them rounds to a float32 inside them too; no difference in 80k random float64 bounds either",
}

PYTEST_INI = """\
[tool.pytest.ini_options]
testpaths = ["tests"]
markers = [
  "gpu: needs an NVIDIA GPU with TensorRT (skipped elsewhere, with the reason)",
  "macos: needs macOS (CoreML predict)",
  "slow: long-running; still part of make test",
]
filterwarnings = ["ignore::DeprecationWarning", "ignore::FutureWarning"]
"""


def _toml_list(xs: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def _selection(tests: list[str], phase: str) -> list[str]:
    if phase == "after":
        return list(tests)
    return [t for t in tests if "test_mutation_kills_" not in t]


def _prepare(key: str, src: str, tests: list[str]) -> Path:
    wd = WORK / key
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    for name in ["edgeforge", "tests", *DATA_DIRS]:
        if (ROOT / name).exists():
            os.symlink(ROOT / name, wd / name)
    (wd / "pyproject.toml").write_text(
        PYTEST_INI + "\n[tool.mutmut]\n"
        f"source_paths = [\"edgeforge\"]\n"
        f"only_mutate = [{json.dumps(src)}]\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        f"pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-p\", \"no:xdist\"]\n"
        f"also_copy = {_toml_list([d for d in DATA_DIRS if (ROOT / d).exists()])}\n"
        # a mutant that loops forever is stopped after (expected test time + 15 s) x 4 x 2 of CPU
        # time (mutmut's default x 15 spends many minutes on each; the 15 s covers module fixtures,
        # whose setup mutmut leaves out of the expected time)
        "timeout_multiplier = 4.0\n"
        "timeout_constant = 15.0\n"
        "use_git_change_detection = false\n"
        "use_setproctitle = false\n")
    (wd / "selection.json").write_text(json.dumps(tests) + "\n")
    return wd


def _mutmut(wd: Path, *args: str, check: bool = True, log=None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(exe), *args], cwd=wd, env=env, check=check, text=True,
                          stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def _statuses(wd: Path, src: str) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    meta = json.loads((wd / "mutants" / (src + ".meta")).read_text())
    return {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()}


def _diffs(wd: Path, src: str, names: list[str]) -> dict[str, str]:
    """The changed lines of each mutant (as `mutmut show` prints them), read in this process."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    out = {}
    cwd = os.getcwd()
    os.chdir(wd)  # mutmut reads mutants/<src> relative to the working directory
    try:
        for name in names:
            try:
                diff = get_diff_for_mutant(name, path=src)
            except Exception as e:  # noqa: BLE001 - a diff is for reading; never fail the run on it
                diff = f"(no diff: {e})"
            lines = [ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
            out[name] = " | ".join(ln.strip() for ln in lines)
    finally:
        os.chdir(cwd)
    return out


def run_module(key: str, phase: str, rerun: bool = True) -> dict:
    src, tests = MODULES[key]
    sel = _selection(tests, phase)
    wd = WORK / key
    if rerun:
        wd = _prepare(key, src, sel)
        t0 = time.monotonic()
        with open(wd / "mutmut.log", "w") as log:
            r = _mutmut(wd, "run", "--max-children", "1", check=False, log=log)
        wall = time.monotonic() - t0
        (wd / "wall_s").write_text(f"{wall:.1f}\n")
        if r.returncode != 0 or not (wd / "mutants" / (src + ".meta")).exists():
            tail = (wd / "mutmut.log").read_text()[-3000:]
            raise SystemExit(f"mutmut failed on {key} (exit {r.returncode}); log {wd / 'mutmut.log'}:\n{tail}")
    else:  # --no-run: the results of the last run in build/mutation/<key>, with the selection it ran
        sel = json.loads((wd / "selection.json").read_text())
        wall = float((wd / "wall_s").read_text()) if (wd / "wall_s").exists() else float("nan")
    st = _statuses(wd, src)
    counts: dict[str, int] = {}
    for s in st.values():
        counts[s] = counts.get(s, 0) + 1
    survivors = sorted(k for k, s in st.items() if s in ("survived", "no tests", "suspicious", "skipped",
                                                         "not checked"))
    diffs = _diffs(wd, src, survivors)
    equivalent = [{"mutant": k, "reason": EQUIVALENT[k], "diff": diffs[k]}
                  for k in survivors if k in EQUIVALENT and phase == "after"]
    eq_names = {e["mutant"] for e in equivalent}
    live = [k for k in survivors if k not in eq_names]
    killed = counts.get("killed", 0) + counts.get("segfault", 0)
    timeout = counts.get("timeout", 0)
    total = len(st)
    denom = total - len(equivalent)
    score = 100.0 * (killed + timeout) / denom if denom else 100.0
    res = {
        "module": src,
        "tests": sel,
        "total": total,
        "killed": killed,
        "survived": counts.get("survived", 0),
        "no_tests": counts.get("no tests", 0),
        "timeout": timeout,
        "other": {k: v for k, v in counts.items() if k not in ("killed", "segfault", "survived", "no tests",
                                                                   "timeout")},
        "equivalent": len(equivalent),
        "score_pct": round(score, 1),
        "raw_score_pct": round(100.0 * (killed + timeout) / total, 1) if total else 100.0,
        "wall_s": round(wall, 1),
        "surviving_mutants": [{"mutant": k, "status": st[k], "diff": diffs[k]} for k in live],
        "equivalent_mutants": equivalent,
    }
    print(f"{key:11s} total {total:4d}  killed {killed:4d}  survived {res['survived']:3d}  "
          f"no-tests {res['no_tests']:3d}  timeout {timeout:2d}  equivalent {len(equivalent):2d}  "
          f"score {res['score_pct']:5.1f}%  ({wall:.0f} s)", flush=True)
    return res


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(MODULES), help="module(s) to run (default: all)")
    ap.add_argument("--phase", choices=("after", "before"), default="after",
                    help="before: existing tests only (test_mutation_kills_* left out), stored under `before`")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-run", action="store_true",
                    help="do not run mutmut: recount the last run's results (after editing EQUIVALENT)")
    args = ap.parse_args(argv)
    keys = args.only or list(MODULES)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    section = doc.setdefault("before" if args.phase == "before" else "modules", {})
    t0 = time.monotonic()
    for i, key in enumerate(keys):
        section[key] = run_module(key, args.phase, rerun=not args.no_run)
        stamp = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "tool": f"mutmut {metadata.version('mutmut')}", "python": platform.python_version(),
                 "cpu": _cpu_model(), "cores": os.cpu_count(), "workers": 1,
                 "modules_run": keys[:i + 1], "wall_s": round(time.monotonic() - t0, 1)}
        if args.phase == "before":
            doc["before_run"] = stamp
        elif args.no_run or set(keys) != set(MODULES):  # a recount or a partial rerun: noted, not the run's time
            doc.setdefault("reruns", {})
            for k in keys[:i + 1]:
                doc["reruns"][k] = {"date": stamp["date"], "recount_only": args.no_run,
                                    "wall_s": section[k]["wall_s"]}
        else:
            doc.update(stamp)
            doc["threshold_pct"] = THRESHOLD_PCT
            doc["score"] = ("(killed + timeout) / (total - equivalent); raw_score_pct: (killed + timeout) / total. "
                            "'no tests' (no selected test calls the function) counts as survived.")
            doc["command"] = "make mutation  (= nice -n 10 .venv/bin/python benchmarks/mutation.py)"
        # written after every module, so that an interrupted run keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if args.phase == "after":
        low = [k for k in keys if section[k]["score_pct"] < THRESHOLD_PCT]
        if low:
            print(f"below {THRESHOLD_PCT:g}%: {', '.join(low)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
