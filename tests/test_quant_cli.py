"""`edgeforge quantize` on a real artifact directory: files, quant.json, manifest, skip, errors."""

from __future__ import annotations

import json

import onnx
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
    assert 0 <= q["accuracy"]["agreement_fp32_int8"] <= 1
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
