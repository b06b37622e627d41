"""Post-training quantization: quantizers, observers, placement, QDQ export, error analysis.

Entry points:
- `quantize_artifact(ARTIFACT, calib=..., method=...)`: the `edgeforge quantize` step (FP32 ONNX
  of an exported artifact -> ARTIFACT/int8-<method>/model.onnx + quant.json).
- `quantize_onnx(model, x, method, scheme)`: the same on an in-memory ONNX model.
- `quantize(model, calib, ...)`: any torch.nn.Module -> a fake-quantized torch simulation
  (torch.fx capture, BN folded, quantizers on Conv/Linear/matmul inputs and weights).
"""

from __future__ import annotations


def __getattr__(name: str):
    # lazy: importing edgeforge.quant must not pull in torch/onnxruntime until used
    if name == "quantize_artifact":
        from edgeforge.quant.pipeline import quantize_artifact

        return quantize_artifact
    if name == "quantize_onnx":
        from edgeforge.quant.engine import quantize_onnx

        return quantize_onnx
    if name == "quantize":
        from edgeforge.quant.torch_sim import quantize

        return quantize
    raise AttributeError(name)
