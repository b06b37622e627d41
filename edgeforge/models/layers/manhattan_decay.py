"""RMT's spatial decay: log-domain attention biases from Manhattan distance (MaSA).

Per head h, `gamma_h = 1 - 2^-(init + range*h/heads)`; the bias added to the logits between
positions i and j is `distance(i, j) * log(gamma_h)`. Full MaSA uses the 2-D Manhattan distance
over the flattened H*W grid; the decomposed form uses |dw| within rows and |dh| within columns.
The tables depend only on (H, W), which is why they can be precomputed per export resolution.
"""

from __future__ import annotations

import torch


def log_decay(num_heads: int, initial_value: float, heads_range: float) -> torch.Tensor:
    """log(gamma_h) for each head: (heads,)."""
    h = torch.arange(num_heads, dtype=torch.float32)
    return torch.log(1 - 2 ** (-initial_value - heads_range * h / num_heads))


def decay_1d(log_gamma: torch.Tensor, length) -> torch.Tensor:
    """(heads, L, L): |i - j| * log(gamma_h)."""
    index = torch.arange(length, dtype=log_gamma.dtype, device=log_gamma.device)
    return (index[:, None] - index[None, :]).abs() * log_gamma[:, None, None]


def decay_2d(log_gamma: torch.Tensor, h, w) -> torch.Tensor:
    """(heads, H*W, H*W): (|dy| + |dx|) * log(gamma_h) over the row-major flattened grid."""
    ys = torch.arange(h, dtype=log_gamma.dtype, device=log_gamma.device)
    xs = torch.arange(w, dtype=log_gamma.dtype, device=log_gamma.device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    dist = (grid[:, None, :] - grid[None, :, :]).abs().sum(-1)
    return dist * log_gamma[:, None, None]
