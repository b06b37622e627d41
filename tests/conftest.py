"""Shared fixtures. Tests use real components: real recipes, real ONNX Runtime sessions, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two test workers share two cores: keep each runtime and torch to one thread so they do not
# oversubscribe the machine (results do not depend on thread counts).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def run_cli(capsys):
    """Run the real `edgeforge` CLI in-process; returns (exit code, stdout, stderr)."""
    from edgeforge.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


ROOT = Path(__file__).resolve().parents[1]
TRAINED_FIXTURE = "efficientformer_v2_digits"
TRAINED_EVAL = 200  # of the 500 held-out digits, to keep the tests short


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The trained EfficientFormerV2-digits fixture: (torch model, FP32 ONNX path, 32 calibration
    digits, 200 held-out labelled digits). A discriminating model: accuracy tests run on it."""
    import json

    import torch

    from edgeforge import recipes
    from edgeforge.data.calib import CalibDef, Source, load_calib
    from edgeforge.export.pipeline import prepare_model

    meta_path = ROOT / "fixtures" / f"{TRAINED_FIXTURE}.json"
    if not meta_path.is_file():
        pytest.skip("fixture not trained: run scripts/train_fixtures.py")
    meta = json.loads(meta_path.read_text())
    recipe = recipes.load(str(ROOT / meta["recipe"]))
    prepared = prepare_model(recipe, str(ROOT / meta["weights"]), 0, 1)
    model = prepared.model
    path = tmp_path_factory.mktemp("trained") / "fp32.onnx"
    x = next(iter(prepared.inputs.values()))
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"])
    spec = recipe.spec.input
    calib = load_calib("digits", spec, 32)
    ev = load_calib(CalibDef(name="digits-eval", source=Source(kind="digits", split="eval"), count=TRAINED_EVAL),
                    spec)
    return model, str(path), calib, ev


# ----------------------------------------------------------------------------- shared helpers
class OnnxTools:
    """Export a torch model to an in-memory ONNX model and run it in ONNX Runtime (CPU)."""

    @staticmethod
    def export(model, inputs, mode: str = "decompose", input_names=None, output_names=None,
               dynamic_batch: bool = False):
        """`torch.onnx.export` (TorchScript exporter, opset 17) under edgeforge's custom-op `mode`."""
        import io

        import onnx
        import torch

        from edgeforge import ops

        inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
        if dynamic_batch and input_names is None:
            input_names = [f"x{i}" for i in range(len(inputs))]
        f = io.BytesIO()
        with torch.no_grad(), ops.export_mode(mode):
            torch.onnx.export(model, inputs, f, dynamo=False, opset_version=17, input_names=input_names,
                              output_names=output_names,
                              dynamic_axes={n: {0: "batch"} for n in input_names} if dynamic_batch else None,
                              custom_opsets=ops.CUSTOM_OPSETS if mode == "plugin" else None)
        return onnx.load_from_string(f.getvalue())

    @staticmethod
    def session(proto):
        import onnxruntime as ort

        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    @classmethod
    def run(cls, proto, inputs) -> list:
        """Outputs for `inputs` (torch tensors or arrays) fed in the graph's input order."""
        import numpy as np

        sess = cls.session(proto)
        return sess.run(None, {i.name: (t.numpy() if hasattr(t, "numpy") else np.asarray(t))
                               for i, t in zip(sess.get_inputs(), inputs)})

    @staticmethod
    def assert_close(got, ref, tol: float = 1e-4, floor: float = 1.0) -> None:
        """Parity relative to the reference's scale, with an absolute floor (as `export` judges it)."""
        import numpy as np

        got, ref = np.asarray(got), np.asarray(ref.detach() if hasattr(ref, "detach") else ref)
        assert got.shape == ref.shape, (got.shape, ref.shape)
        err = float(np.abs(got - ref).max())
        assert err <= tol * max(floor, float(np.abs(ref).max())), f"max abs err {err:.3g}"


@pytest.fixture(scope="session")
def onnx_tools():
    """`OnnxTools`: export a torch model in memory, run it in ONNX Runtime, compare with a reference."""
    return OnnxTools


