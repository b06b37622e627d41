"""Observers: watch a tensor over the calibration set and choose its quantization range.

- `minmax`: the observed min and max.
- `percentile`: the p-th and (100-p)-th percentiles (p = 99.99 by default) of a histogram.
- `mse` (OMSE): the clipping range minimising expected quantization MSE (clipping error of the
  tails + rounding noise step^2/12 inside), searched over shrink factors of the min/max range.
- `entropy` (KL): TensorRT's threshold search minimising KL(P || Q) between the |x| histogram
  and its quantized version.
Activation observers stream: they keep a histogram whose range (a power of two) doubles as
batches need it, so calibration memory does not grow with the number of samples and the result
does not depend on batch order or on float noise between runtimes. Weight ranges are computed on the
whole weight tensor (`weight_range`), per output channel.
"""

from __future__ import annotations

import numpy as np

from edgeforge.quant.quantizers import QParams, params_from_range, qrange

METHODS = ("minmax", "percentile", "mse", "entropy")
NBINS = 4096  # a power-of-two range wastes up to half of them on an unused end


def observer_for(method: str, producer_op: str | None) -> str:
    """The observer of one activation, given the op that produces it.

    - Softmax outputs always take their observed min/max: they are bounded in [0, 1], so clipping
      them buys little resolution and costs the rare large attention weights that matter most (KL
      calibration clipped them to 16-40% of their range on FMViT).
    - Clip (ReLU6) outputs pile a point mass at the bound, which the histogram searches (KL for
      entropy, the clip-vs-rounding MSE trade-off for mse) weigh as cheap to clip though the
      saturated values carry the signal: both take the percentile range there, which keeps the
      bound (ImageNet MobileNetV2, top-1 agreement with FP32 on 200 photo crops, ORT kernels:
      entropy 0.34 -> 0.91, mse 0.805 -> 0.845; plain min/max on them cost 3-10 points).
    The ONNX engine and the torch simulation both use this."""
    if producer_op == "Softmax":
        return "minmax"
    if producer_op == "Clip" and method in ("entropy", "mse"):
        return "percentile"
    return method


