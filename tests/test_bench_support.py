"""Small real artifacts for the runtime/bench/report tests (imported by those test modules).

`tiny_artifact` exports a tiny conv net with torch.onnx (TorchScript exporter), writes the
manifest the export pipeline writes (steps.export: inputs, outputs, model.macs, resolved
recipe input), a labelled npz eval set, and two INT8 QDQ models made with ONNX Runtime's own
quantizer (asymmetric uint8 activations: `int8-ort`; symmetric int8: `int8-ortsym`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeforge.artifacts import Manifest, sha256_file

SHAPE = [3, 16, 16]
CLASSES = 10
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, CLASSES),
    ).eval()


def tiny_macs() -> int:
    h, w = SHAPE[1:]
    return 3 * 16 * 9 * h * w + 16 * 9 * h * w + 16 * CLASSES


def build_tiny_artifact(root: Path, quantize: bool = True) -> Path:
    import torch

    model = _model()
    x = torch.randn(1, *SHAPE)
    onnx_path = root / "fp32" / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x,), str(onnx_path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    entry = {
        "recipe": "tiny_convnet",
        "resolved_recipe": {"name": "tiny_convnet", "input": {"shape": SHAPE, "layout": "NCHW", "mean": MEAN,
                                                              "std": STD, "name": "input"}},
        "inputs": [{"name": "input", "shape": [1, *SHAPE], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, CLASSES], "dtype": "float32"}],
        "model": {"params": sum(p.numel() for p in model.parameters()), "macs": tiny_macs()},
        "onnx": {"path": "fp32/model.onnx", "opset": 17, "sha256": sha256_file(onnx_path)},
    }
    Manifest(root).record("export", entry, files=[onnx_path])
    # A labelled eval set: labels are the FP32 model's own predictions on half the samples and
    # shifted on the other half, so top-1 is a known 50% and top-5 is checkable.
    rng = np.random.default_rng(0)
    xs = ((rng.random((24, *SHAPE), dtype=np.float32) - np.array(MEAN, np.float32)[:, None, None])
          / np.array(STD, np.float32)[:, None, None]).astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(xs)).argmax(1).numpy()
    y = pred.copy()
    y[12:] = (y[12:] + 1) % CLASSES
    np.savez(root / "eval.npz", x=xs, y=y)
    if quantize:
        for name, symmetric in (("int8-ort", False), ("int8-ortsym", True)):
            quantize_with_ort(onnx_path, root / name / "model.onnx", xs[:8], symmetric)
        # quant.json in the shape `edgeforge quantize` writes (the report keeps its highlights).
        import json

        (root / "int8-ort" / "quant.json").write_text(json.dumps({
            "method": "ort", "bits": "w8a8",
            "scheme": {"target": "cpu-ort", "activations": "uint8 asymmetric per-tensor",
                       "weights": "int8 symmetric per-channel", "target_constraints": {}},
            "calibration": {"name": "tiny", "count": 8, "hash": "ab" * 32, "preprocess": {}}}))
    return root


def quantize_with_ort(src: Path, dst: Path, calib: np.ndarray, symmetric: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})


# The `tiny_art` / `tiny_art_rw` fixtures live in conftest.py. These two names stay importable (as
# plain values, not fixtures) only so that modules still written `from test_bench_support import
# tiny_art` keep working and share conftest's one session-wide artifact; new code should not import them.
tiny_art = tiny_art_rw = None
