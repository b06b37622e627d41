"""Griffin's recurrent block (RG-LRU with a causal temporal conv), for sequences (B, T, C).

    y = W_out( GELU(W_y x) * RG_LRU(CausalConv1D_width_k(W_x x)) )

RG-LRU (real, diagonal): i_t = sigmoid(BlockDiag_i x_t), r_t = sigmoid(BlockDiag_r x_t),
log a_t = -8 r_t softplus(Lambda), h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), with the
normaliser replaced by 1 at the first step (the state starts at zero). The recurrence runs
through `edgeforge.ops.linear_scan`, so exports can keep it as one LinearScan node.

Two entry points share the weights: `forward` over a whole sequence, and `step` for one time
step with the recurrent state and the conv window passed in and returned (streaming).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeforge import ops


class BlockDiagonalLinear(nn.Module):
    """`heads` independent (C/heads x C/heads) linear maps with bias, applied blockwise."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.block = heads, width // heads
        self.weight = nn.Parameter(torch.randn(heads, self.block, self.block) / math.sqrt(self.block))
        self.bias = nn.Parameter(torch.zeros(heads, self.block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (heads, M, block) @ (heads, block, block): a batched MatMul, which ONNX shape
        # inference follows (an Einsum with an ellipsis loses the static shape)
        xs = x.reshape(-1, self.heads, self.block).transpose(0, 1)
        y = (xs @ self.weight).transpose(0, 1) + self.bias
        return y.reshape(x.shape)


class RGLRU(nn.Module):
    """Real-gated linear recurrent unit over (B, T, C)."""

    C_SCALE = 8.0

    def __init__(self, width: int, heads: int, min_rad: float = 0.5, max_rad: float = 0.999):
        super().__init__()
        self.input_gate = BlockDiagonalLinear(width, heads)
        self.a_gate = BlockDiagonalLinear(width, heads)
        # Lambda such that a = exp(-8 softplus(Lambda)) starts uniform in [min_rad^2, max_rad^2]
        a0 = torch.empty(width).uniform_(min_rad ** 2, max_rad ** 2)
        self.a_param = nn.Parameter(torch.log(torch.expm1(-torch.log(a0) / self.C_SCALE)))

    def _gates(self, x: torch.Tensor):
        gate_x = torch.sigmoid(self.input_gate(x))
        log_a = -self.C_SCALE * torch.sigmoid(self.a_gate(x)) * F.softplus(self.a_param)
        a = torch.exp(log_a)
        norm = torch.sqrt(torch.clamp(1 - torch.exp(2 * log_a), min=0.0))
        return a, norm, x * gate_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, norm, gated = self._gates(x)
        # the first step has no history: its input is not normalised (Griffin's reset)
        first = torch.zeros_like(norm[:, :1]) + 1.0
        norm = torch.cat([first, norm[:, 1:]], dim=1)
        b = gated * norm
        h, _ = ops.linear_scan(a, b)
        # restate the (static) shape: exporters' shape inference may not see through the scan
        return h.reshape(b.shape)

    def step(self, x: torch.Tensor, h: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
        """One step: x (B, C), previous state h (B, C), is_first (B, 1) in {0, 1} -> new state."""
        a, norm, gated = self._gates(x)
        norm = is_first + (1 - is_first) * norm
        return a * h + gated * norm


class CausalConv1d(nn.Module):
    """Depthwise temporal conv over (B, T, C), output at t sees inputs t-k+1..t (zeros before 0)."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.randn(kernel, width) / math.sqrt(kernel))  # weight[i] multiplies x_{t-i}
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A depthwise Conv1d over (B, C, T) padded by k-1 on both sides, keeping the first T
        # outputs: tap j then sees x_{t-(k-1-j)}. One Conv node with constant pads and a constant
        # slice keeps the exported shapes static for the scan that follows.
        w = self.weight.flip(0).t().unsqueeze(1)  # (C, 1, k)
        y = F.conv1d(x.transpose(1, 2), w, self.bias, padding=self.kernel - 1, groups=w.shape[0])
        if self.kernel > 1:
            y = y[:, :, :1 - self.kernel]
        return y.transpose(1, 2)

    def step(self, x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C) and the previous k-1 inputs `window` (B, k-1, C), oldest first -> (y, new window)."""
        full = torch.cat([window, x[:, None]], dim=1)  # x_{t-k+1} .. x_t
        y = self.bias + (full * self.weight.flip(0)).sum(1)
        return y, full[:, 1:]


class RecurrentBlock(nn.Module):
    """Griffin's temporal mixing block: W_out(GELU(W_y x) * RG_LRU(conv(W_x x)))."""

    def __init__(self, width: int, lru_width: int, heads: int, conv_width: int = 4, min_rad: float = 0.5):
        super().__init__()
        self.lru_width, self.conv_width = lru_width, conv_width
        self.linear_y = nn.Linear(width, lru_width)
        self.linear_x = nn.Linear(width, lru_width)
        self.conv1d = CausalConv1d(lru_width, conv_width)
        self.rg_lru = RGLRU(lru_width, heads, min_rad=min_rad)
        self.linear_out = nn.Linear(lru_width, width)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.linear_y(x))
        h = self.rg_lru(self.conv1d(self.linear_x(x)))
        return self.linear_out(h * y)

    def step(self, x, h, window, is_first):
        """One time step on (B, C) with state h (B, lru) and window (B, k-1, lru) -> (out, h, window)."""
        y = self.act(self.linear_y(x))
        u, window = self.conv1d.step(self.linear_x(x), window)
        h = self.rg_lru.step(u, h, is_first)
        return self.linear_out(h * y), h, window
