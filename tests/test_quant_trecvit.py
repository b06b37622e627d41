"""Quantizing the video backbone: TRecViT (RG-LRU over time via LinearScan, attention over space)
on its trained fixture and real held-out digit clips, in ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeforge.data.calib import CalibDef, Source, load_calib
from edgeforge.quant import quantize
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.scheme import resolve

ROOT = Path(__file__).resolve().parents[1]
EVAL = 96  # held-out clips (of 500), to keep the test short


@pytest.fixture(scope="module")
def trecvit(tmp_path_factory):
    meta_path = ROOT / "fixtures" / "trecvit_tiny.json"
    if not meta_path.is_file():
        pytest.skip("fixture not trained: run scripts/train_fixtures.py trecvit_tiny")
    meta = json.loads(meta_path.read_text())
    from edgeforge import recipes
    from edgeforge.export import export_recipe
    from edgeforge.export.pipeline import prepare_model

    recipe = recipes.load(meta["recipe"])
    weights = str(ROOT / meta["weights"])
    out = tmp_path_factory.mktemp("trecvit")
    res = export_recipe(recipe, out_dir=out, weights=weights, custom_ops="decompose",
                        check_simplify_latency=False)  # the onnxslim graph always (see test_quant_torch)
    model = prepare_model(recipe, weights, 0, 1).model
    spec = recipe.spec.input
    calib = load_calib("digits", spec, 16)
    ev = load_calib(CalibDef(name="digits-eval", source=Source(kind="digits", split="eval"), count=EVAL), spec)
    return model, res.onnx_path, calib, ev


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    name = model.graph.output[0].name
    return run_outputs(model, x, [name], optimize="all")[name]


def test_trecvit_int8_runs_in_ort_and_openvino_and_matches_the_simulation(trecvit, tmp_path):
    model, fp32_path, calib, ev = trecvit
    fp32 = onnx.load(str(fp32_path))
    assert not any(n.domain == "edgeforge" for n in fp32.graph.node)  # CPU export: standard ops only
    ref = _logits(fp32, ev.x)
    fp32_acc = float((ref.argmax(-1) == ev.labels).mean())
    assert fp32_acc >= 0.8  # the fixture is really trained
    q = quantize_onnx(fp32, calib.x, "minmax", resolve("w8a8"), show_progress=False)
    assert any(n.op_type == "QuantizeLinear" for n in q.model.graph.node)
    out = _logits(q.model, ev.x)
    assert float((out.argmax(-1) == ev.labels).mean()) >= fp32_acc - 0.03
    # the simulation (FX capture with the scan as one opaque call) predicts the QDQ model
    sim = quantize(model, calib.x, "minmax")
    with torch.no_grad():
        s = torch.cat([sim(torch.from_numpy(ev.x[i:i + 16])) for i in range(0, len(ev.x), 16)]).numpy()
    assert float((s.argmax(-1) == out.argmax(-1)).mean()) >= 0.97
    # OpenVINO compiles and runs the same QDQ model
    import openvino as ov

    onnx.save(q.model, str(tmp_path / "int8.onnx"))
    compiled = ov.Core().compile_model(str(tmp_path / "int8.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = np.concatenate([compiled(ev.x[i:i + 1])[0] for i in range(8)])
    cos = float(np.sum(ov_out * out[:8]) / (np.linalg.norm(ov_out) * np.linalg.norm(out[:8])))
    assert cos > 0.99
