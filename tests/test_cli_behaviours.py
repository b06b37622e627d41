"""CLI behaviours not covered elsewhere, each with its bad-input path (exit 2, the value at fault
named, nothing written): export --opset/--batch N/--custom-ops/--force/.safetensors and re-export
after a change; quantize --norm-inputs/--bits w4a8/--target cpu-openvino; compile of an INT8
model with a stale or missing source, and CoreML conversion; bench --eval-limit/--no-baseline;
Ctrl-C (SIGINT) exits 130 leaving no report. All through the real CLI on real files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import FAST_BENCH, ROOT
from edgeforge.artifacts import Manifest, sha256_file

SIT_RECIPE = "family: mysit\nbuilder: edgeforge:sit_tiny\nbuilder_args: {num_classes: 10}\ninput: {shape: [3, 64, 64]}\n"


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ort(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ----------------------------------------------------------------------------- export
def test_export_opset_batch_safetensors_force_and_reexport(cli_art, tmp_path, run_cli):
    import torch
    from safetensors.torch import save_file

    state = torch.load(ROOT / "fixtures" / "sit_tiny.pt", map_location="cpu", weights_only=True)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    recipe = tmp_path / "mysit.yaml"
    recipe.write_text(SIT_RECIPE)
    out = tmp_path / "art"
    args = ("export", recipe, "--out", out, "--weights", st, "--opset", "18", "--batch", "2")
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    path = out / "fp32" / "model.onnx"
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    e = Manifest(out).step("export")
    assert e["onnx"]["opset"] == 18 and e["onnx"]["batch"] == 2 and e["weights"]["sha256"] == sha256_file(st)
    # the .safetensors weights are the trained ones: the same outputs as the .pt export (cli_art), per sample
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = _ort(path, x)
    ref = np.concatenate([_ort(cli_art / "fp32" / "model.onnx", x[i:i + 1]) for i in range(2)])
    assert got.shape == (2, 10) and np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())

    # unchanged inputs: skipped, not rewritten; --force: exported again
    mtime = path.stat().st_mtime_ns
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "up to date" in stdout and path.stat().st_mtime_ns == mtime
    code, stdout, err = run_cli(*args, "--force")
    assert code == 0 and "up to date" not in stdout and path.stat().st_mtime_ns != mtime, err

    # changed weights: redone, and the model computes with the new weights
    state2 = {k: v.clone().contiguous() for k, v in state.items()}
    head = [k for k in state2 if k.startswith("head") and k.endswith("bias")][0]
    state2[head] += 1.0
    st2 = tmp_path / "w2.safetensors"
    save_file(state2, str(st2))
    code, stdout, err = run_cli("export", recipe, "--out", out, "--weights", st2, "--opset", "18", "--batch", "2")
    assert code == 0 and "up to date" not in stdout, err
    assert Manifest(out).step("export")["weights"]["sha256"] == sha256_file(st2)
    np.testing.assert_allclose(_ort(path, x), got + 1.0, atol=1e-4)
    # changed recipe (same weights): redone; then unchanged again: skipped
    recipe.write_text(SIT_RECIPE + "parity: {tol: 2.0e-4}\n")
    mtime = path.stat().st_mtime_ns
    code, stdout, err = run_cli("export", recipe, "--out", out, "--weights", st2, "--opset", "18", "--batch", "2")
    assert code == 0 and "up to date" not in stdout and path.stat().st_mtime_ns != mtime, err
    assert Manifest(out).step("export")["parity"]["tol"] == 2.0e-4
    code, stdout, _ = run_cli("export", recipe, "--out", out, "--weights", st2, "--opset", "18", "--batch", "2")
    assert code == 0 and "up to date" in stdout

    # bad input on the existing artifact: exit 2 naming the value, the artifact left as it was
    before = _tree(out)
    for bad, named in ((("--opset", "99"), "--opset 99: accepted 13..23"),
                       (("--custom-ops", "bogus"), "bogus"),
                       (("--batch", "two"), "--batch")):
        code, _, err = run_cli("export", recipe, "--out", out, "--weights", st2, *bad)
        assert code == 2 and named in err, err
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    code, _, err = run_cli("export", recipe, "--out", out, "--weights", damaged)
    assert code == 2 and "damaged.safetensors" in err and "not a readable .safetensors" in err
    assert "Traceback" not in err
    assert _tree(out) == before
    # and into a new folder: nothing created
    code, _, err = run_cli("export", recipe, "--out", tmp_path / "new", "--opset", "12")
    assert code == 2 and "--opset 12" in err and not (tmp_path / "new").exists()


def test_export_custom_ops_plugin_and_decompose(tmp_path, run_cli):
    """rmt_tiny has GatedAttention: `plugin` keeps edgeforge::GatedAttention nodes, `decompose` emits standard ops."""
    domains = {}
    for mode in ("plugin", "decompose"):
        out = tmp_path / mode
        code, _, err = run_cli("export", "rmt_tiny", "--out", out, "--custom-ops", mode)
        assert code == 0, err
        model = onnx.load(str(out / "fp32" / "model.onnx"))
        domains[mode] = {(n.domain, n.op_type) for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        e = Manifest(out).step("export")
        assert e["onnx"]["custom_ops"] == mode and e["parity"]["passed"]
    assert ("edgeforge", "GatedAttention") in domains["plugin"]
    assert domains["decompose"] == set()


# ----------------------------------------------------------------------------- quantize
def _quant_args(art, *extra):
    return ("quantize", art, "--calib", "digits", "--num-samples", "8", "--no-sim", "--no-analysis", *extra)


def _ln_inputs_quantized(model: onnx.ModelProto) -> tuple[int, int]:
    """(LayerNormalization nodes, those whose input comes from a DequantizeLinear)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    return len(ln), sum(1 for n in ln if getattr(producer.get(n.input[0]), "op_type", "") == "DequantizeLinear")


