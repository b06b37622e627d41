"""Kernel fidelity: an INT8 model's integer kernels (ONNX Runtime, OpenVINO) against the float
emulation of its QDQ graph, in `quantize` (quant.json) and `bench` (report, --max-kernel-drift).

The artifacts are made by the CLI itself: `edgeforge export` of the trained EfficientFormerV2
digits fixture, then `edgeforge quantize --method minmax`:
- "correct": the default quantization for this host's CPU (saturation-safe weights where the
  host's int8 kernels add 16-bit pairs), whose kernels follow the graph on any machine;
- "saturating": the same model quantized for 32-bit accumulation (`--int8-accumulation int32
  --overflow-fix none`, what a VNNI host produces), benched on OpenVINO with
  ONEDNN_MAX_CPU_ISA=AVX2 in a subprocess, which puts oneDNN on the AVX2 path (u8 x s8 pairs
  in saturating 16-bit lanes) on any x86 CPU. Nothing in the model is edited by hand: its
  trained weights are large enough to saturate that path. (On an AVX2-only CPU the cap changes
  nothing and the model saturates all the same.)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeforge.bench import fidelity

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "efficientformer_v2_digits"
FAST = ["--iterations", "10", "--min-time", "0", "--warmup", "1", "--block-size", "5", "--threads", "1"]

x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                         reason="ONEDNN_MAX_CPU_ISA=AVX2 (the saturating int8 path) exists on x86 only")


def _cli(*args) -> None:
    from edgeforge.cli import main

    code = main([str(a) for a in args])
    assert code == 0, args


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    if not FIXTURE.with_suffix(".pt").is_file():
        pytest.skip("fixture not trained: run scripts/train_fixtures.py")
    art = tmp_path_factory.mktemp("kf") / "exported"
    _cli("export", f"{FIXTURE}.yaml:digits", "--weights", FIXTURE.with_suffix(".pt"), "--out", art)
    return art


def _quantized(exported: Path, name: str, *extra: str) -> Path:
    art = exported.parent / name
    shutil.copytree(exported, art)
    _cli("quantize", art, "--calib", "digits", "--method", "minmax", "--num-samples", "8", "--no-analysis",
         "--no-sim", *extra)
    return art


@pytest.fixture(scope="module")
def correct(exported) -> Path:
    return _quantized(exported, "correct")


@pytest.fixture(scope="module")
def saturating(exported) -> Path:
    return _quantized(exported, "saturating", "--int8-accumulation", "int32", "--overflow-fix", "none")


def test_compare_metrics():
    a = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    same = fidelity.compare(a, a)
    assert same["sqnr_db"] == fidelity.SQNR_IDENTICAL and same["agreement"] == 1.0 and same["cosine"] == 1.0
    noisy = a + np.array([[0.0, 0.0, 0.1], [0.0, 2.5, 0.0]])  # the second sample flips its top-1
    c = fidelity.compare(noisy, a)
    assert c["agreement"] == 0.5 and c["num_samples"] == 2
    assert c["sqnr_db"] == pytest.approx(10 * np.log10(24 / (0.01 + 6.25)), abs=0.01)
    assert c["max_abs_error_rel"] == pytest.approx(2.5 / 3)
    assert fidelity.is_drift(c["sqnr_db"]) and not fidelity.is_drift(same["sqnr_db"])


def test_quantize_records_kernel_fidelity_of_both_runtimes(correct):
    q = json.loads((correct / "int8-minmax" / "quant.json").read_text())
    entries = {e["runtime"]: e for e in q["accuracy"]["kernel_fidelity"]}
    assert set(entries) == {"onnxruntime", "openvino"}
    for e in entries.values():
        assert e["num_samples"] == q["accuracy"]["eval_count"] == 500
        assert e["sqnr_db"] > fidelity.WARN_SQNR_DB and e["agreement"] >= 0.99 and e["cosine"] > 0.999, e
        assert "warning" not in e and "float emulation" in e["reference"]
    assert q["cpu"]["model"]


def test_bench_of_a_correct_int8_model(correct, run_cli):
    for target in ("cpu-ort", "cpu-openvino"):
        code, out, err = run_cli("bench", correct, "--target", target, "--precision", "int8-minmax",
                                 "--max-kernel-drift", "30", *FAST)
        assert code == 0, err
        assert "kernel fidelity" in out and "kernel drift" not in out + err
        rep = json.loads((correct / "reports" / f"{target}-int8-minmax.json").read_text())
        kf = rep["kernel_fidelity"]
        assert kf["runtime"] == ("openvino" if target == "cpu-openvino" else "onnxruntime")
        assert kf["sqnr_db"] > 30 and kf["agreement_top1"] >= 90 and not kf["drift"] and kf["passed"] is True
        assert kf["num_samples"] == 16 and "the timed input" in kf["inputs"]
        # accuracy against FP32 without --eval, on the inputs it timed
        acc = rep["accuracy"]
        assert acc["num_samples"] == 16 and acc["agreement_top1"] is not None and acc["sqnr_db"] is not None
        assert acc["reference"] == f"fp32 ({target})" and not acc["labels"]
        assert rep["cpu"]["model"] and "int8_flags" in rep["cpu"]
        assert not [w for w in rep["warnings"] if "kernel" in w]
        md = (correct / "reports" / f"{target}-int8-minmax.md").read_text()
        html = (correct / "reports" / f"{target}-int8-minmax.html").read_text()
        for page in (md, html):
            assert "kernel fidelity" in page and "kernels vs graph" in page and "int8 flags" in page
    # FP32 has no integer kernels: no fidelity, and --max-kernel-drift has nothing to check
    code, out, err = run_cli("bench", correct, "--target", "cpu-ort", "--max-kernel-drift", "30", *FAST)
    assert code == 0, err
    rep = json.loads((correct / "reports" / "cpu-ort-fp32.json").read_text())
    assert rep["kernel_fidelity"] is None and rep["accuracy"] is None and rep["cpu"]["model"]


SATURATING = "int8-minmax-int32-none"  # the step folder of a user-chosen accumulation and fix
PAIRS = "int8-minmax-int16-pairs"


def _bench_capped(art: Path, precision: str, *extra: str) -> subprocess.CompletedProcess:
    """`edgeforge bench` on OpenVINO with oneDNN capped at AVX2, in its own process (the cap
    must be set before OpenVINO loads and must not leak into the other tests)."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    return subprocess.run([sys.executable, "-m", "edgeforge.cli", "bench", str(art), "--target", "cpu-openvino",
                           "--precision", precision, *FAST, *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@x86
