"""SiT: Self-slimmed Vision Transformer (Zong et al., ECCV 2022; Sense-X/SiT), inference form.

An LV-ViT backbone (conv patch stem, cls token, pre-norm blocks with residual scaling
`skip_lam`) whose token count shrinks between stages through Token Slimming Modules (TSM):

    W = Linear(C -> N')(GELU(Linear(C -> C/2)(LN(X))))       (B, N, N')
    A = softmax over N of (W * tau), transposed                (B, N', C) = A @ X

A TSM aggregates softly (nothing is dropped) into a fixed N' (196 -> 98 -> 49 -> 24 at 224), so
the graph is static. The training-only parts (reverse TSMs, the token-labelling auxiliary head,
feature distillation) are not built: they do not run at inference. `include_aux_head=True`
adds the auxiliary head's parameters (unused by `forward`) so that parameter counts can be
compared with the paper's, which include it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeforge.models import register_model
from edgeforge.models.layers.vit_block import ViTBlock


class ConvStem(nn.Module):
    """LV-ViT patch stem: stride-2 3x3 conv+BN layers (GELU between) down to 1/16 resolution."""

    def __init__(self, in_chans: int, dim: int, layers: int = 4):
        super().__init__()
        # '4c': C/8 -> C/4 -> C/2 -> C, all stride 2; '6c' adds two stride-1 C/8 layers first
        plan = [(dim // 8, 2)] + [(dim // 8, 1)] * (layers - 4) + [(dim // 4, 2), (dim // 2, 2), (dim, 2)]
        mods: list[nn.Module] = []
        cin = in_chans
        for i, (cout, stride) in enumerate(plan):
            mods += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
            if i < len(plan) - 1:
                mods.append(nn.GELU())
            cin = cout
        self.proj = nn.Sequential(*mods)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TokenSlimming(nn.Module):
    """TSM: softly aggregate N tokens into `keep` tokens with learned, input-dependent weights."""

    def __init__(self, dim: int, keep: int, ratio: float = 0.5):
        super().__init__()
        self.weight = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, int(dim * ratio)), nn.GELU(),
                                    nn.Linear(int(dim * ratio), keep))
        self.scale = nn.Parameter(torch.ones(1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.weight(x) * self.scale, dim=1).transpose(1, 2)  # (B, keep, N)
        return torch.bmm(w, x)


@dataclass(frozen=True)
class SiTConfig:
    dim: int
    depth: int
    heads: int
    stage_blocks: tuple[int, ...]
    mlp_ratio: float = 3.0
    skip_lam: float = 2.0
    stem_layers: int = 4
    img_size: int = 224
    keep_ratio: float = 0.5


class SiT(nn.Module):
    """SiT classifier; token counts per stage are fixed by `img_size` and `keep_ratio`."""

    def __init__(self, cfg: SiTConfig, num_classes: int = 1000, img_size: int | None = None,
                 in_chans: int = 3, include_aux_head: bool = False):
        super().__init__()
        if sum(cfg.stage_blocks) != cfg.depth:
            raise ValueError(f"stage_blocks {cfg.stage_blocks} must sum to depth {cfg.depth}")
        img_size = img_size or cfg.img_size
        self.patch_embed = ConvStem(in_chans, cfg.dim, cfg.stem_layers)
        num_patches = (img_size // 16) ** 2
        self.keep = [int(num_patches * cfg.keep_ratio ** i) for i in range(len(cfg.stage_blocks))]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, qkv_bias=False,
                                             skip_lam=cfg.skip_lam, norm_eps=1e-5) for _ in range(cfg.depth))
        # a TSM after the last block of every stage but the last
        ends = [sum(cfg.stage_blocks[:i + 1]) for i in range(len(cfg.stage_blocks) - 1)]
        self.slim_after = {e - 1: i for i, e in enumerate(ends)}
        self.tsm = nn.ModuleList(TokenSlimming(cfg.dim, k) for k in self.keep[1:])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.aux_head = nn.Linear(cfg.dim, num_classes) if include_aux_head else None
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.slim_after:
                cls, tokens = x[:, :1], x[:, 1:]
                x = torch.cat([cls, self.tsm[self.slim_after[i]](tokens)], dim=1)
        return self.head(self.norm(x)[:, 0])


SIT_CONFIGS = {
    "t": SiTConfig(320, 14, 5, (1, 1, 1, 11)),
    "xs": SiTConfig(384, 16, 6, (1, 1, 1, 13)),
    "s": SiTConfig(384, 16, 6, (9, 3, 2, 2)),
    "m": SiTConfig(512, 20, 8, (10, 4, 3, 3)),
    "l": SiTConfig(768, 24, 12, (10, 4, 3, 7), skip_lam=3.0, stem_layers=6, img_size=288),
    "tiny": SiTConfig(64, 4, 2, (1, 1, 1, 1), img_size=64),  # test-sized
}


@register_model
def sit_tiny(**kw) -> SiT:
    """Test-sized SiT: every stage one block, 64x64 input (16 -> 8 -> 4 -> 2 tokens)."""
    return SiT(SIT_CONFIGS["tiny"], **kw)


@register_model
def sit_t(**kw) -> SiT:
    return SiT(SIT_CONFIGS["t"], **kw)


@register_model
def sit_xs(**kw) -> SiT:
    return SiT(SIT_CONFIGS["xs"], **kw)


@register_model
def sit_s(**kw) -> SiT:
    return SiT(SIT_CONFIGS["s"], **kw)


@register_model
def sit_m(**kw) -> SiT:
    return SiT(SIT_CONFIGS["m"], **kw)


@register_model
def sit_l(**kw) -> SiT:
    return SiT(SIT_CONFIGS["l"], **kw)
