"""Custom ops `LinearScan` and `GatedAttention` (design.md, "Custom ops").

Public API (what models call):
    linear_scan(a, b, h0=None, reverse=False) -> (h, h_last)
        a, b: (B, T, C); h_t = a_t * h_{t-1} + b_t; h0: (B, C) or None (zeros).
    gated_attention(q, k, v, bias=None, log_f=None, scale=None, causal=False) -> o
        q (B,H,N,D), k (B,H,M,D), v (B,H,M,Dv); o = softmax(scale*q k^T + bias) v, where bias is a
        tensor broadcastable to (B,H,N,M) or, from log forget gates log_f (B,H,N), c_i - c_j with
        c = cumsum(log_f) (FoX; implies N == M).
    export_mode(mode) -> context manager; mode "plugin" keeps edgeforge:: nodes in an ONNX
        export, "decompose" emits standard ONNX ops only.

This module imports without torch: the torch pieces load on first attribute access, so that
`edgeforge.ops.native` (the native library loader) is usable on torch-free devices.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeforge.ops.checks import OpInputError  # noqa: F401  (torch-free)
from edgeforge.ops.schema import DOMAIN, OPSET_VERSION

CUSTOM_OPSETS = {DOMAIN: OPSET_VERSION}

_LAZY = {
    "linear_scan": "edgeforge.ops.api",
    "gated_attention": "edgeforge.ops.api",
    "export_mode": "edgeforge.ops.api",
    "current_mode": "edgeforge.ops.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeforge.ops' has no attribute {name!r}")
