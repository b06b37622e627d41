"""Rotary position rotation over a flattened 2-D index (RMT's `theta_shift`).

Channel pairs (x_{2i}, x_{2i+1}) are rotated by angle pos * theta_i:
`x * cos + rotate_every_two(x) * sin`, with `rotate_every_two(x)_{2i,2i+1} = (-x_{2i+1}, x_{2i})`.
The sin/cos tables depend only on the resolution, so they are computed once per (H, W).
"""

from __future__ import annotations

import torch


def rotary_angles(head_dim: int) -> torch.Tensor:
    """theta per channel, each frequency repeated for its pair: (head_dim,)."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
    return angle.unsqueeze(-1).repeat(1, 2).flatten()


def rotary_tables(angle: torch.Tensor, h, w) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (h, w, head_dim), for positions 0..h*w-1 in row-major order."""
    index = torch.arange(h * w, dtype=angle.dtype, device=angle.device)
    phase = index[:, None] * angle[None, :]
    return torch.sin(phase).reshape(h, w, -1), torch.cos(phase).reshape(h, w, -1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_every_two(x) * sin