class Observer:
    """Streaming per-tensor observer: running min/max plus a growable histogram."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99, nbins: int = NBINS):
        if method not in METHODS:
            raise ValueError(f"unknown observer {method!r}; accepted: {', '.join(METHODS)}")
        self.method = method
        self.percentile = percentile
        self.nbins = nbins
        self.min = np.inf
        self.max = -np.inf
        self.hist: np.ndarray | None = None
        self.lo = 0.0
        self.hi = 0.0
        self.count = 0

    @property
    def needs_hist(self) -> bool:
        return self.method != "minmax"

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        if x.size == 0:
            return
        finite = x[np.isfinite(x)] if not np.isfinite(x).all() else x
        mn, mx = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        self.count += x.size
        if not self.needs_hist:
            return
        if self.hist is None:
            a = _pow2_at_least(max(abs(mn), abs(mx)))
            self.lo, self.hi = (-a if mn < 0 else 0.0), a
            self.hist = np.zeros(self.nbins, np.float64)
        while mn < self.lo or mx > self.hi:
            self._grow(negative=mn < self.lo)
        h, _ = np.histogram(finite, bins=self.nbins, range=(self.lo, self.hi))
        self.hist += h

    def _grow(self, negative: bool) -> None:
        """Double the bin width: [0, a] -> [-a, a] (negative values arrived) or [0, 2a], and
        [-a, a] -> [-2a, 2a]. Ranges are powers of two, so every pair of old bins is exactly one
        new bin: the histogram equals the one built in a single pass over the final range, in
        any batch order, and tiny numeric differences between two runtimes computing the same
        tensor (torch vs ONNX Runtime) move no bin edge, so both choose the same range."""
        n = self.nbins
        pairs = self.hist.reshape(n // 2, 2).sum(axis=1)
        new = np.zeros(n, np.float64)
        if self.lo == 0.0 and negative:
            new[n // 2:] = pairs
            self.lo = -self.hi
        elif self.lo == 0.0:
            new[:n // 2] = pairs
            self.hi *= 2.0
        else:
            new[n // 4:3 * n // 4] = pairs
            self.lo, self.hi = self.lo * 2.0, self.hi * 2.0
        self.hist = new

    # ------------------------------------------------------------------ range selection
    def range(self, bits: int = 8, symmetric: bool = False, signed: bool = False) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        if self.method == "minmax":
            return self.min, self.max
        if self.method == "percentile":
            return self._percentile_range()
        if self.method == "mse":
            return self._mse_range(bits, symmetric, signed)
        return self._entropy_range(bits, symmetric)

    def params(self, bits: int, symmetric: bool, signed: bool) -> QParams:
        lo, hi = self.range(bits, symmetric, signed)
        return params_from_range(lo, hi, bits, symmetric, signed, None, self.method)

    def _centers(self) -> np.ndarray:
        w = (self.hi - self.lo) / self.nbins
        return self.lo + (np.arange(self.nbins) + 0.5) * w

    def _percentile_range(self) -> tuple[float, float]:
        cdf = np.cumsum(self.hist) / max(self.hist.sum(), 1)
        edges = np.linspace(self.lo, self.hi, self.nbins + 1)
        q_hi = self.percentile / 100.0
        q_lo = 1.0 - q_hi
        i_hi = min(int(np.searchsorted(cdf, q_hi)), self.nbins - 1)
        i_lo = min(int(np.searchsorted(cdf, q_lo)), self.nbins - 1)
        lo = edges[i_lo] if self.min < 0 else self.min
        return float(max(lo, self.min)), float(min(edges[i_hi + 1], self.max))

    def _mse_range(self, bits: int, symmetric: bool, signed: bool) -> tuple[float, float]:
        c = self._centers()
        h = self.hist
        best, best_err = (self.min, self.max), np.inf
        qmin, qmax = qrange(bits, signed, symmetric)
        for a in np.linspace(0.2, 1.0, 81):
            lo, hi = min(self.min, 0.0) * a, max(self.max, 0.0) * a
            if symmetric:
                m = max(-lo, hi)
                lo, hi = (-m if self.min < 0 else 0.0), m
            step = max((hi - lo) / (qmax - qmin), 1e-12)
            clipped = np.clip(c, lo, hi)
            err = float(np.sum(h * (c - clipped) ** 2) + np.sum(h[(c >= lo) & (c <= hi)]) * step * step / 12)
            if err < best_err:
                best, best_err = (lo, hi), err
        return float(best[0]), float(best[1])

    def _entropy_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        # Histogram of |x|, folded exactly: a signed range is [-a, a] (power-of-two ranges, see
        # _grow), so bin j of the upper half and its mirror in the lower half cover the same |x|.
        # (Re-binning bin centres into as many |x| bins left every other bin empty: a comb that
        # skews the KL search.)
        amax = max(abs(self.lo), abs(self.hi))
        if self.lo < 0:
            half = self.nbins // 2
            ah = self.hist[half:] + self.hist[:half][::-1]
        else:
            ah = self.hist
        levels = 2 ** (bits - 1) if (symmetric or self.min < 0) else 2 ** bits
        t = kl_threshold(ah, amax, levels)
        return float(max(self.min, -t)), float(min(self.max, t))


def _pow2_at_least(v: float) -> float:
    """The smallest power of two >= v (histogram ranges are powers of two; see Observer._grow)."""
    return float(2.0 ** np.ceil(np.log2(max(v, 2.0 ** -40))))


def kl_threshold(hist: np.ndarray, amax: float, levels: int = 128) -> float:
    """TensorRT-style KL calibration: the |x| threshold whose `levels`-level quantization of the
    histogram loses the least information (min KL(P || Q))."""
    nb = len(hist)
    total = hist.sum()
    if total == 0 or amax <= 0:
        return float(amax)
    best_i, best_kl = nb, np.inf
    start = max(levels, 16)
    for i in range(start, nb + 1, max(1, (nb - start) // 128)):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        # merge the i bins into `levels` groups, then expand back over the non-empty bins
        groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
        gsum = np.bincount(groups, weights=hist[:i], minlength=levels)
        gcnt = np.bincount(groups, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, gsum[groups] / np.maximum(gcnt[groups], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p / ps, q / qs
        # smooth: a bin P has and Q lost (clipped mass) gets a small probability instead of 0
        qn = np.where(nz & (qn == 0), 1e-4 / max(i, 1), qn)
        kl = float(np.sum(pn[nz] * np.log(pn[nz] / qn[nz])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i / nb * amax)


# ----------------------------------------------------------------------------- weights
def weight_params(w: np.ndarray, bits: int, method: str = "minmax", axis: int | None = 0,
                  symmetric: bool = True, signed: bool = True) -> QParams:
    """Per-channel (axis) or per-tensor (axis=None) weight quantizer.

    `minmax` uses the channel's absolute max; `mse` searches each channel's clipping ratio
    (vectorised over channels) minimising the actual rounding + clipping L2 error.
    """
    w = np.asarray(w, np.float32)
    if axis is None:
        flat = w.reshape(1, -1)
    else:
        flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if method == "mse":
        qmin, qmax = qrange(bits, signed, symmetric)
        best_err = np.full(len(flat), np.inf)
        best_lo, best_hi = lo.copy(), hi.copy()
        for a in np.linspace(0.3, 1.0, 36):
            qp = params_from_range(lo * a, hi * a, bits, symmetric, signed, 0)
            s = qp.scale[:, None].astype(np.float32)
            z = qp.zero_point[:, None]
            deq = (np.clip(np.rint(flat / s) + z, qmin, qmax) - z) * s
            err = ((deq - flat) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_lo = np.where(better, lo * a, best_lo)
            best_hi = np.where(better, hi * a, best_hi)
        lo, hi = best_lo, best_hi
    if axis is None:
        lo, hi = lo[0], hi[0]
    return params_from_range(lo, hi, bits, symmetric, signed, axis, "mse" if method == "mse" else "minmax")
