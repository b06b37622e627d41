"""RMT: Retentive Networks meet Vision Transformers (Fan et al., CVPR 2024; qhfan/RMT).

A four-stage hierarchical backbone whose attention is Manhattan Self-Attention (MaSA): softmax
attention with an additive, per-head spatial decay `(|dy| + |dx|) * log(gamma_h)` and rotary
q/k. Early stages use the decomposed form (attention along W within rows, then along H within
columns, each with its 1-D decay), the last stage the full 2-D form. Each block also has a
depthwise 3x3 conditional position encoding (CPE), a depthwise 5x5 LCE on V added to the
attention output, and an FFN with an inner depthwise 3x3 residual. The head projects to 1024
channels with BN + Swish before pooling, as in the authors' classifier.

Export: the attention runs through `edgeforge.ops.gated_attention` (one GatedAttention node in
`plugin` mode, standard ops in `decompose` mode). The decay masks and rotary tables depend only
on the resolution; `RelPos2d.reparameterize()` (the recipe's `reparameterize` deploy transform)
freezes them as constants for the model's `img_size`, so the exported graph has no Range/Abs
chains. Variants T/S/B/L follow the authors' RMT_T3/RMT_S/RMT_M2/RMT_L6 configurations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeforge import ops
from edgeforge.models import register_model
from edgeforge.models.layers.manhattan_decay import decay_1d, decay_2d, log_decay
from edgeforge.models.layers.rotary import apply_rotary, rotary_angles, rotary_tables


class DWConv(nn.Module):
    """Depthwise conv on channels-last maps (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)

    def forward(self, x):
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RelPos2d(nn.Module):
    """Decay masks and rotary tables for one stage.

    Computed from the feature-map size on every call (as in the authors' code) until
    `reparameterize()` freezes them as buffers for `resolution`; after that, calls at that
    resolution return the constants (other resolutions still compute them).
    """

    fx_leaf = True  # sizes in, constant tables out: one call in the quantization simulation's FX graph

    def __init__(self, dim: int, num_heads: int, initial_value: float, heads_range: float,
                 decomposed: bool, resolution: tuple[int, int]):
        super().__init__()
        self.decomposed, self.resolution = decomposed, tuple(resolution)
        self.register_buffer("angle", rotary_angles(dim // num_heads), persistent=False)
        self.register_buffer("log_gamma", log_decay(num_heads, initial_value, heads_range), persistent=False)
        self.frozen = False

    def compute(self, h, w):
        sin, cos = rotary_tables(self.angle, h, w)
        if self.decomposed:
            return sin, cos, decay_1d(self.log_gamma, h), decay_1d(self.log_gamma, w)
        return sin, cos, decay_2d(self.log_gamma, h, w), None

    def forward(self, h, w):
        if self.frozen:
            with warnings.catch_warnings():  # sizes are static in an export: reading them is intended
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                at_resolution = (int(h), int(w)) == self.resolution
            if at_resolution:
                return self.sin, self.cos, self.mask_a, self.mask_b
        return self.compute(h, w)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.frozen:
            return
        sin, cos, mask_a, mask_b = self.compute(*self.resolution)
        for name, t in (("sin", sin), ("cos", cos), ("mask_a", mask_a), ("mask_b", mask_b)):
            self.register_buffer(name, t, persistent=False)
        self.frozen = True


class MaSA(nn.Module):
    """Manhattan self-attention, full or decomposed, with LCE (depthwise 5x5 on V)."""

    def __init__(self, dim: int, num_heads: int, decomposed: bool):
        super().__init__()
        self.num_heads, self.head_dim, self.decomposed = num_heads, dim // num_heads, decomposed
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = DWConv(dim, 5)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rel) -> torch.Tensor:
        b, h, w, c = x.shape
        sin, cos, mask_a, mask_b = rel
        nh, d = self.num_heads, self.head_dim
        v = self.v_proj(x)
        lepe = self.lepe(v)
        q = apply_rotary(self.q_proj(x).reshape(b, h, w, nh, d).permute(0, 3, 1, 2, 4), sin, cos)  # (b n h w d)
        k = apply_rotary(self.k_proj(x).reshape(b, h, w, nh, d).permute(0, 3, 1, 2, 4), sin, cos)
        v = v.reshape(b, h, w, nh, d).permute(0, 3, 1, 2, 4)
        if self.decomposed:
            # along W inside each row: batch (b, h), sequence w
            def rows(t):
                return t.permute(0, 2, 1, 3, 4).reshape(b * h, nh, w, d)
            o = ops.gated_attention(rows(q), rows(k), rows(v), bias=mask_b[None], scale=self.scale)
            o = o.reshape(b, h, nh, w, d).permute(0, 3, 2, 1, 4).reshape(b * w, nh, h, d)

            # then along H inside each column: batch (b, w), sequence h
            def cols(t):
                return t.permute(0, 3, 1, 2, 4).reshape(b * w, nh, h, d)
            o = ops.gated_attention(cols(q), cols(k), o, bias=mask_a[None], scale=self.scale)
            o = o.reshape(b, w, nh, h, d).permute(0, 3, 1, 2, 4)  # (b h w n d)
        else:
            o = ops.gated_attention(q.reshape(b, nh, h * w, d), k.reshape(b, nh, h * w, d),
                                    v.reshape(b, nh, h * w, d), bias=mask_a[None], scale=self.scale)
            o = o.reshape(b, nh, h, w, d).permute(0, 2, 3, 1, 4)
        return self.out_proj(o.reshape(b, h, w, c) + lepe)


class FFN(nn.Module):
    """fc1 -> GELU -> (+ depthwise 3x3 of itself) -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden, 3)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = F.gelu(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class RMTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, decomposed: bool, layerscale: float | None):
        super().__init__()
        self.pos = DWConv(dim, 3)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaSA(dim, num_heads, decomposed)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FFN(dim, ffn_dim)
        if layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layerscale))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layerscale))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, rel):
        x = x + self.pos(x)
        a = self.attn(self.norm1(x), rel)
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        f = self.ffn(self.norm2(x))
        return x + (f if self.gamma_2 is None else self.gamma_2 * f)


def conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)]


class RMTStage(nn.Module):
    def __init__(self, dim: int, out_dim: int | None, depth: int, num_heads: int, init_value: float,
                 heads_range: float, ffn_dim: int, decomposed: bool, layerscale: float | None,
                 resolution: tuple[int, int]):
        super().__init__()
        self.relpos = RelPos2d(dim, num_heads, init_value, heads_range, decomposed, resolution)
        self.blocks = nn.ModuleList(RMTBlock(dim, num_heads, ffn_dim, decomposed, layerscale) for _ in range(depth))
        self.downsample = nn.Sequential(*conv_bn(dim, out_dim, 2)) if out_dim else None

    def forward(self, x):  # (b h w c)
        rel = self.relpos(x.shape[1], x.shape[2])
        for blk in self.blocks:
            x = blk(x, rel)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


@dataclass(frozen=True)
class RMTConfig:
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    heads_ranges: tuple[float, ...]
    mlp_ratios: tuple[float, ...]
    decomposed: tuple[bool, ...]
    layerscale: tuple[float | None, ...] = (None, None, None, None)
    init_values: tuple[float, ...] = (2, 2, 2, 2)


class RMT(nn.Module):
    """RMT classifier on NCHW images; `img_size` is the resolution the tables are frozen for."""

    def __init__(self, cfg: RMTConfig, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3,
                 projection: int = 1024):
        super().__init__()
        d0 = cfg.dims[0]
        self.patch_embed = nn.Sequential(
            *conv_bn(in_chans, d0 // 2, 2), nn.GELU(), *conv_bn(d0 // 2, d0 // 2, 1), nn.GELU(),
            *conv_bn(d0 // 2, d0, 2), nn.GELU(), *conv_bn(d0, d0, 1))
        res = img_size // 4
        self.stages = nn.ModuleList()
        for i, dim in enumerate(cfg.dims):
            self.stages.append(RMTStage(
                dim, cfg.dims[i + 1] if i + 1 < len(cfg.dims) else None, cfg.depths[i], cfg.heads[i],
                cfg.init_values[i], cfg.heads_ranges[i], int(cfg.mlp_ratios[i] * dim), cfg.decomposed[i],
                cfg.layerscale[i], (res, res)))
            res = (res - 1) // 2 + 1
        self.proj = nn.Linear(cfg.dims[-1], projection)
        self.norm = nn.BatchNorm2d(projection)
        self.head = nn.Linear(projection, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        for stage in self.stages:
            x = stage(x)
        x = self.norm(self.proj(x).permute(0, 3, 1, 2))
        return F.silu(x).mean((2, 3))

    def forward(self, x):
        return self.head(self.forward_features(x))


RMT_CONFIGS = {
    # the paper's RMT-T/S/B/L are the authors' RMT_T3 / RMT_S / RMT_M2 / RMT_L6
    "t": RMTConfig((64, 128, 256, 512), (2, 2, 8, 2), (4, 4, 8, 16), (4, 4, 6, 6), (3, 3, 3, 3),
                   (True, True, False, False)),
    "s": RMTConfig((64, 128, 256, 512), (3, 4, 18, 4), (4, 4, 8, 16), (4, 4, 6, 6), (4, 4, 3, 3),
                   (True, True, True, False)),
    "b": RMTConfig((80, 160, 320, 512), (4, 8, 25, 8), (5, 5, 10, 16), (5, 5, 6, 6), (4, 4, 3, 3),
                   (True, True, True, False), layerscale=(None, None, 1e-6, 1e-6)),
    "l": RMTConfig((112, 224, 448, 640), (4, 8, 25, 8), (7, 7, 14, 20), (6, 6, 6, 6), (4, 4, 3, 3),
                   (True, True, True, False), layerscale=(None, None, 1e-6, 1e-6)),
    # test-sized: same structure (decomposed early, full last), two blocks per stage at most
    "tiny": RMTConfig((16, 32, 48, 64), (1, 1, 2, 1), (2, 2, 4, 4), (4, 4, 6, 6), (2, 2, 2, 2),
                      (True, True, False, False)),
}


def _rmt(size: str, **kw) -> RMT:
    return RMT(RMT_CONFIGS[size], **kw)


@register_model
def rmt_tiny(**kw) -> RMT:
    """Test-sized RMT (same block structure as RMT-T)."""
    kw.setdefault("projection", 128)
    return _rmt("tiny", **kw)


@register_model
def rmt_t(**kw) -> RMT:
    return _rmt("t", **kw)


@register_model
def rmt_s(**kw) -> RMT:
    return _rmt("s", **kw)


@register_model
def rmt_b(**kw) -> RMT:
    return _rmt("b", **kw)


@register_model
def rmt_l(**kw) -> RMT:
    return _rmt("l", **kw)