@pytest.fixture(scope="session")
def skip_unless_impl():
    """`skip_unless_impl(name)`: skip the test when custom-op implementation `name` is not present here."""
    from edgeforge.ops import implementations as impls

    def skip(name: str) -> None:
        why = impls.unavailable(name)
        if why:
            pytest.skip(f"{name}: {why}")

    return skip


@pytest.fixture(scope="session")
def rel_err():
    """`rel_err(got, ref)`: max abs error over the reference's max abs value (floor 1)."""
    import numpy as np

    def rel(got, ref) -> float:
        return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))

    return rel


@pytest.fixture(scope="session")
def tiny_art(tmp_path_factory) -> Path:
    """A tiny real artifact (tests/test_bench_support.py), read-only, shared by the session; copy it
    (`tiny_art_rw`) before writing into it."""
    from test_bench_support import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny_art"))


@pytest.fixture
def tiny_art_rw(tiny_art, tmp_path) -> Path:
    """A private, writable copy of the tiny artifact."""
    import shutil

    dst = tmp_path / "art"
    shutil.copytree(tiny_art, dst)
    return dst


def _centred_cosine(a, b) -> float:
    import numpy as np

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a, b = a - a.mean(0), b - b.mean(0)
    n = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum() / n) if n > 0 else 0.0


@pytest.fixture(scope="session")
def centred_cosine():
    """`centred_cosine(a, b)`: cosine of two batches of outputs after subtracting each one's mean over
    the batch. A constant predictor (the same output for every input) scores 0, where the plain
    cosine of the tiny test models' logits against a constant is 0.98-0.99."""
    return _centred_cosine


# ----------------------------------------------------------------------------- artifacts made by the CLI
CLI_FIXTURE = "sit_tiny"  # the smallest trained fixture (fixtures/sit_tiny.pt): its CLI chain takes ~10 s
CLI_EVAL = 100  # held-out digits in the --eval set of the CLI artifact
FAST_BENCH = ("--iterations", "20", "--min-time", "0", "--warmup", "2", "--block-size", "5", "--threads", "1")


def cli_call(*args) -> tuple[int, str, str]:
    """Run the real `edgeforge` CLI in-process outside a test function (no capsys): (code, stdout, stderr)."""
    import contextlib
    import io

    from edgeforge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def cli_art(tmp_path_factory) -> Path:
    """An artifact made by the CLI itself, read-only, shared by the session (copy it with `cli_art_rw`):
    `edgeforge export sit_tiny --weights fixtures/sit_tiny.pt`, then `edgeforge quantize --calib digits`
    (minmax w8a8, 16 samples) -> fp32/ and int8-minmax/ with the manifest and quant.json those commands
    write; beside it `eval.npz`: 100 held-out digits (x preprocessed for the recipe's input, y labels)."""
    import numpy as np

    from edgeforge import recipes
    from edgeforge.data.calib import CalibDef, Source, load_calib

    weights = ROOT / "fixtures" / f"{CLI_FIXTURE}.pt"
    if not weights.is_file():
        pytest.skip("fixture not trained: run scripts/train_fixtures.py")
    art = tmp_path_factory.mktemp("cli_art") / CLI_FIXTURE
    code, out, err = cli_call("export", CLI_FIXTURE, "--weights", weights, "--out", art)
    assert code == 0, out + err
    code, out, err = cli_call("quantize", art, "--calib", "digits", "--num-samples", "16", "--no-sim", "--no-analysis")
    assert code == 0, out + err
    ev = load_calib(CalibDef(name="digits-eval", source=Source(kind="digits", split="eval"), count=CLI_EVAL),
                    recipes.load(CLI_FIXTURE).spec.input)
    np.savez(art.parent / "eval.npz", x=ev.x, y=ev.labels)
    return art


@pytest.fixture
def cli_art_rw(cli_art, tmp_path) -> Path:
    """A private, writable copy of the CLI-made artifact (its eval set stays at `cli_art.parent / 'eval.npz'`)."""
    import shutil

    dst = tmp_path / CLI_FIXTURE
    shutil.copytree(cli_art, dst)
    return dst
