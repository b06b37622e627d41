"""Kernel fidelity: does a runtime's INT8 kernels compute what the QDQ graph says? Torch-free.

An INT8 QDQ ONNX model is exact math. ONNX Runtime with graph optimisation disabled runs it as
DequantizeLinear + float ops (the *float emulation*: no integer kernel anywhere), while ONNX
Runtime with full optimisation fuses it into QLinearConv/QGemm/... and OpenVINO into its own
oneDNN kernels. On x86 CPUs without VNNI those kernels add u8 x s8 byte pairs into saturating
16-bit lanes (`vpmaddubsw`), so on such a CPU a model whose neighbouring weights are large does
not compute what its graph says. Running both on the same inputs and comparing the outputs
(top-1 agreement, SQNR, cosine) catches that on any machine: `quantize` records it in quant.json
(`accuracy.kernel_fidelity`), `bench` in the report (`kernel_fidelity`), and
`bench --max-kernel-drift DB` fails (exit 1) below a SQNR floor.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

# Below this SQNR (integer kernels vs float emulation, on the same inputs) the kernels are taken
# not to compute what the QDQ graph says, and the report warns. Measured on an AMD EPYC with
# AVX-512 VNNI (no saturation), the trained EfficientFormerV2-digits fixture (`edgeforge
# quantize --method minmax`, 200 held-out digits): correct kernels give 45.7 dB (ORT, agreement
# 1.000) and 41.8 dB (OpenVINO, 0.995): a 1-LSB rounding difference at a requantization step
# (float sums vs exact int32 sums) passes through the attention and the later layers, so a
# correct deep model does not reach "exact". The same model on OpenVINO's saturating AVX2 path
# (ONEDNN_MAX_CPU_ISA=AVX2) gives 10.7 dB (agreement 0.94). 30 dB sits between the two with a
# margin of about 12 dB below the correct kernels and 20 dB above the saturating ones (18 dB on
# `bench`'s generated inputs); the small conv net of the bench tests gives identical outputs. Top-1 agreement is reported but not used: on the
# 16 inputs `bench` draws, one flipped answer is already 6 points.
WARN_SQNR_DB = 30.0
# ... but a deep, sensitive model (ImageNet MobileNetV2 on photo crops, AMD EPYC with VNNI, no
# saturation) gives only 15-21 dB for correct kernels: its 1-LSB requantization differences grow
# through 50 layers as much as the quantization error itself (the INT8 graph's own SQNR against
# FP32 there: 13-18 dB). So the floor is also set RELATIVE_DB below the graph's own quantization
# SQNR: kernels are taken to drift only when they add clearly more error than quantizing did.
# The saturating fixture above: graph 33-36 dB against FP32 (held-out digits), kernels 10.7 dB.
RELATIVE_DB = 6.0


def warn_floor(quant_sqnr_db: float | None = None, can_saturate: bool = False,
               floor_db: float = WARN_SQNR_DB) -> float:
    """The SQNR (kernels vs emulation) below which kernels drift, given the QDQ graph's own SQNR
    against FP32 on the same inputs where known. Where the kernels can saturate (a 16-bit-pair
    path and weights the static check finds overflowing: a known cause) the absolute floor holds,
    whatever the inputs (bench's generated inputs give any graph a low SQNR against FP32)."""
    if can_saturate or quant_sqnr_db is None or not math.isfinite(quant_sqnr_db):
        return floor_db
    return min(floor_db, quant_sqnr_db - RELATIVE_DB)


def can_saturate(model: Any, runtime: str, isa_cap: str | None = None) -> bool:
    """True when `runtime` here takes a 16-bit-pair int8 path (this CPU, or an AVX2 cap) and the
    QDQ model (path or ModelProto) has weights that can overflow it."""
    import onnx

    from edgeforge.quant.overflow import saturation_check

    pairs = (isa_cap or "").upper() == "AVX2" or accumulation(runtime)[0] == "int16-pairs"
    if not pairs:
        return False
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return saturation_check(m)["layers_that_can_saturate"] > 0


EMULATION = "onnxruntime float emulation of the QDQ graph (graph optimisation disabled)"
SQNR_IDENTICAL = 999.0  # what JSON holds for an infinite SQNR (identical outputs)


def compare(kernels: np.ndarray, emulation: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement (fraction), SQNR (dB) and cosine of `kernels` against `emulation`
    (both (N, ...) outputs of the same inputs), plus the largest error relative to the
    emulation's largest magnitude."""
    a = np.asarray(emulation, np.float64).reshape(len(emulation), -1)
    b = np.asarray(kernels, np.float64).reshape(len(kernels), -1)
    if a.shape != b.shape:
        raise ValueError(f"kernel fidelity: outputs of shape {b.shape} and {a.shape} cannot be compared")
    noise = float(np.sum((a - b) ** 2))
    signal = float(np.sum(a ** 2))
    if noise == 0.0:
        sqnr = SQNR_IDENTICAL
    elif signal == 0.0:
        sqnr = -SQNR_IDENTICAL
    else:
        sqnr = min(10.0 * math.log10(signal / noise), SQNR_IDENTICAL)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cos = float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    peak = float(np.abs(a).max()) if a.size else 0.0
    return {"num_samples": int(len(a)),
            "agreement": round(float(np.mean(a.argmax(1) == b.argmax(1))), 4),
            "sqnr_db": round(sqnr, 2), "cosine": round(min(cos, 1.0), 6),
            "max_abs_error_rel": round(float(np.abs(a - b).max()) / peak, 6) if peak > 0 else None}


def is_drift(sqnr_db: float | None, floor_db: float = WARN_SQNR_DB) -> bool:
    return sqnr_db is not None and sqnr_db < floor_db


def accumulation(runtime: str) -> tuple[str, str]:
    """How this host's int8 kernels accumulate for `runtime` (see edgeforge.targets.host)."""
    from edgeforge.targets.host import int8_accumulation

    return int8_accumulation(runtime if runtime in ("onnxruntime", "openvino") else "onnxruntime")


def advice(runtime: str, cpu: Mapping[str, Any] | None, local: bool = True) -> str:
    """What to do about a drift on this CPU (named from `cpu`, a `cpu_record()`)."""
    name = (cpu or {}).get("model") or "this CPU"
    flags = ", ".join((cpu or {}).get("int8_flags") or []) or "none"
    if not local:
        return ("the device's integer kernels do not compute what the QDQ graph says; if the device is an x86 CPU "
                "without VNNI, quantize with --int8-accumulation int16-pairs (saturation-safe weights)")
    how, why = accumulation(runtime)
    if how == "int16-pairs":
        return (f"{runtime} on {name} (int8 flags: {flags}) adds u8 x s8 pairs in saturating 16-bit lanes ({why}): "
                f"quantize with --int8-accumulation int16-pairs (saturation-safe weights)")
    return (f"{name} (int8 flags: {flags}) accumulates int8 products in 32 bits ({why}), so saturation is not the "
            f"cause here: check the runtime's version and which layers it runs in int8, and compare the layers "
            f"with `edgeforge quantize` analysis; quantizing with --int8-accumulation int16-pairs rules out "
            f"saturation on another CPU")


def drift_warning(runtime: str, fid: Mapping[str, Any], cpu: Mapping[str, Any] | None, local: bool = True,
                  floor_db: float = WARN_SQNR_DB, advice_text: str | None = None) -> str | None:
    """The warning for a kernel drift (None when the kernels follow the graph); `advice_text`
    replaces the advice derived from this host's CPU."""
    s = fid.get("sqnr_db")
    if not is_drift(s, floor_db):
        return None
    agree = fid.get("agreement")
    agree_txt = f", top-1 agreement {100 * agree:.1f}%" if agree is not None else ""
    return (f"kernel drift: the INT8 kernels of {runtime} do not compute what the QDQ graph says (SQNR {s:.1f} dB "
            f"against its float emulation, below {floor_db:g} dB{agree_txt}): {advice_text or advice(runtime, cpu, local)}")


# ------------------------------------------------------------------------------ running the model
def emulate(model: Any, x: np.ndarray, output: str | None = None, input_name: str | None = None) -> np.ndarray:
    """The float emulation of a QDQ model (`model`: path, bytes or ModelProto) on every sample
    of `x`, one at a time (exported models often have a fixed batch of 1)."""
    return ort_outputs(model, x, "disable", output, input_name)


def ort_outputs(model: Any, x: np.ndarray, optimize: str, output: str | None = None,
                input_name: str | None = None) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimize]
    so.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else \
        (str(model) if isinstance(model, (str, os.PathLike)) else model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    inp = input_name or sess.get_inputs()[0].name
    out = output or sess.get_outputs()[0].name
    return np.concatenate([sess.run([out], {inp: x[i:i + 1]})[0] for i in range(len(x))])


def openvino_outputs(model_path: str | os.PathLike, x: np.ndarray, output_index: int = 0,
                     threads: int = 0) -> np.ndarray:
    """OpenVINO's CPU kernels (f32 hint: INT8 only where the QDQ graph says) on every sample."""
    from edgeforge.runtimes.openvino import OpenVINORunner

    r = OpenVINORunner(model_path, threads=threads, name="kernel-fidelity")
    with r:
        inp = r.input_specs()[0].name
        out = r.output_names()[output_index]
        return np.concatenate([r.infer({inp: np.ascontiguousarray(x[i:i + 1])})[out] for i in range(len(x))])
