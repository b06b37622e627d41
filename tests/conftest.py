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
