"""Error-compensating weight rounding for linear layers (OBQ / GPTQ, arXiv 2210.17323).

Rounding each weight to its nearest level minimises the weight error, not the layer's output
error. With H = E[x x^T] the Gram matrix of the layer's calibration inputs, the output error of
one row is (w - q) H (w - q)^T; GPTQ rounds the input columns one at a time and spreads each
column's rounding error over the columns not yet rounded, through the Cholesky factor of H^-1,
so the later columns absorb it. Scales stay as given (per output channel): only the integer codes
change, and they are written as explicit codes (QParams.codes), which the QDQ export and the
torch simulation both store as they are.
"""

from __future__ import annotations

import numpy as np

from edgeforge.quant.quantizers import QParams

DAMP = 0.01  # fraction of the mean diagonal added to H (keeps the Cholesky factor stable)
BLOCK = 128  # columns updated lazily per block (same result, fewer passes over the matrix)


def gram(inputs: list[np.ndarray]) -> np.ndarray:
    """E[x x^T] over every row (token, sample) of `inputs` (arrays (..., K))."""
    k = inputs[0].shape[-1]
    h = np.zeros((k, k))
    n = 0
    for x in inputs:
        r = x.reshape(-1, k).astype(np.float64)
        h += r.T @ r
        n += len(r)
    return h / max(n, 1)


def gptq_rows(w_rows: np.ndarray, scale: np.ndarray, qmin: int, qmax: int, h: np.ndarray) -> np.ndarray:
    """Integer codes (C_out, K) for weight rows `w_rows` (C_out, K) with per-row `scale`, symmetric
    (zero-point 0), minimising sum_rows (w - s q) H (w - s q)^T column by column."""
    w = np.asarray(w_rows, np.float64).copy()
    s = np.asarray(scale, np.float64).reshape(-1, 1) * np.ones((len(w), 1))
    h = np.asarray(h, np.float64).copy()
    k = h.shape[0]
    dead = np.diag(h) <= 0  # inputs that are always zero: nothing to compensate through them
    h[dead, dead] = 1.0  # (their weights still round to the nearest level)
    h += DAMP * float(np.mean(np.diag(h))) * np.eye(k)
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor U with H^-1 = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.rint(w / s), qmin, qmax).astype(np.int32)
    q = np.zeros_like(w)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        wb = w[:, b0:b1].copy()
        errb = np.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[:, i]
            qc = np.clip(np.rint(col / s[:, 0]), qmin, qmax)
            q[:, b0 + i] = qc
            err = (col - qc * s[:, 0]) / hb[i, i]
            wb[:, i:] -= np.outer(err, hb[i, i:])
            errb[:, i] = err
        w[:, b1:] -= errb @ hinv[b0:b1, b1:]
    return q.astype(np.int32)


def gptq_params(w: np.ndarray, qp: QParams, axis: int, h: np.ndarray) -> QParams:
    """`qp` (symmetric, per-channel on `axis` of a 2-D weight) with GPTQ codes for input Gram `h`."""
    if w.ndim != 2 or not qp.symmetric or not qp.signed or qp.axis != axis:
        return qp
    rows = np.moveaxis(np.asarray(w, np.float32), axis, 0)
    codes = gptq_rows(rows, qp.scale, qp.qmin, qp.qmax, h)
    return QParams(qp.scale, qp.zero_point, qp.bits, qp.symmetric, qp.signed, qp.axis, qp.observer, qp.kind,
                   {**qp.extra, "rounding": "gptq"}, codes=np.moveaxis(codes, 0, axis).astype(np.int32))


def output_error(w: np.ndarray, qp: QParams, axis: int, h: np.ndarray) -> float:
    """sum over output channels of (w - w_hat) H (w - w_hat)^T: the expected squared output error."""
    from edgeforge.quant.quantizers import dequantize, weight_codes

    d = np.moveaxis(dequantize(weight_codes(w, qp), qp) - w, axis, 0).astype(np.float64)
    return float(np.einsum("ik,kl,il->", d, h, d))
