"""Check a QDQ (INT8) ONNX model against a target's quantization constraints.

An asymmetric scheme on a symmetric-only target (TensorRT) must be converted by the quantizer or
refused; it is never run with silently changed numerics. This reads the QuantizeLinear /
DequantizeLinear nodes: zero-points (symmetric?), their dtype (int8/uint8 activations), and the
scale sizes (per-channel or per-tensor), for weights (DequantizeLinear of an initializer) and
activations.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class QdqSummary:
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    weights: int = 0
    weights_per_channel: int = 0
    activations: int = 0
    activations_per_channel: int = 0
    activation_dtypes: list[str] = field(default_factory=list)
    asymmetric_tensors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["asymmetric_tensors"] = len(self.asymmetric_tensors)
        return d


def summarize_qdq(model_path: str | os.PathLike) -> QdqSummary:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    s = QdqSummary()
    dtypes = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            s.quantize_nodes += 1
        else:
            s.dequantize_nodes += 1
        scale = value(node.input[1])
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        per_channel = scale is not None and scale.size > 1
        is_weight = node.op_type == "DequantizeLinear" and value(node.input[0]) is not None
        # Symmetric means zero-point 0 in int8, or its exact uint8 twin, zero-point 128.
        if zp is not None:
            centre = 0 if zp.dtype.kind == "i" else 2 ** (8 * zp.dtype.itemsize - 1)
            if np.any(zp.astype(np.int64) != centre):
                s.asymmetric_tensors.append(node.input[0])
        else:
            s.asymmetric_tensors.append(node.input[0])  # no zero-point input: uint8 with zero-point 0
        if is_weight:
            s.weights += 1
            s.weights_per_channel += int(per_channel)
        elif node.op_type == "QuantizeLinear":
            s.activations += 1
            s.activations_per_channel += int(per_channel)
            # No zero-point input means uint8 (the ONNX default).
            dtypes.add(zp.dtype.name if zp is not None else "uint8")
    s.activation_dtypes = sorted(dtypes)
    return s


def violations(summary: QdqSummary, constraints) -> list[str]:
    """What in the model the target cannot run as quantized (empty when it can)."""
    out = []
    if summary.quantize_nodes + summary.dequantize_nodes == 0:
        out.append("the model has no QuantizeLinear/DequantizeLinear nodes: it is not an INT8 QDQ model")
        return out
    if constraints.symmetric_only and summary.asymmetric_tensors:
        shown = ", ".join(summary.asymmetric_tensors[:3])
        out.append(f"{len(summary.asymmetric_tensors)} tensors have nonzero zero-points (asymmetric; e.g. {shown}) "
                   f"but the target is symmetric-only: quantize with --target for it")
    if constraints.activation_dtype != "any":
        bad = [d for d in summary.activation_dtypes if d != constraints.activation_dtype]
        if bad:
            out.append(f"activations are {bad} but the target takes {constraints.activation_dtype} activations")
    if constraints.activation_granularity == "per_tensor" and summary.activations_per_channel:
        out.append(f"{summary.activations_per_channel} activation quantizers are per-channel; the target takes "
                   f"per-tensor activations")
    if not constraints.per_channel_weights and summary.weights_per_channel:
        out.append(f"{summary.weights_per_channel} weights are per-channel; the target takes per-tensor weights")
    return out
