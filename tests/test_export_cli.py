"""`edgeforge export` and `edgeforge recipes` through the real CLI: the happy path and bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch

from edgeforge.export.graph_checks import gathers_over_initializers


@pytest.fixture(scope="module")
def l1_weights(tmp_path_factory):
    """A state dict saved from timm's own efficientformer_l1 (not from our pipeline)."""
    import timm

    torch.manual_seed(123)
    model = timm.create_model("efficientformer_l1").eval()
    # Non-default BN statistics, so that folding BN is exercised on non-trivial values.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("w") / "l1.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_export_l1_with_weights_matches_timm(l1_weights, tmp_path, run_cli):
    path, reference = l1_weights
    out = tmp_path / "art"
    code, stdout, stderr = run_cli("export", "efficientformer_l1", "--out", out, "--weights", path)
    assert code == 0, stderr
    onnx_path = out / "fp32" / "model.onnx"
    model = onnx.load(str(onnx_path))
    assert gathers_over_initializers(model) == []
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for i in range(2):
        with torch.no_grad():
            ref = reference(x[i:i + 1]).numpy()
        got = sess.run(None, {"input": x[i:i + 1].numpy()})[0]
        assert np.abs(got - ref).max() <= 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    e = manifest["steps"]["export"]
    assert e["weights"]["sha256"] and e["model"]["params"] == 12289928
    # the recorded parity is a real measurement that passed, consistent with what this test measured
    p = e["parity"]
    assert p["passed"] and p["num_inputs"] >= 1 and p["provider"] == "CPUExecutionProvider"
    assert 0 < p["max_abs_err"] <= 1e-4 and 0.99999 <= p["cosine"] <= 1 + 1e-9
    assert p["rel_err"] == pytest.approx(p["max_abs_err"] / max(p["max_abs_ref"], p["floor"]))
    assert p["rel_err"] <= p["tol"] and p["cosine"] >= p["min_cosine"]
    assert 0.1 * np.abs(ref).max() <= p["max_abs_ref"] <= 10 * np.abs(ref).max()  # the logits' own scale
    assert e["onnx"]["opset"] == 17 and len(e["onnx"]["sha256"]) == 64
    assert "torch" in e["toolchain"] and "onnxruntime" in e["toolchain"]
    assert "export efficientformer_l1" in e["command"]
    assert e["files"]["fp32/model.onnx"] == e["onnx"]["sha256"]

    # Same inputs again: skipped, nothing rewritten.
    mtime = onnx_path.stat().st_mtime_ns
    code, stdout, _ = run_cli("export", "efficientformer_l1", "--out", out, "--weights", path)
    assert code == 0 and "up to date" in stdout
    assert onnx_path.stat().st_mtime_ns == mtime


def test_failed_parity_exits_1_and_keeps_previous_model(tmp_path, run_cli):
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent("""
        family: tiny
        builder: timm:mobilenetv3_small_050
        input: {shape: [3, 64, 64]}
    """))
    out = tmp_path / "art"
    code, _, err = run_cli("export", good, "--out", out)
    assert code == 0, err
    onnx_path = out / "fp32" / "model.onnx"
    before = onnx_path.read_bytes()
    strict = tmp_path / "strict.yaml"  # a tolerance no float computation can meet
    strict.write_text(good.read_text() + "parity: {tol: 1.0e-30, floor: 1.0e-30}\n")
    code, _, err = run_cli("export", strict, "--out", out, "--seed", "1")
    assert code == 1
    assert "disagrees" in err and "was not written" in err
    assert onnx_path.read_bytes() == before
    assert not [p for p in (out / "fp32").iterdir() if p.name != "model.onnx"], "temp files left behind"


def test_dynamic_batch_export(tmp_path, run_cli):
    code, _, err = run_cli("export", "efficientformer_v2_s0", "--out", tmp_path, "--batch", "dynamic")
    assert code == 0, err
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 4):
        assert sess.run(None, {"input": np.zeros((b, 3, 224, 224), np.float32)})[0].shape == (b, 1000)


