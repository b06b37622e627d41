"""Numpy references of the custom ops (torch-free), for runtime checks on devices without torch.

They compute in float64 and check that inputs are finite, so they double as the oracle when a
runtime's output must be judged where torch is not installed.
"""

from __future__ import annotations

import numpy as np

from edgeforge.ops.checks import OpInputError, check_gated_attention, check_linear_scan


def _finite(name: str, op: str, x: np.ndarray, allow_neg_inf: bool = False) -> None:
    bad = np.isnan(x) | (np.isposinf(x)) | (np.isneginf(x) & (not allow_neg_inf))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise OpInputError(f"{op}: {name} has a non-finite value {x[idx]} at index {idx}")


def linear_scan(a, b, h0=None, reverse: bool = False):
    """Numpy LinearScan; returns (h (B,T,C), h_last (B,C)) in the dtype of b."""
    a, b = np.asarray(a), np.asarray(b)
    check_linear_scan(a.shape, b.shape, None if h0 is None else np.shape(h0))
    for name, x in (("a", a), ("b", b)) + ((("h0", np.asarray(h0)),) if h0 is not None else ()):
        _finite(name, "LinearScan", x)
    h = np.zeros(b[:, 0].shape) if h0 is None else np.asarray(h0, dtype=np.float64)
    out = np.empty(b.shape, dtype=np.float64)
    for t in (range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])):
        h = a[:, t].astype(np.float64) * h + b[:, t]
        out[:, t] = h
    return out.astype(b.dtype), h.astype(b.dtype)


def gated_attention(q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False):
    """Numpy GatedAttention (same definition as the torch reference); float64 inside."""
    q, k, v = (np.asarray(x) for x in (q, k, v))
    check_gated_attention(q.shape, k.shape, v.shape, None if bias is None else np.shape(bias),
                          None if log_f is None else np.shape(log_f), causal)
    for name, x in (("q", q), ("k", k), ("v", v)) + ((("log_f", np.asarray(log_f)),) if log_f is not None else ()):
        _finite(name, "GatedAttention", x)
    if bias is not None:
        _finite("bias", "GatedAttention", np.asarray(bias), allow_neg_inf=True)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.matmul(q.astype(np.float64), np.swapaxes(k, -1, -2).astype(np.float64)) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, dtype=np.float64)
    n, m = q.shape[-2], k.shape[-2]
    if log_f is not None:
        c = np.cumsum(np.asarray(log_f, dtype=np.float64), axis=-1)
        logits = logits + (c[..., :, None] - c[..., None, :])
        causal = True
    if causal:
        logits = np.where(np.tril(np.ones((n, m), dtype=bool), k=m - n), logits, -np.inf)
    # A row whose keys are all masked gives NaN, as softmax over all -inf does in torch.
    with np.errstate(invalid="ignore"):
        mx = logits.max(axis=-1, keepdims=True)
        p = np.exp(logits - mx)
        p /= p.sum(axis=-1, keepdims=True)
    return np.matmul(p, v.astype(np.float64)).astype(q.dtype)
