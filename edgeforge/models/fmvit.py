"""FMViT: a multiple-frequency mixing vision transformer (Tan et al., arXiv 2311.05707), in spirit.

No public code exists; only the paper's high-level design is known. This is a faithful-in-spirit
hybrid built from that description. What the paper states, and how it is realised here:

- High/low-frequency mixing: every block runs a convolutional path (local, high frequency: a
  reparameterizable depthwise conv) and a lightweight attention path (global, low frequency)
  side by side on the same input. *Inferred*: "several frequencies" is realised by splitting
  the attention heads into groups whose keys/values are pooled at different rates (e.g. 8x and
  4x in the first stage), so each head group sees the map at its own spatial frequency.
- RLMHSA (lightweight MHSA): keys and values come from an average-pooled map through one shared
  1x1 projection (K = V), cutting both the K/V projection cost and the attention's key count.
- CFB (convolutional fusion block): the two paths are concatenated and fused by a 1x1 Conv+BN,
  added to the residual.
- gMLP with convolutional multi-group reparameterization: the channel MLP is a gated MLP whose
  gate goes through a multi-branch conv (grouped 3x3 with 4 channels per group, depthwise 3x3,
  depthwise 1x1, identity BN). At deploy time `reparameterize()` folds every multi-branch conv
  (and every Conv+BN) into one conv, exactly (see layers/rep_conv.py).
- *Inferred*: stem (Conv+BN stride 2, then a rep conv stride 2), stride-2 rep-conv downsampling
  between the four stages, BN as the only norm (foldable), GELU, widths/depths of the variants
  (sized like MobileOne/EfficientNet-class models: ~3M to ~25M params). The paper's numbers are
  claims about latency at equal accuracy (TensorRT 83.3% at ResNet-101 latency, CoreML 78.5% at
  MobileOne latency); no per-variant parameter counts are published.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeforge.models import register_model
from edgeforge.models.layers.conv_bn import ConvBN
from edgeforge.models.layers.rep_conv import RepGroupConv


def rep_dw(dim: int, group_width: int = 4) -> RepGroupConv:
    """Multi-group rep conv: grouped 3x3 (`group_width` channels per group) + depthwise 3x3 and 1x1
    + identity; folds into one grouped 3x3."""
    return RepGroupConv(dim, dim, [(3, dim // group_width), (3, dim), (1, dim)], identity=True)


class RLMHSA(nn.Module):
    """Reduced-K/V multi-head attention on NCHW maps, head groups at several pool rates."""

    def __init__(self, dim: int, heads: int, pool_ratios: tuple[int, ...], head_dim: int = 32):
        super().__init__()
        if heads % len(pool_ratios):
            raise ValueError(f"{heads} heads do not split evenly over pool ratios {pool_ratios}")
        self.heads, self.head_dim, self.pool_ratios = heads, head_dim, tuple(pool_ratios)
        self.group_heads = heads // len(pool_ratios)
        inner = heads * head_dim
        self.scale = head_dim ** -0.5
        self.q = nn.Conv2d(dim, inner, 1)
        # one shared projection per head group gives both keys and values (K = V)
        self.kv = nn.ModuleList(nn.Conv2d(dim, self.group_heads * head_dim, 1) for _ in pool_ratios)
        self.pools = nn.ModuleList(nn.AvgPool2d(r, r) if r > 1 else nn.Identity() for r in pool_ratios)
        self.proj = ConvBN(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gh, d = self.group_heads, self.head_dim
        q = self.q(x).reshape(b, len(self.pool_ratios), gh, d, h * w).transpose(-1, -2)  # (b g gh hw d)
        outs = []
        for i, (pool, kv) in enumerate(zip(self.pools, self.kv)):
            k = kv(pool(x)).reshape(b, gh, d, -1)  # (b gh d m)
            attn = torch.softmax((q[:, i] * self.scale) @ k, dim=-1)  # (b gh hw m)
            outs.append(attn @ k.transpose(-1, -2))  # values are the keys
        o = torch.cat(outs, dim=1).transpose(-1, -2).reshape(b, -1, h, w)
        return self.proj(o)


class GatedConvMLP(nn.Module):
    """gMLP on maps: (u, v) = split(1x1(x)); out = 1x1(u * GELU(rep_conv(v)))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = ConvBN(dim, 2 * hidden, 1)
        self.gate = rep_dw(hidden)
        self.act = nn.GELU()
        self.fc2 = ConvBN(hidden, dim, 1)

    def forward(self, x):
        u, v = self.fc1(x).chunk(2, dim=1)
        return self.fc2(u * self.act(self.gate(v)))


