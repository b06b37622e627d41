"""Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)), with optional residual scaling."""

from __future__ import annotations

from torch import nn

from edgeforge.models.layers.attention import Attention
from edgeforge.models.layers.mlp import Mlp


class ViTBlock(nn.Module):
    """The ViT encoder block. `skip_lam` divides each branch (LV-ViT's residual scaling)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 head_dim: int | None = None, skip_lam: float = 1.0, act: type[nn.Module] = nn.GELU,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)
        self.skip_lam = skip_lam

    def forward(self, x):
        if self.skip_lam != 1.0:
            x = x + self.attn(self.norm1(x)) / self.skip_lam
            return x + self.mlp(self.norm2(x)) / self.skip_lam
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
