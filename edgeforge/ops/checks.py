"""Shape and value checks shared by every implementation of the custom ops (torch-free).

The torch entry points, the numpy reference and the native loaders all validate through these
functions, so a bad call gives the same clear message whichever implementation runs.
"""

from __future__ import annotations

from typing import Sequence

from edgeforge.errors import BadInput


class OpInputError(BadInput, ValueError):
    """Bad input to a custom op: wrong rank, mismatched shapes, or values it cannot handle.

    A `ValueError` too, so that callers that do not know edgeforge's error classes still catch it.
    """


Shape = Sequence[int]


def _s(shape: Shape | None) -> str:
    return "None" if shape is None else str(tuple(int(d) for d in shape))


def check_linear_scan(a: Shape, b: Shape, h0: Shape | None = None) -> tuple[int, int, int]:
    """Validate LinearScan shapes; return (B, T, C).

    a, b: (B, T, C) with T >= 1; h0: (B, C) or None.
    """
    if len(a) != 3 or len(b) != 3:
        raise OpInputError(f"LinearScan: a and b must be 3-D (B, T, C); got a {_s(a)}, b {_s(b)}")
    if tuple(a) != tuple(b):
        raise OpInputError(f"LinearScan: a and b must have the same shape; got a {_s(a)}, b {_s(b)}")
    bsz, t, c = (int(d) for d in a)
    if t < 1:
        raise OpInputError(f"LinearScan: T (dim 1 of a) must be >= 1; got a {_s(a)}")
    if h0 is not None and tuple(int(d) for d in h0) != (bsz, c):
        raise OpInputError(f"LinearScan: h0 must be (B, C) = {(bsz, c)}; got {_s(h0)}")
    return bsz, t, c


def check_gated_attention(
    q: Shape, k: Shape, v: Shape, bias: Shape | None = None, log_f: Shape | None = None, causal: bool = False
) -> tuple[int, int, int, int, int, int]:
    """Validate GatedAttention shapes; return (B, H, N, M, D, Dv).

    q (B,H,N,D), k (B,H,M,D), v (B,H,M,Dv); bias broadcastable to (B,H,N,M); log_f (B,H,N) with N == M.
    Causal masking (also implied by log_f) aligns the mask bottom-right and needs M >= N, so that
    every query row attends to at least one key.
    """
    for name, s in (("q", q), ("k", k), ("v", v)):
        if len(s) != 4:
            raise OpInputError(f"GatedAttention: {name} must be 4-D (B, H, N|M, D); got {name} {_s(s)}")
    bq, hq, n, d = (int(x) for x in q)
    bk, hk, m, dk = (int(x) for x in k)
    bv, hv, mv, dv = (int(x) for x in v)
    if (bq, hq) != (bk, hk) or (bq, hq) != (bv, hv):
        raise OpInputError(f"GatedAttention: q, k, v must share (B, H); got q {_s(q)}, k {_s(k)}, v {_s(v)}")
    if dk != d:
        raise OpInputError(f"GatedAttention: q and k must share D (last dim); got q {_s(q)}, k {_s(k)}")
    if mv != m:
        raise OpInputError(f"GatedAttention: k and v must share M (dim 2); got k {_s(k)}, v {_s(v)}")
    if min(n, m, d, dv) < 1:
        raise OpInputError(f"GatedAttention: empty dimension in q {_s(q)}, k {_s(k)}, v {_s(v)}")
    if bias is not None:
        if len(bias) > 4:
            raise OpInputError(f"GatedAttention: bias must have rank <= 4; got {_s(bias)}")
        full = (bq, hq, n, m)
        padded = (1,) * (4 - len(bias)) + tuple(int(x) for x in bias)
        if any(p not in (1, f) for p, f in zip(padded, full)):
            raise OpInputError(
                f"GatedAttention: bias {_s(bias)} is not broadcastable to (B, H, N, M) = {full}")
    if log_f is not None:
        if tuple(int(x) for x in log_f) != (bq, hq, n):
            raise OpInputError(f"GatedAttention: log_f must be (B, H, N) = {(bq, hq, n)}; got {_s(log_f)}")
        if n != m:
            raise OpInputError(f"GatedAttention: log_f needs N == M; got N={n}, M={m}")
    if (causal or log_f is not None) and m < n:
        raise OpInputError(f"GatedAttention: causal attention needs M >= N; got N={n}, M={m}")
    return bq, hq, n, m, d, dv


def broadcast_strides(shape: Shape, full: Shape) -> tuple[int, ...]:
    """Element strides of a contiguous tensor of `shape` broadcast to `full` (0 where broadcast)."""
    padded = (1,) * (len(full) - len(shape)) + tuple(int(x) for x in shape)
    strides, acc = [0] * len(full), 1
    for i in range(len(full) - 1, -1, -1):
        strides[i] = 0 if padded[i] == 1 and full[i] != 1 else acc
        acc *= padded[i]
    return tuple(strides)