@pytest.mark.parametrize("body, expected", [
    ("family: x\nbuilder: timm:resnet18\ninput: {shape: [3, 224, 224]}\nbogus: 1\n", "bogus: unknown field"),
    ("family: x\nbuilder: timm:resnet18\ninput: {shape: [3, 224]}\n", "input: Value error, layout NCHW needs a shape of 3"),
    ("family: x\nbuilder: timm:resnet18\ninput: {shape: [3, -1, 224]}\n", "input.shape"),
    ("family: x\nbuilder: timm:not_a_model\ninput: {shape: [3, 224, 224]}\n", "timm has no model 'not_a_model'"),
    ("family: x\nbuilder: pytorch:resnet18\ninput: {shape: [3, 224, 224]}\n", "unknown builder kind"),
    ("family: x\nbuilder: timm:resnet18\ninput: {shape: [3, 224, 224]}\nexport: {opset: seventeen}\n", "export.opset"),
    ("family: x\nvariants:\n  a:\n    builder: timm:resnet18\n    input: {shape: [3, 224, 224]}\n    parity: {tol: -1}\n",
     "variants.a.parity.tol"),
    ("[1, 2]\n", "must be a mapping"),
    ("family: x\n  bad: [\n", "not valid YAML"),
])
def test_bad_recipe_exits_2_naming_file_and_field(tmp_path, run_cli, body, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    code, _, err = run_cli("export", f, "--out", tmp_path / "o")
    assert code == 2
    assert str(f) in err and expected in err, err
    assert not (tmp_path / "o" / "fp32" / "model.onnx").exists()


def test_bad_cli_input_exits_2(tmp_path, run_cli):
    code, _, err = run_cli("export", "efficientformer_l2")
    assert code == 2 and "unknown recipe 'efficientformer_l2'" in err and "efficientformer_l1" in err
    code, _, err = run_cli("export", "efficientformer_l1", "--batch", "0", "--out", tmp_path)
    assert code == 2 and "--batch" in err
    code, _, err = run_cli("export", "efficientformer_l1", "--weights", tmp_path / "nope.pth", "--out", tmp_path)
    assert code == 2 and "nope.pth" in err


def test_weights_mismatch_names_the_keys(tmp_path, run_cli):
    import timm

    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("efficientformerv2_s0").state_dict(), wrong)
    code, _, err = run_cli("export", "efficientformer_l1", "--weights", wrong, "--out", tmp_path / "o")
    assert code == 2
    assert "missing keys" in err and "unexpected keys" in err and "shape mismatches" in err
    assert ": checkpoint (" in err and "vs model (" in err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    code, _, err = run_cli("export", "efficientformer_l1", "--weights", garbage, "--out", tmp_path / "o")
    assert code == 2 and "not a readable torch state dict" in err


def test_cli_help_version_and_every_command(run_cli):
    import re

    from edgeforge import __version__
    from edgeforge.cli import cli

    code, out, _ = run_cli("--help")
    assert code == 0
    listed = set(re.findall(r"^\s{2}(\w+)\s", out, re.M))
    for cmd in ("recipes", "export", "quantize", "compile", "bench", "report", "build", "agent", "plugins", "calib"):
        assert cmd in listed, cmd
        code, sub, err = run_cli(cmd, "--help")  # each command exists and answers with its own help
        assert code == 0, err
        assert sub.startswith(f"Usage: edgeforge {cmd}") and cli.commands[cmd].help.split()[0] in sub
    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out and "edgeforge" in out


def test_recipes_show_of_a_path(run_cli, tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("family: mine\nbuilder: timm:mobilenetv3_small_050\ninput: {shape: [3, 64, 64]}\n")
    code, out, err = run_cli("recipes", "show", f, "--no-measure")
    assert code == 0, err
    assert "mine" in out and "timm:mobilenetv3_small_050" in out and "- 64" in out
    code, _, err = run_cli("recipes", "show", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in err and "no such recipe file" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: x\nbuilder: timm:resnet18\ninput: {shape: [3, 224]}\n")
    code, _, err = run_cli("recipes", "show", bad, "--no-measure")
    assert code == 2 and "bad.yaml" in err and "input" in err


def test_recipes_list_and_show(run_cli):
    code, out, _ = run_cli("recipes")
    assert code == 0 and "efficientformer_l1" in out and "12.29M" in out
    code, out, _ = run_cli("recipes", "show", "efficientformer_v2_s0")
    assert code == 0 and "timm:efficientformerv2_s0" in out and "3.60 M" in out and "0.396 G" in out
