"""Parameter and MAC counts of a torch model (what the manifest and the model cards report)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Unique parameters (shared tensors counted once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


@torch.no_grad()
def count_macs(model: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of one forward pass, from torch's own FLOP counter (flops / 2).

    FlopCounterMode counts matmuls, convolutions and attention kernels; elementwise ops are not
    counted, which is the convention of the published GMAC figures.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    return int(counter.get_total_flops() // 2)
