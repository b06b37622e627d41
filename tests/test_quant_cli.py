"""`edgeforge quantize` on a real artifact directory: files, quant.json, manifest, skip, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_quant_support import make_artifact

from edgeforge.artifacts import Manifest, sha256_file


def test_quantize_cli_writes_model_quant_json_and_manifest(run_cli, tmp_path):
    art = make_artifact(tmp_path / "art")
    code, out, err = run_cli("quantize", art, "--calib", "natural", "--method", "minmax", "--num-samples", "6")
    assert code == 0, err
    qdir = art / "int8-minmax"
    model = onnx.load(str(qdir / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    q = json.loads((qdir / "quant.json").read_text())
    assert q["calibration"]["count"] == 6 and len(q["calibration"]["hash"]) == 64
    acts = q["quantizers"]["activations"]
    assert acts and all({"scale", "zero_point", "scheme", "bits", "observer"} <= set(v) for v in acts.values())
    assert all(v["granularity"] == "per-channel" for v in q["quantizers"]["weights"].values())
    assert q["analysis"]["layers"] and q["analysis"]["sensitivity_ranking"]
    # the recorded accuracy is that of the files written, on the eval split it names
    from edgeforge.data.preprocess import Preprocess
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.pipeline import eval_split
    from test_quant_support import INPUT

    ev = eval_split("natural", Preprocess(3, 32, 32, tuple(INPUT["mean"]), tuple(INPUT["std"])))
    acc = q["accuracy"]
    assert acc["eval_hash"] == ev.hash and acc["eval_count"] == len(ev.x) == 32
    a = run_outputs(onnx.load(str(art / "fp32" / "model.onnx")), ev.x, ["logits"], optimize="all")["logits"]
    b = run_outputs(model, ev.x, ["logits"], optimize="all")["logits"]
    assert acc["agreement_fp32_int8"] == round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4)
    assert acc["output_sqnr_db"] == pytest.approx(10 * np.log10((a ** 2).sum() / ((a - b) ** 2).sum()), abs=0.01)
    assert acc["output_sqnr_db"] > 25  # measured 34.1 dB (w8a8 minmax)
    assert "not run" in q["accuracy"]["torch_sim"]  # no recipe to rebuild the torch model from
    step = Manifest(art).step("int8-minmax")
    assert step["files"]["int8-minmax/model.onnx"] == sha256_file(qdir / "model.onnx")
    assert step["calibration"]["hash"] == q["calibration"]["hash"]
    assert "most sensitive layers" in out
    # unchanged inputs: skipped; another method: its own directory
    code, out, _ = run_cli("quantize", art, "--calib", "natural", "--method", "minmax", "--num-samples", "6")
    assert code == 0 and "up to date" in out
    code, out, err = run_cli("quantize", art, "--calib", "natural", "--method", "ort", "--num-samples", "6")
    assert code == 0, err
    qo = json.loads((art / "int8-ort" / "quant.json").read_text())
    assert qo["ort_settings"]["tool"].endswith("quantize_static") and qo["quantizers"]
    assert set(Manifest(art).steps) >= {"export", "int8-minmax", "int8-ort"}


def test_quantize_cli_bad_input(run_cli, tmp_path):
    code, _, err = run_cli("quantize", tmp_path / "missing", "--calib", "natural")
    assert code == 2 and "edgeforge export" in err
    art = make_artifact(tmp_path / "art")
    code, _, err = run_cli("quantize", art, "--calib", "natural", "--target", "gpu-tensorrt",
                           "--act-scheme", "asymmetric", "--num-samples", "4")
    assert code == 2 and "symmetric" in err
    code, _, err = run_cli("quantize", art, "--calib", "natural", "--keep-fp", "nope", "--num-samples", "4")
    assert code == 2 and "nope" in err
    code, _, err = run_cli("quantize", art, "--calib", "natural", "--method", "ort", "--bits", "w4a4",
                           "--num-samples", "4")
    assert code == 2 and "8-bit only" in err


def test_quantize_cli_force_no_analysis_and_bits(run_cli, tmp_path):
    art = make_artifact(tmp_path / "art")
    args = ("quantize", art, "--calib", "natural", "--method", "minmax", "--num-samples", "4", "--no-sim")
    code, out, err = run_cli(*args, "--no-analysis")
    assert code == 0, err
    qdir = art / "int8-minmax"
    q = json.loads((qdir / "quant.json").read_text())
    assert "analysis" not in q and "most sensitive layers" not in out
    assert "analysis_outputs" not in Manifest(art).step("int8-minmax")
    # up to date, then --force runs it again and rewrites the files
    mtime = (qdir / "model.onnx").stat().st_mtime_ns
    code, out, _ = run_cli(*args, "--no-analysis")
    assert code == 0 and "up to date" in out and (qdir / "model.onnx").stat().st_mtime_ns == mtime
    code, out, err = run_cli(*args, "--no-analysis", "--force")
    assert code == 0, err
    assert "up to date" not in out and (qdir / "model.onnx").stat().st_mtime_ns != mtime
    assert Manifest(art).step("int8-minmax")["files"]["int8-minmax/model.onnx"] == sha256_file(qdir / "model.onnx")
    # --bits w6a6: 6-bit weights and activations in 8-bit containers, in their own directory
    mtime = (qdir / "model.onnx").stat().st_mtime_ns
    code, out, err = run_cli(*args, "--no-analysis", "--bits", "w6a6")
    assert code == 0, err
    w6 = art / "int8-minmax-w6a6"
    q = json.loads((w6 / "quant.json").read_text())
    assert q["bits"] == "w6a6" and Manifest(art).step("int8-minmax-w6a6")["bits"] == "w6a6"
    assert all(v["bits"] == 6 for v in q["quantizers"]["activations"].values())
    assert (qdir / "model.onnx").stat().st_mtime_ns == mtime  # the w8a8 model is left as it was
    from onnx import numpy_helper

    model = onnx.load(str(w6 / "model.onnx"))
    codes = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
             and i.dims and len(i.dims) >= 2]
    assert codes and max(int(abs(c.astype(int)).max()) for c in codes) <= 31  # 6-bit signed: [-31, 31]
    # a bits value that is not offered: exit 2, nothing written
    files = sorted(p.relative_to(art) for p in art.rglob("*"))
    manifest = (art / "manifest.json").read_bytes()
    code, _, err = run_cli(*args, "--bits", "w9a9")
    assert code == 2 and "w9a9" in err
    assert sorted(p.relative_to(art) for p in art.rglob("*")) == files and (art / "manifest.json").read_bytes() == manifest
