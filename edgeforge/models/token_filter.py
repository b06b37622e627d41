"""Token filtering for ViTs with static shapes (after "Predicting Token Impact Towards Efficient
Vision Transformer", arXiv 2305.14840).

A small MLP scores every patch token once, before the first self-attention block; only the
`keep = round(keep_ratio * N)` best-scored tokens (plus the cls token) go through the
transformer. For deployment the count is fixed, so the graph is TopK(score, keep) + Gather with
static shapes, and `keep_ratio` is a recipe parameter (builder_args).

Inferred (no public code): the scorer's shape (LN -> Linear(C, C/4) -> GELU -> Linear(C/4, 1))
and that the kept tokens pass unchanged (hard selection at inference; the paper's training-time
relaxation is not needed to deploy). The backbone is a DeiT-style ViT (patch 16, cls token,
learned position embedding added before filtering, so the kept tokens carry their positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeforge.models import register_model
from edgeforge.models.layers.patch_embed import PatchEmbed
from edgeforge.models.layers.vit_block import ViTBlock


class TokenScorer(nn.Module):
    """Per-token impact score (B, N, C) -> (B, N)."""

    def __init__(self, dim: int, ratio: float = 0.25):
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def keep_count(num_tokens: int, keep_ratio: float) -> int:
    """Tokens kept for a ratio: round(ratio * N), at least 1 (static for a given resolution)."""
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, int(round(keep_ratio * num_tokens)))


@dataclass(frozen=True)
class TFConfig:
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    img_size: int = 224
    patch: int = 16


class TokenFilterViT(nn.Module):
    """DeiT-style ViT with one token-filtering step before the first block."""

    def __init__(self, cfg: TFConfig, keep_ratio: float = 0.7, num_classes: int = 1000,
                 img_size: int | None = None, in_chans: int = 3):
        super().__init__()
        img_size = img_size or cfg.img_size
        self.num_patches = (img_size // cfg.patch) ** 2
        self.keep_ratio = keep_ratio
        self.keep = keep_count(self.num_patches, keep_ratio)
        self.patch_embed = PatchEmbed(in_chans, cfg.dim, cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches + 1, cfg.dim) * 0.02)
        self.scorer = TokenScorer(cfg.dim)
        self.blocks = nn.ModuleList(ViTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def filter_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Keep the `self.keep` highest-scored tokens (B, N, C) -> (B, keep, C); identity at ratio 1."""
        if self.keep == tokens.shape[1]:
            return tokens
        idx = torch.topk(self.scorer(tokens), self.keep, dim=1).indices  # (B, keep)
        return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x = self.filter_tokens(x)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


TF_CONFIGS = {
    "tiny": TFConfig(64, 2, 2, img_size=64),  # test-sized
    "deit_t": TFConfig(192, 12, 3),
    "deit_s": TFConfig(384, 12, 6),
}


@register_model
def token_filter_tiny(**kw) -> TokenFilterViT:
    """Test-sized token-filtering ViT (64x64 input, 16 patch tokens)."""
    return TokenFilterViT(TF_CONFIGS["tiny"], **kw)


@register_model
def token_filter_deit_t(**kw) -> TokenFilterViT:
    return TokenFilterViT(TF_CONFIGS["deit_t"], **kw)


@register_model
def token_filter_deit_s(**kw) -> TokenFilterViT:
    return TokenFilterViT(TF_CONFIGS["deit_s"], **kw)
