"""Torch entry points of the custom ops and the export-mode switch.

Eager calls run the torch reference. The export path (autograd.Function with `symbolic`) and
the decompositions are added by the custom-ops work; see edgeforge/ops/__init__.py for the
contract models rely on.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from edgeforge.ops import reference

_state = threading.local()
MODES = ("plugin", "decompose")


def current_mode() -> str:
    return getattr(_state, "mode", "decompose")


@contextlib.contextmanager
def export_mode(mode: str) -> Iterator[None]:
    if mode not in MODES:
        raise ValueError(f"custom-op mode must be one of {MODES}, got {mode!r}")
    prev = current_mode()
    _state.mode = mode
    try:
        yield
    finally:
        _state.mode = prev


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False):
    return reference.linear_scan(a, b, h0, reverse)


def gated_attention(q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False):
    return reference.gated_attention(q, k, v, bias, log_f, scale, causal)