def test_saturating_kernels_warn_and_fail_the_drift_floor(saturating, run_cli):
    from edgeforge.targets.host import cpu_record

    proc = _bench_capped(saturating, SATURATING, "--max-kernel-drift", "30")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "kernel drift" in err and "below --max-kernel-drift 30 dB" in err
    assert "--int8-accumulation int16-pairs" in err and cpu_record()["model"] in err
    # the report is written all the same, with the drift as a warning and the check failed
    path = saturating / "reports" / f"cpu-openvino-{SATURATING}.json"
    rep = json.loads(path.read_text())
    kf = rep["kernel_fidelity"]
    assert kf["drift"] and kf["passed"] is False and kf["sqnr_db"] < 25 and kf["isa_cap"] == "AVX2"
    assert any(w.startswith("kernel drift") and "int16-pairs" in w for w in rep["warnings"])
    code, out, _ = run_cli("report", "show", path)
    assert code == 0 and "DRIFT" in out and "kernel drift" in out
    assert "kernel drift" in path.with_suffix(".html").read_text()


@x86
def test_saturation_safe_weights_follow_the_graph_on_the_capped_path(exported):
    """The warning's advice works: the same model quantized for int16-pair accumulation passes."""
    from edgeforge.runtimes.isa import _host_has_vnni

    art = _quantized(exported, "pairs", "--int8-accumulation", "int16-pairs")
    if _host_has_vnni():  # quantize checks the AVX2 kernels the model is made for
        q = json.loads((art / PAIRS / "quant.json").read_text())
        avx2 = [e for e in q["accuracy"]["kernel_fidelity"] if e.get("isa_cap") == "AVX2"]
        assert len(avx2) == 1 and avx2[0]["sqnr_db"] > 30 and "warning" not in avx2[0], avx2
    proc = _bench_capped(art, PAIRS, "--max-kernel-drift", "30")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kf = json.loads((art / "reports" / f"cpu-openvino-{PAIRS}.json").read_text())["kernel_fidelity"]
    assert kf["sqnr_db"] > 30 and not kf["drift"] and kf["isa_cap"] == "AVX2"