class FMBlock(nn.Module):
    """x + CFB([conv path, attention path](BN(x))), then x + gMLP(BN(x))."""

    def __init__(self, dim: int, heads: int, pool_ratios: tuple[int, ...], mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.local = nn.Sequential(rep_dw(dim), nn.GELU())
        self.attn = RLMHSA(dim, heads, pool_ratios)
        self.fuse = ConvBN(2 * dim, dim, 1)  # CFB
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = GatedConvMLP(dim, int(dim * mlp_ratio))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.fuse(torch.cat([self.local(y), self.attn(y)], dim=1))
        return x + self.mlp(self.norm2(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold norm2 (a BN feeding only the 1x1 fc1) into fc1: 1x1 convs have no padding, so the
        per-input-channel affine map folds exactly. Sub-modules fold their own branches."""
        if isinstance(self.norm2, nn.Identity):
            return
        self.mlp.fc1.reparameterize()
        bn, conv = self.norm2, self.mlp.fc1.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = conv.weight[:, :, 0, 0]
        conv.bias.add_(w @ shift)
        conv.weight.mul_(scale.reshape(1, -1, 1, 1))
        self.norm2 = nn.Identity()


@dataclass(frozen=True)
class FMViTConfig:
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    pool_ratios: tuple[tuple[int, ...], ...] = ((8, 4), (4, 2), (2, 1), (1,))
    mlp_ratio: float = 2.0
    head_dim: int = 32


class FMViT(nn.Module):
    def __init__(self, cfg: FMViTConfig, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        d0 = cfg.dims[0]
        self.stem = nn.Sequential(ConvBN(in_chans, d0 // 2, 3, 2), nn.GELU(),
                                  RepGroupConv(d0 // 2, d0, [(3, 1), (1, 1)], stride=2), nn.GELU())
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            mods: list[nn.Module] = []
            if i:
                mods += [RepGroupConv(cfg.dims[i - 1], dim, [(3, 1), (1, 1)], stride=2), nn.GELU()]
            n = len(cfg.pool_ratios[i])
            heads = -(-dim // (cfg.head_dim * n)) * n  # ~dim/head_dim, a multiple of the head groups
            mods += [FMBlock(dim, heads, cfg.pool_ratios[i], cfg.mlp_ratio) for _ in range(depth)]
            self.stages.append(nn.Sequential(*mods))
        self.norm = nn.BatchNorm2d(cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean((2, 3)))


FMVIT_CONFIGS = {
    "tiny": FMViTConfig((16, 32, 64, 64), (1, 1, 1, 1), ((2, 1), (2, 1), (1, 1), (1,))),  # test-sized
    "t": FMViTConfig((32, 64, 128, 256), (1, 2, 5, 2)),
    "s": FMViTConfig((48, 96, 192, 384), (2, 2, 6, 2)),
    "m": FMViTConfig((64, 128, 256, 512), (2, 3, 9, 3)),
    "l": FMViTConfig((96, 192, 384, 768), (2, 3, 9, 3)),
}


@register_model
def fmvit_tiny(**kw) -> FMViT:
    """Test-sized FMViT (one block per stage); use with a small input (e.g. 64x64)."""
    return FMViT(FMVIT_CONFIGS["tiny"], **kw)


@register_model
def fmvit_t(**kw) -> FMViT:
    return FMViT(FMVIT_CONFIGS["t"], **kw)


@register_model
def fmvit_s(**kw) -> FMViT:
    return FMViT(FMVIT_CONFIGS["s"], **kw)


@register_model
def fmvit_m(**kw) -> FMViT:
    return FMViT(FMVIT_CONFIGS["m"], **kw)


@register_model
def fmvit_l(**kw) -> FMViT:
    return FMViT(FMVIT_CONFIGS["l"], **kw)
