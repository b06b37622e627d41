"""The baseline a user reaches for first: ONNX Runtime's own `quantize_static` (QDQ format).

Run on the same FP32 ONNX and the same calibration samples as our methods, with the settings
ORT documents for x86 CPUs: QDQ, per-channel int8 weights, uint8 activations (int8 symmetric
for symmetric-only targets), MinMax calibration.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeforge.quant.calibrate import input_name
from edgeforge.quant.scheme import Scheme


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over our preprocessed samples."""

    def __init__(self, name: str, x: np.ndarray):
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


def ort_quantize(fp32_path: str | Path, x: np.ndarray, scheme: Scheme, calibrate_method: str = "minmax",
                 keep_fp: list[str] = ()) -> tuple[onnx.ModelProto, dict]:
    """Quantize with onnxruntime.quantization.quantize_static; returns (model, settings used)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeforge.errors import BadInput

    if scheme.weight_bits != 8 or scheme.act_bits != 8:
        raise BadInput("--method ort runs ONNX Runtime's quantize_static, which is 8-bit only; use --bits w8a8")
    model = onnx.load(str(fp32_path))
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    act_type = QuantType.QInt8 if scheme.act_signed else QuantType.QUInt8
    extra = {"ActivationSymmetric": bool(scheme.act_symmetric), "WeightSymmetric": True}
    nodes_to_exclude = []
    if keep_fp:
        from edgeforge.quant.placement import layer_matches

        nodes_to_exclude = [n.name for n in model.graph.node if any(layer_matches(n.name, p) for p in keep_fp)]
    # ORT's own answer for CPUs whose int8 kernels saturate 16-bit pairs: 7-bit weights
    reduce_range = scheme.overflow_fix != "none"
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "model.onnx"
        quantize_static(str(fp32_path), str(out), _Reader(input_name(model), x), quant_format=QuantFormat.QDQ,
                        reduce_range=reduce_range,
                        per_channel=scheme.weight_per_channel, activation_type=act_type,
                        weight_type=QuantType.QInt8, calibrate_method=methods[calibrate_method],
                        nodes_to_exclude=nodes_to_exclude, extra_options=extra)
        qmodel = onnx.load(str(out))
    settings = {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ",
                "per_channel": scheme.weight_per_channel, "activation_type": act_type.name,
                "weight_type": "QInt8", "calibrate_method": calibrate_method, "extra_options": extra,
                "reduce_range": reduce_range,
                "nodes_to_exclude": nodes_to_exclude}
    return qmodel, settings


def qdq_params(model: onnx.ModelProto) -> dict:
    """Every QuantizeLinear/DequantizeLinear's scale and zero-point in a QDQ model (for quant.json)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        tensor = n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            continue  # activation DQ: its Q already recorded the parameters
        s = inits.get(n.input[1])
        z = inits.get(n.input[2]) if len(n.input) > 2 else None
        if s is None:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), None)
        out[tensor] = {"kind": "uniform", "role": "activation" if n.op_type == "QuantizeLinear" else "weight",
                       "dtype": str(z.dtype) if z is not None else "uint8",
                       "granularity": "per-channel" if s.ndim else "per-tensor",
                       "axis": axis if s.ndim else None,
                       "scheme": "symmetric" if (z is None or not np.any(z != (0 if z.dtype != np.uint8 else 128))
                                                 or (z.dtype != np.uint8 and not np.any(z))) else "asymmetric",
                       "bits": 8, "observer": "ort",
                       "scale": s.tolist(), "zero_point": z.tolist() if z is not None else 0}
    return out
