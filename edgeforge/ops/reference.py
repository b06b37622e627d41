"""Torch references of the custom ops: the definition every other implementation is tested against."""

from __future__ import annotations

import math

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False):
    """h_t = a_t * h_{t-1} + b_t over dim 1 of (B, T, C); returns (all states, last state)."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"linear_scan: a and b must both be (B, T, C), got {tuple(a.shape)} and {tuple(b.shape)}")
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    steps = range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])
    out = [None] * a.shape[1]
    for t in steps:
        h = a[:, t] * h + b[:, t]
        out[t] = h
    return torch.stack(out, dim=1), h


def gated_attention(q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False):
    """softmax(scale * q k^T + bias [+ c_i - c_j from log_f]) v, with an optional causal mask."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("gated_attention: q, k, v must be 4-D (B, H, N|M, D)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias
    n, m = q.shape[-2], k.shape[-2]
    if log_f is not None:
        if n != m:
            raise ValueError(f"gated_attention: log_f needs N == M, got N={n}, M={m}")
        c = torch.cumsum(log_f.float(), dim=-1).to(logits.dtype)
        logits = logits + (c.unsqueeze(-1) - c.unsqueeze(-2))
        causal = True
    if causal:
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(diagonal=m - n)
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(logits, dim=-1), v)