def test_quantize_norm_inputs_w4a8_and_openvino_target(cli_art, cli_art_rw, run_cli):
    art = cli_art_rw
    n_ln, plain = _ln_inputs_quantized(onnx.load(str(cli_art / "int8-minmax" / "model.onnx")))
    assert n_ln > 0 and plain < n_ln  # without --norm-inputs some LayerNorm inputs stay float
    # --norm-inputs: every LayerNorm input quantized (the model in int8-minmax/ is replaced)
    code, _, err = run_cli(*_quant_args(art, "--norm-inputs"))
    assert code == 0, err
    q = json.loads((art / "int8-minmax" / "quant.json").read_text())
    assert _ln_inputs_quantized(onnx.load(str(art / "int8-minmax" / "model.onnx"))) == (n_ln, n_ln)
    assert q["placement"]["roles"].get("norm") == n_ln
    # --bits w4a8: 4-bit weight codes ([-7, 7]) in int8 containers, 8-bit activations, own folder
    code, _, err = run_cli(*_quant_args(art, "--bits", "w4a8"))
    assert code == 0, err
    w4 = art / "int8-minmax-w4a8"
    q = json.loads((w4 / "quant.json").read_text())
    assert q["bits"] == "w4a8" and q["scheme"]["weight_bits"] == 4 and q["scheme"]["act_bits"] == 8
    assert all(v["bits"] == 8 for v in q["quantizers"]["activations"].values())
    codes = [numpy_helper.to_array(i) for i in onnx.load(str(w4 / "model.onnx")).graph.initializer
             if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert codes and max(int(np.abs(c.astype(int)).max()) for c in codes) == 7
    # --target cpu-openvino: the target's constraints recorded; the model runs in OpenVINO
    code, _, err = run_cli(*_quant_args(art, "--target", "cpu-openvino"))
    assert code == 0, err
    ov_dir = art / "int8-minmax-cpu-openvino"
    q = json.loads((ov_dir / "quant.json").read_text())
    assert q["scheme"]["target"] == "cpu-openvino" and q["scheme"]["target_constraints"]["runtime"] == "openvino"
    assert Manifest(art).step("int8-minmax-cpu-openvino")["target"] == "cpu-openvino"
    pytest.importorskip("openvino")
    code, _, err = run_cli("bench", art, "--target", "cpu-openvino", "--precision", "int8-minmax-cpu-openvino",
                           "--no-baseline", *FAST_BENCH)
    assert code == 0, err
    # bad input: an unknown target / a --bits the target cannot run: exit 2, nothing written
    before = _tree(art)
    code, _, err = run_cli(*_quant_args(art, "--target", "nope-target"))
    assert code == 2 and "nope-target" in err
    code, _, err = run_cli(*_quant_args(art, "--bits", "w4a8", "--method", "ort"))
    assert code == 2 and "8-bit only" in err
    assert _tree(art) == before


# ----------------------------------------------------------------------------- compile
def test_compile_int8_stale_and_missing_source(cli_art_rw, run_cli):
    pytest.importorskip("openvino")
    art = cli_art_rw
    code, _, err = run_cli("compile", art, "--target", "cpu-openvino", "--precision", "int8-minmax")
    assert code == 0, err
    xml = art / "cpu-openvino" / "int8-minmax" / "model.xml"
    first = xml.read_bytes()
    # the source INT8 model changes (quantized again on other samples): the IR is stale
    code, _, err = run_cli(*_quant_args(art, "--num-samples", "12"))
    assert code == 0, err
    src_sha = sha256_file(art / "int8-minmax" / "model.onnx")
    assert Manifest(art).step("compile/cpu-openvino/int8-minmax")["source_sha256"] != src_sha
    # bench does not run the stale IR: it runs the current ONNX (and says which file it ran)
    code, _, err = run_cli("bench", art, "--target", "cpu-openvino", "--precision", "int8-minmax", "--no-baseline",
                           *FAST_BENCH)
    assert code == 0, err
    rep = json.loads((art / "reports" / "cpu-openvino-int8-minmax.json").read_text())
    assert rep["model"]["path"] == str(art / "int8-minmax" / "model.onnx")
    # compile again: not "up to date", the IR rebuilt from the new source
    code, out, err = run_cli("compile", art, "--target", "cpu-openvino", "--precision", "int8-minmax")
    assert code == 0 and "compiled:" in out and "up to date" not in out, err
    assert Manifest(art).step("compile/cpu-openvino/int8-minmax")["source_sha256"] == src_sha
    assert xml.read_bytes() != first
    # a missing source: exit 2 naming the file, nothing written
    before = _tree(art)
    code, _, err = run_cli("compile", art, "--target", "cpu-openvino", "--precision", "int8-nope")
    assert code == 2 and "int8-nope/model.onnx: no such model" in err
    (art / "int8-minmax" / "model.onnx").unlink()
    del before["int8-minmax/model.onnx"]
    code, _, err = run_cli("compile", art, "--target", "cpu-openvino", "--precision", "int8-minmax", "--force")
    assert code == 2 and "int8-minmax/model.onnx: no such model" in err
    assert _tree(art) == before


def test_compile_coreml_mlpackage(cli_art_rw, run_cli):
    try:
        import coremltools  # noqa: F401
    except ImportError as e:
        pytest.skip(f"coremltools is not importable: {e}")
    art = cli_art_rw
    code, out, err = run_cli("compile", art, "--target", "apple-ane", "--precision", "fp16")
    assert code == 0, err
    pkg = art / "apple-ane" / "fp16.mlpackage"
    step = Manifest(art).step("compile/apple-ane/fp16")
    assert step["format"] == "mlpackage" and step["path"] == "apple-ane/fp16.mlpackage"
    files = [p for p in pkg.rglob("*") if p.is_file()]
    assert files and all(step["files"][str(p.relative_to(art))] == sha256_file(p) for p in files)
    # converted from the weights `export` recorded: the ML program's spec has the model's input and output
    import coremltools as ct

    spec = ct.utils.load_spec(str(pkg))
    assert [i.name for i in spec.description.input] == ["input"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 64, 64]
    assert [o.name for o in spec.description.output] == [o["name"] for o in Manifest(art).step("export")["outputs"]]
    code, out, _ = run_cli("compile", art, "--target", "apple-ane", "--precision", "fp16")
    assert code == 0 and "up to date" in out
    # a precision the target does not offer: exit 2, nothing written
    before = _tree(art)
    code, _, err = run_cli("compile", art, "--target", "apple-ane", "--precision", "int4")
    assert code == 2 and "int4" in err and _tree(art) == before


# ----------------------------------------------------------------------------- bench
def test_bench_eval_limit_and_no_baseline(cli_art, cli_art_rw, run_cli):
    art, eval_npz = cli_art_rw, cli_art.parent / "eval.npz"
    code, out, err = run_cli("bench", art, "--precision", "int8-minmax", "--eval", eval_npz, "--eval-limit", "10",
                             "--no-baseline", *FAST_BENCH)
    assert code == 0, err
    rep = json.loads((art / "reports" / "cpu-ort-int8-minmax.json").read_text())
    assert rep["accuracy"]["num_samples"] == 10 and rep["accuracy"]["labels"]
    assert rep["kernel_fidelity"]["num_samples"] == 10
    assert rep["baseline"] is None and rep["latency"]["interleaved_with"] == []
    assert rep["accuracy"]["reference"] == "fp32 (onnxruntime on this host)"
    # top-1 on the first 10 samples, as this test computes it with ONNX Runtime
    with np.load(eval_npz) as z:
        x, y = z["x"][:10], z["y"][:10]
    pred = np.concatenate([_ort(art / "int8-minmax" / "model.onnx", x[i:i + 1]) for i in range(10)]).argmax(1)
    assert rep["accuracy"]["top1"] == pytest.approx(100.0 * float(np.mean(pred == y)))
    # bad input: exit 2 naming the option or file, no report written
    before = _tree(art)
    for bad, named in ((("--eval", eval_npz, "--eval-limit", "0"), "--eval-limit"),
                       (("--eval", art / "missing.npz"), "missing.npz"),
                       (("--vs", "cpu-openvino:fp99"), "fp99")):
        code, _, err = run_cli("bench", art, "--precision", "int8-minmax", *bad, *FAST_BENCH)
        assert code == 2 and named in err, err
    assert _tree(art) == before


def test_ctrl_c_exits_130_and_writes_no_report(cli_art_rw):
    """SIGINT to a real `edgeforge bench` process while it measures: exit 130, 'aborted', no report."""
    art = cli_art_rw

    def as_a_shell_starts_it():
        # A process inherits SIGINT's disposition and mask: something earlier in the same pytest
        # worker can leave SIGINT ignored (seen in the full suite: the bench then ran to its
        # iteration cap and exited 0). A user's interactive shell starts commands with SIGINT at
        # its default, so the command is started that way here.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([sys.executable, "-m", "edgeforge.cli", "bench", str(art), "--target", "cpu-ort",
                             "--min-time", "120", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_a_shell_starts_it)
    try:
        # `edgeforge.cli` imports no runtime at module level: ONNX Runtime mapped into the process means
        # the bench command is running (inside main()).
        deadline = time.monotonic() + 60
        while "onnxruntime_pybind11_state" not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # into model loading / the timed loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err[-2000:], out[-2000:])
    assert "aborted" in err and "Traceback" not in err
    assert not (art / "reports").exists() or not list((art / "reports").glob("cpu-ort-fp32.*"))
