"""`ort`: ONNX Runtime's own quantize_static on the same FP32 model and calibration samples: the
baseline a user reaches for first (`quant/ort_baseline.py` runs it)."""

from edgeforge.quant.methods import Method, register_method


@register_method
class OrtQuantizeStatic(Method):
    name = "ort"
    summary = "ONNX Runtime's quantize_static (baseline)"
    engine = "ort"
