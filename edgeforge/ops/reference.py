"""Torch references of the custom ops: the definition every other implementation is tested against.

Written for clarity, not speed: a step-by-step scan, and attention that materialises the logits.
"""

from __future__ import annotations

import math

import torch

from edgeforge.ops.checks import check_gated_attention, check_linear_scan


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False):
    """h_t = a_t * h_{t-1} + b_t over dim 1 of (B, T, C) (t runs backwards if `reverse`).

    Returns (all states (B, T, C), last state (B, C)); h0 (B, C) defaults to zeros.
    """
    check_linear_scan(a.shape, b.shape, None if h0 is None else h0.shape)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    steps = range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])
    out = [None] * a.shape[1]
    for t in steps:
        h = a[:, t] * h + b[:, t]
        out[t] = h
    return torch.stack(out, dim=1), h


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def gated_attention(q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False):
    """softmax(scale * q k^T + bias [+ c_i - c_j, c = cumsum(log_f)]) v, causal if asked or if log_f.

    The causal mask is aligned bottom-right (query i sees keys j <= i + M - N), so it also serves a
    query block appended to a longer key cache.
    """
    check_gated_attention(q.shape, k.shape, v.shape, None if bias is None else bias.shape,
                          None if log_f is None else log_f.shape, causal)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    return gated_attention_graph(q, k, v, bias, log_f, scale, causal)


def gated_attention_graph(q, k, v, bias=None, log_f=None, scale=None, causal: bool = False):
    """`gated_attention` without the checks, in the op order of the ONNX decomposition (q is
    scaled before q k^T) and reading no Python ints from shapes: torch.fx captures it op by op,
    so the torch quantization simulation puts its quantizers exactly where the decomposed QDQ
    graph has them (on scale * q, k, softmax output and v)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    logits = torch.matmul(q * scale, k.transpose(-1, -2))
    if bias is not None:
        logits = logits + bias
    if log_f is not None:
        # FoX: c in fp32; only differences c_i - c_j (bounded for j <= i) ever enter the softmax.
        c = torch.cumsum(log_f.float(), dim=-1).to(logits.dtype)
        logits = logits + (c.unsqueeze(-1) - c.unsqueeze(-2))
        causal = True
    if causal:
        n, m = q.shape[-2], k.shape[-2]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(diagonal=m - n)
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(logits, dim=-1), v)
