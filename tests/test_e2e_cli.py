"""End to end through the real CLI, on artifacts the CLI itself wrote (no hand-written manifest or
quant.json): `export` -> `quantize` (the session's `cli_art`) -> `compile --target cpu-openvino` ->
`bench --eval` -> `report compare`, with the report's figures checked against what this test
measures itself, and `report compare` failing on a real regression (a W4A4 model of the same net)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CLI_EVAL, FAST_BENCH
from edgeforge.artifacts import Manifest, sha256_file
from edgeforge.report.schema import load_report


def _ov_logits(model_path, x: np.ndarray) -> np.ndarray:
    """The model's outputs in OpenVINO, one sample at a time, as cpu-openvino runs it (f32 inference precision)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": 1})
    req = compiled.create_infer_request()
    return np.concatenate([req.infer({0: x[i:i + 1]})[compiled.output(0)].copy() for i in range(len(x))])


def _edit(src, dst, fn):
    data = json.loads(src.read_text())
    fn(data)
    dst.write_text(json.dumps(data))
    return dst


def test_export_quantize_compile_bench_compare(cli_art, cli_art_rw, run_cli, tmp_path):
    pytest.importorskip("openvino")
    art, eval_npz = cli_art_rw, cli_art.parent / "eval.npz"
    # what export and quantize recorded (the session fixture ran them through the CLI)
    m = Manifest(art)
    q = json.loads((art / "int8-minmax" / "quant.json").read_text())
    assert m.step("export")["recipe"] == "sit_tiny" and m.step("export")["weights"]["sha256"]
    assert m.step("int8-minmax")["files"]["int8-minmax/model.onnx"] == sha256_file(art / "int8-minmax" / "model.onnx")
    assert q["calibration"]["count"] == 16 and q["calibration"]["name"] == "digits"

    code, out, err = run_cli("compile", art, "--target", "cpu-openvino", "--precision", "int8-minmax")
    assert code == 0, err
    xml = art / "cpu-openvino" / "int8-minmax" / "model.xml"
    step = Manifest(art).step("compile/cpu-openvino/int8-minmax")
    assert step["files"]["cpu-openvino/int8-minmax/model.xml"] == sha256_file(xml)
    assert step["source_sha256"] == sha256_file(art / "int8-minmax" / "model.onnx")

    code, out, err = run_cli("bench", art, "--target", "cpu-openvino", "--precision", "int8-minmax",
                             "--eval", eval_npz, *FAST_BENCH)
    assert code == 0, err
    path = art / "reports" / "cpu-openvino-int8-minmax.json"
    r = load_report(path)
    assert r.status == "measured" and r.model.path == str(xml) and r.model.recipe == "sit_tiny"
    # the quantization the report states is the one `quantize` wrote
    assert r.model.quant["calibration"]["hash"] == q["calibration"]["hash"][:16]
    assert r.model.quant["method"] == "minmax" and r.model.quant["bits"] == "w8a8"

    # top-1 and agreement: what this test computes itself by running the compiled IR (and the FP32
    # ONNX, the baseline, in the same runtime) on the eval set
    with np.load(eval_npz) as z:
        x, y = z["x"], z["y"]
    int8 = _ov_logits(xml, x)
    fp32 = _ov_logits(art / "fp32" / "model.onnx", x)
    a = r.accuracy
    assert a.labels and a.num_samples == CLI_EVAL == len(y)
    assert a.top1 == pytest.approx(100.0 * float(np.mean(int8.argmax(1) == y)), abs=1e-9)
    assert a.top1 > 80  # a trained net (measured 95%), so the identity above is not 10% == 10%
    assert a.agreement_top1 == pytest.approx(100.0 * float(np.mean(int8.argmax(1) == fp32.argmax(1))), abs=1e-9)
    assert a.reference == "fp32 (cpu-openvino)"
    # speedup is the ratio of the p50s measured in alternating blocks, and p50 is the samples' median
    assert r.baseline.precision == "fp32" and r.latency.interleaved_with == ["cpu-openvino/fp32"]
    assert r.baseline.speedup == pytest.approx(r.baseline.p50 / r.latency.p50, rel=1e-9)
    # (the report keeps samples to 4 decimals, p50 from the unrounded times)
    assert r.latency.p50 == pytest.approx(float(np.median(r.latency.samples_ms)), abs=1e-4)

    # report compare: identical reports pass every budget
    code, out, err = run_cli("report", "compare", path, path, "--max-latency-regression", "0",
                             "--max-accuracy-drop", "0")
    assert code == 0, err
    assert "within budget" in out
    # a copy with worse top-1 / slower p50: exit 1 naming the metric
    worse = _edit(path, tmp_path / "worse.json", lambda d: d["accuracy"].update(top1=d["accuracy"]["top1"] - 3))
    code, out, err = run_cli("report", "compare", path, worse, "--max-accuracy-drop", "1")
    assert code == 1 and "top-1 (%) dropped 3.00 pts" in err

    def slower(d):
        for k in ("p50", "p90", "p95", "p99", "mean", "min", "max"):
            d["latency"][k] *= 2

    slow = _edit(path, tmp_path / "slow.json", slower)
    code, out, err = run_cli("report", "compare", path, slow, "--max-latency-regression", "20")
    assert code == 1 and "latency p50 regressed +100.0%" in err

    # a real regression, not an edited number: the same net quantized to 4 bits, benched the same way
    code, out, err = run_cli("quantize", art, "--calib", "digits", "--num-samples", "16", "--no-sim",
                             "--no-analysis", "--bits", "w4a4")
    assert code == 0, err
    code, out, err = run_cli("bench", art, "--target", "cpu-openvino", "--precision", "int8-minmax-w4a4",
                             "--eval", eval_npz, "--no-baseline", *FAST_BENCH)
    assert code == 0, err
    w4 = art / "reports" / "cpu-openvino-int8-minmax-w4a4.json"
    r4 = load_report(w4)
    assert r4.accuracy.top1 == pytest.approx(100.0 * float(np.mean(
        _ov_logits(art / "int8-minmax-w4a4" / "model.onnx", x).argmax(1) == y)), abs=1e-9)
    assert r4.accuracy.top1 < a.top1 - 5  # measured 95% -> 46%
    code, out, err = run_cli("report", "compare", path, w4, "--max-accuracy-drop", "1")
    assert code == 1 and "top-1 (%) dropped" in err and f"{a.top1:.2f} -> {r4.accuracy.top1:.2f}" in err


def test_bench_refuses_a_damaged_int8_model(cli_art_rw, run_cli):
    """An INT8 model edited after `quantize` (its sha256 no longer the manifest's): exit 2 naming it, no report."""
    import onnx
    from onnx import numpy_helper

    art = cli_art_rw
    path = art / "int8-minmax" / "model.onnx"
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(path))
    code, out, err = run_cli("bench", art, "--precision", "int8-minmax", *FAST_BENCH)
    assert code == 2 and "int8-minmax/model.onnx" in err
    assert not (art / "reports").exists()
