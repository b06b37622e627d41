"""Multi-head self-attention over tokens (B, N, C), written out as MatMul/Softmax/MatMul.

Written explicitly (not `F.scaled_dot_product_attention`) so every exporter and runtime sees the
same plain graph, and so a per-head bias can be added to the logits when a model needs one.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Standard MHSA: one fused qkv projection, softmax(q k^T * scale) v, output projection."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))
