"""Quantizers: uniform affine (2-8 bits, symmetric/asymmetric, per-tensor/per-channel) and
logarithmic (log2, log-sqrt2) for post-softmax activations.

A `QParams` is what quant.json records for one quantizer and what QDQ export writes as the
scale/zero-point of a QuantizeLinear/DequantizeLinear pair. Bits below 8 live in 8-bit
containers with a narrower [qmin, qmax]. This module is numpy-only (torch fake-quant lives in
`edgeforge.quant.fakequant`), so the same arithmetic serves ONNX-side calibration and analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-8  # smallest scale: an all-zero channel gets this instead of 0 (Q-HyViT's eps)


@dataclass
class QParams:
    """One uniform affine quantizer: x_hat = (clamp(round(x/s) + z, qmin, qmax) - z) * s."""

    scale: np.ndarray  # () per-tensor or (C,) per-channel, float32
    zero_point: np.ndarray  # same shape as scale, int
    bits: int
    symmetric: bool
    signed: bool  # container dtype: int8 (True) or uint8 (False)
    axis: int | None = None  # channel axis for per-channel
    observer: str = "minmax"
    kind: str = "uniform"
    extra: dict = field(default_factory=dict)
    # explicit integer codes (weights only), when they are not plain rounding of w / scale: the
    # saturation-safe weights (`overflow.make_safe`) move a few codes off the nearest level
    codes: np.ndarray | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.symmetric)[1]

    @property
    def dtype(self) -> str:
        return "int8" if self.signed else "uint8"

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def float_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The representable float interval [lo, hi] (per channel if per-channel)."""
        return ((self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)

    def to_json(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "scheme": "symmetric" if self.symmetric else "asymmetric",
                "dtype": self.dtype, "granularity": "per-channel" if self.per_channel else "per-tensor",
                "axis": self.axis, "qmin": self.qmin, "qmax": self.qmax, "observer": self.observer,
                "scale": _tolist(self.scale), "zero_point": _tolist(self.zero_point), **self.extra}


def _tolist(a: np.ndarray):
    a = np.asarray(a)
    return a.item() if a.ndim == 0 else a.tolist()


def qrange(bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
    """Integer range. Signed symmetric uses the restricted range [-(2^(b-1)-1), 2^(b-1)-1]
    (TensorRT and ORT's weight convention: zero maps to 0 and +-max are representable)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if symmetric else -(2 ** (bits - 1))), hi
    return 0, 2 ** bits - 1


def params_from_range(lo, hi, bits: int, symmetric: bool, signed: bool, axis: int | None = None,
                      observer: str = "minmax") -> QParams:
    """Scale and zero-point covering [lo, hi] (arrays for per-channel). Zero is always exact."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    qmin, qmax = qrange(bits, signed, symmetric)
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        if signed:
            scale = amax / qmax
            zp = np.zeros_like(scale, dtype=np.int64)
        else:  # symmetric in a uint8 container: zero-point at the middle (exactly convertible to int8)
            half = 2 ** (bits - 1)
            scale = amax / (half - 1)
            zp = np.full(np.shape(scale), half, dtype=np.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        scale = np.maximum(scale, EPS)
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int64)
    scale = np.maximum(scale, EPS).astype(np.float32)
    return QParams(scale, np.asarray(zp, np.int64), bits, symmetric, signed, axis, observer)


def fit_inside(qp: QParams, lo: float, hi: float) -> QParams:
    """Shrink a per-tensor quantizer's scale by float32 ulps until its representable range lies
    inside [lo, hi] (a Clip it follows), so runtimes can drop the Clip; a no-op when it already does."""
    if qp.per_channel or qp.kind != "uniform":
        return qp
    s = np.float32(qp.scale)
    z = float(qp.zero_point)
    for _ in range(64):
        # in float64 and in float32 (how ORT's fusion compares them): inside both ways
        low, high = (qp.qmin - z) * float(s), (qp.qmax - z) * float(s)
        low32, high32 = np.float32(qp.qmin - z) * s, np.float32(qp.qmax - z) * s
        if min(low, low32) >= lo and max(high, high32) <= hi:
            break
        s = np.nextafter(s, np.float32(0))
    if s == np.float32(qp.scale):
        return qp
    return QParams(np.asarray(s, np.float32), qp.zero_point, qp.bits, qp.symmetric, qp.signed, qp.axis,
                   qp.observer, qp.kind, {**qp.extra, "fitted_inside_clip": [lo, hi]})


def _bcast(a: np.ndarray, x: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None or np.ndim(a) == 0:
        return a
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.reshape(a, shape)


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Integer codes (int32) of x under qp."""
    s = _bcast(qp.scale, x, qp.axis)
    z = _bcast(qp.zero_point, x, qp.axis)
    # round half to even, as ONNX QuantizeLinear does
    return np.clip(np.rint(x / s) + z, qp.qmin, qp.qmax).astype(np.int32)


def weight_codes(w: np.ndarray, qp: QParams) -> np.ndarray:
    """The integer codes a weight is stored with: explicit codes where the quantizer has them."""
    if qp.codes is not None:
        if qp.codes.shape != np.shape(w):
            raise ValueError(f"weight codes {qp.codes.shape} do not match the weight {np.shape(w)}")
        return qp.codes.astype(np.int32)
    return quantize(w, qp)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    s = _bcast(qp.scale, q, qp.axis)
    z = _bcast(qp.zero_point, q, qp.axis)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def fake_quant(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Quantize then dequantize (what a QuantizeLinear -> DequantizeLinear pair computes)."""
    if qp.kind != "uniform":
        return log_fake_quant(x, qp)
    return dequantize(quantize(x, qp), qp)


# ----------------------------------------------------------------------------- logarithmic
def quantize_bias(b: np.ndarray, input_scale: float, weight_scale, shift: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A Conv/Gemm bias as the int32 QLinearConv/QGemm expect: (integers, scale) with scale
    s_in * s_w per output channel and zero-point 0, less the bias correction `shift` (float, per
    channel) in whole steps of `bias_correction.SNAP` levels. Shared by the QDQ export and the
    torch simulation, so that both hold the same integers."""
    b = np.asarray(b, np.float64)
    bscale = (float(input_scale) * np.asarray(weight_scale, np.float64)).reshape(-1)
    if bscale.size == 1:
        bscale = np.full(b.shape, bscale[0])
    bq = np.rint(b / bscale)
    if shift is not None:
        from edgeforge.quant.bias_correction import snapped_levels

        bq = bq - snapped_levels(shift, bscale)
    bq = np.clip(bq, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    return bq, bscale.astype(np.float32)


def log_params(amax: float, bits: int, base: str = "log2", observer: str = "minmax") -> QParams:
    """Log quantizer for non-negative inputs (softmax outputs): delta = the largest value kept.

    log2: x_hat = delta * 2^-q; log-sqrt2: x_hat = delta * sqrt(2)^-q, q in [0, 2^b - 1]; values
    below the smallest level become 0. Not expressible as ONNX QuantizeLinear (see qdq export).
    """
    if base not in ("log2", "logsqrt2"):
        raise ValueError(f"log quantizer base must be log2 or logsqrt2, got {base!r}")
    delta = np.float32(max(float(amax), EPS))
    return QParams(np.asarray(delta, np.float32), np.asarray(0, np.int64), bits, True, False, None,
                   observer, kind=base)


def log_fake_quant(x: np.ndarray, qp: QParams) -> np.ndarray:
    delta = float(qp.scale)
    levels = 2 ** qp.bits - 1
    k = 2.0 if qp.kind == "logsqrt2" else 1.0
    xs = np.maximum(x, 0.0) / delta
    with np.errstate(divide="ignore"):
        q = np.round(-k * np.log2(np.maximum(xs, 1e-30)))
    q = np.maximum(q, 0.0)
    out = delta * np.power(2.0, -q / k)
    out = np.where((q > levels) | (xs <= 0), 0.0, out)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- error metrics
def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when equal)."""
    ref = np.asarray(ref, np.float64).ravel()
    noise = float(np.sum((ref - np.asarray(test, np.float64).ravel()) ** 2))
    sig = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(max(sig, 1e-30) / noise))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(test, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))
