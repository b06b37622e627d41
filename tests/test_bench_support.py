"""Small real artifacts for the runtime/bench/report tests (imported by those test modules).

`build_tiny_artifact` exports a tiny conv net with torch.onnx (TorchScript exporter), writes the
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


# Ten classes of flat colour (plus pixel noise): the tiny net's head is fitted to tell them apart,
# so its output depends on its input. With a random head it predicted one class for every eval
# sample (a constant output scored SQNR 31 dB and the known 50% top-1); now a constant output
# scores 5.0 dB and at most 12.5% top-1 on the eval labels (measured).
PALETTE = np.random.default_rng(42).random((CLASSES, 3), dtype=np.float32)


def colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n normalised samples (n, *SHAPE) of the ten colours in turn with noise, and their classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    pix = np.clip(PALETTE[y][:, :, None, None] + 0.08 * rng.standard_normal((n, *SHAPE)).astype(np.float32), 0, 1)
    mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]
    return ((pix - mean) / std).astype(np.float32), y


def _model():
    """The tiny conv net: random conv layers, a linear head fitted (least squares) to the colours."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, CLASSES),
    ).eval()
    xs, y = colour_images(200, seed=1)
    with torch.no_grad():
        f = model[:-1](torch.from_numpy(xs)).numpy().astype(np.float64)
    # ridge regression on centred features to +-1 targets: the small ridge keeps the weights moderate
    # (|w| <= 50), so INT8 stays close to FP32 (plain least squares gave weights that cancel: 1 dB)
    mu, t = f.mean(0), np.eye(CLASSES)[y] * 2 - 1
    w = np.linalg.solve((f - mu).T @ (f - mu) + 1e-5 * len(f) * np.eye(f.shape[1]), (f - mu).T @ (t - t.mean(0)))
    with torch.no_grad():
        model[-1].weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        model[-1].bias.copy_(torch.from_numpy((t.mean(0) - mu @ w).astype(np.float32)))
    return model


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
    # A labelled eval set of the ten colours: labels are the FP32 model's own predictions on half
    # the samples and shifted on the other half, so top-1 is a known 50% and top-5 is checkable.
    xs, _ = colour_images(24, seed=0)
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
