"""Accuracy on real trained weights (fixtures/, scripts/train_fixtures.py) and real held-out data."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from edgeforge.quant import quantize
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.ort_baseline import ort_quantize
from edgeforge.quant.scheme import resolve



def _top1(model_or_path, x):
    m = onnx.load(model_or_path) if isinstance(model_or_path, str) else model_or_path
    return run_outputs(m, x, ["logits"], optimize="all")["logits"].argmax(-1)


def test_int8_keeps_accuracy_and_matches_simulation(trained):
    model, fp32, calib, ev = trained
    fp32_acc = float((_top1(fp32, ev.x) == ev.labels).mean())
    assert fp32_acc >= 0.95  # the fixture is really trained
    scheme = resolve("w8a8")
    q = quantize_onnx(onnx.load(fp32), calib.x, "minmax", scheme, show_progress=False)
    pq = _top1(q.model, ev.x)
    assert float((pq == ev.labels).mean()) >= fp32_acc - 0.02
    sim = quantize(model, calib.x, "minmax")
    with torch.no_grad():
        ps = sim.model(torch.from_numpy(ev.x)).argmax(-1).numpy()
    assert float((ps == pq).mean()) >= 0.99  # torch simulation and ORT QDQ agree
    ort_model, _ = ort_quantize(fp32, calib.x, scheme)
    assert float((_top1(ort_model, ev.x) == ev.labels).mean()) >= fp32_acc - 0.03


def test_low_bits_cost_accuracy_in_order(trained):
    _, fp32, calib, ev = trained
    ref = run_outputs(onnx.load(fp32), ev.x, ["logits"], optimize="all")["logits"]
    acc, sqnr = {}, {}
    for bits in ("w8a8", "w4a4"):
        q = quantize_onnx(onnx.load(fp32), calib.x, "mse", resolve(bits, method="mse"), show_progress=False)
        out = run_outputs(q.model, ev.x, ["logits"], optimize="all")["logits"]
        acc[bits] = float((out.argmax(-1) == ev.labels).mean())
        sqnr[bits] = float(10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))
    # Measured (AMD EPYC, 200 held-out digits): top-1 w8a8 0.99, w4a4 0.96; SQNR against FP32
    # w8a8 34.0 dB, w4a4 5.2 dB. 4 bits that were silently quantized as 8 would close the 29 dB
    # gap; a broken 4-bit grid (a wrong scale, a constant output) scores near chance (0.10).
    assert acc["w8a8"] >= acc["w4a4"] >= 0.8
    assert sqnr["w8a8"] >= sqnr["w4a4"] + 15
