"""TRecViT: a recurrent video transformer (Patraucean et al. 2024; google-deepmind/trecvit).

Clip model, video (B, T, 3, H, W) -> logits:
  1. tokenizer: per-frame 16x16 patches (tube length 1), learned spatial position embedding,
     a cls token prepended per frame -> (B, T, N, C), N = 1 + H*W/256;
  2. `depth` layers, each a Griffin recurrent residual block over time for every token
     position, `x + RecurrentBlock(RMSNorm(x))` on (B*N, T, C) (RG-LRU width 2C, causal conv of
     width 4, the scan through `edgeforge.ops.linear_scan`), then a ViT block over space within
     each frame on (B*T, N, C);
  3. final LayerNorm; decoder: per-frame cls token -> Dense(rep) + tanh, mean over time, head.

Everything is causal in time, which gives the streaming step model `TRecViTStep`: one frame plus
the recurrent state in, the logits of the clip seen so far and the new state out. Running it
frame by frame equals the clip model (tests check 16 frames).

Inferred from the authors' JAX code: GELU is the tanh approximation (flax's default), the
recurrent residual block has no MLP of its own (`use_mlp=False`; the ViT block has one), and
RMSNorm uses a plain scale. Sizes follow ViT (S: 384/12/6, B: 768/12/12), rep size 3072 for
both, Kinetics-400 head by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from edgeforge.models import register_model
from edgeforge.models.layers.patch_embed import PatchEmbed
from edgeforge.models.layers.rg_lru import RecurrentBlock
from edgeforge.models.layers.rms_norm import RMSNorm
from edgeforge.models.layers.vit_block import ViTBlock


class TemporalResidual(nn.Module):
    """`x + RecurrentBlock(RMSNorm(x))` over time, on (B*N, T, C)."""

    def __init__(self, dim: int, lru_width: int, heads: int, conv_width: int, min_rad: float):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.block = RecurrentBlock(dim, lru_width, heads, conv_width, min_rad)

    def forward(self, x):
        return x + self.block(self.norm(x))

    def step(self, x, h, window, is_first):
        y, h, window = self.block.step(self.norm(x), h, window, is_first)
        return x + y, h, window


class TRecViTLayer(nn.Module):
    """One layer's weights: `temporal` runs over time per token, `spatial` over tokens per frame.
    The clip and step models apply them in their own layouts, so the layer has no forward."""

    def __init__(self, dim, heads, mlp_dim, lru_width, conv_width, min_rad):
        super().__init__()
        self.temporal = TemporalResidual(dim, lru_width, heads, conv_width, min_rad)
        self.spatial = ViTBlock(dim, heads, mlp_dim / dim, act=partial(nn.GELU, approximate="tanh"))


@dataclass(frozen=True)
class TRecViTConfig:
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    rep_size: int = 3072
    patch: int = 16
    state_multiplier: int = 2
    conv_width: int = 4
    min_rad: float = 0.5


class TRecViT(nn.Module):
    """Clip model: (B, T, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, cfg: TRecViTConfig, num_classes: int = 400, img_size: int = 224, in_chans: int = 3):
        super().__init__()
        self.cfg = cfg
        self.img_size, self.in_chans = img_size, in_chans
        self.num_patches = (img_size // cfg.patch) ** 2
        self.num_tokens = self.num_patches + 1
        self.lru_width = cfg.state_multiplier * cfg.dim
        self.patch_embed = PatchEmbed(in_chans, cfg.dim, cfg.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, cfg.dim) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.layers = nn.ModuleList(
            TRecViTLayer(cfg.dim, cfg.heads, cfg.mlp_dim, self.lru_width, cfg.conv_width, cfg.min_rad)
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.pre_logits = nn.Linear(cfg.dim, cfg.rep_size)
        self.head = nn.Linear(cfg.rep_size, num_classes)

    def tokenize(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, C, H, W) frames -> (F, N, D) tokens with the cls token first."""
        x = self.patch_embed(frames) + self.pos_embed
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame representations tanh(Dense(cls)): (B, T, rep)."""
        b, t = video.shape[:2]
        x = self.tokenize(video.flatten(0, 1))  # (B*T, N, D)
        n, d = x.shape[1], x.shape[2]
        for layer in self.layers:
            x = x.reshape(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)
            x = layer.temporal(x)
            x = x.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
            x = layer.spatial(x)
        cls = self.norm(x[:, 0])
        return torch.tanh(self.pre_logits(cls)).reshape(b, t, -1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.frame_features(video).mean(1))


class TRecViTStep(nn.Module):
    """Streaming step: one frame + state -> (logits, frame features, new state).

    State tensors (batch first, all float32):
      lru_state   (B, depth, N, lru_width)      RG-LRU hidden state per layer and token
      conv_state  (B, depth, k-1, N, lru_width) the temporal conv's last k-1 inputs, oldest first
      pool_sum    (B, rep)                      sum of the per-frame representations so far
      frames_seen (B, 1)                        frames consumed so far (0 starts a stream)
    `initial_state(batch)` gives the start of a stream (all zeros). The logits are those of the
    clip model over every frame seen so far, this one included.
    """

    export_output_names = ["logits", "features", "lru_state_out", "conv_state_out", "pool_sum_out",
                           "frames_seen_out"]

    def __init__(self, clip: TRecViT):
        super().__init__()
        self.clip = clip

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The state at the start of a stream: all zeros."""
        c = self.clip
        return {
            "lru_state": torch.zeros(batch, c.cfg.depth, c.num_tokens, c.lru_width, device=device),
            "conv_state": torch.zeros(batch, c.cfg.depth, c.cfg.conv_width - 1, c.num_tokens, c.lru_width,
                                      device=device),
            "pool_sum": torch.zeros(batch, c.cfg.rep_size, device=device),
            "frames_seen": torch.zeros(batch, 1, device=device),
        }

    def export_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        """Example inputs for export and parity: a frame and a mid-stream state (3 frames seen),
        so that the recurrence itself (not only the start of a stream) is checked."""
        g = torch.Generator().manual_seed(1234)  # CPU tensors even under a meta device context
        c = self.clip

        def rand(shape, scale):
            return (torch.rand(shape, generator=g, device="cpu") * 2 - 1) * scale

        shapes = {k: v.shape for k, v in self.initial_state(batch, device="meta").items()}
        state = {
            "lru_state": rand(shapes["lru_state"], 1.0),
            "conv_state": rand(shapes["conv_state"], 1.0),
            "pool_sum": rand(shapes["pool_sum"], 3.0),  # the sum of 3 tanh features
            "frames_seen": torch.full((batch, 1), 3.0, device="cpu"),
        }
        frame = rand((batch, c.in_chans, c.img_size, c.img_size), 2.0)
        return {"frame": frame, **state}

    def forward(self, frame, lru_state, conv_state, pool_sum, frames_seen):
        c = self.clip
        b = frame.shape[0]
        x = c.tokenize(frame)  # (B, N, D)
        n, d = x.shape[1], x.shape[2]
        is_first = (frames_seen <= 0).to(x.dtype).repeat_interleave(n, dim=0)  # (B*N, 1)
        new_h, new_win = [], []
        for i, layer in enumerate(c.layers):
            h = lru_state[:, i].reshape(b * n, -1)
            win = conv_state[:, i].transpose(1, 2).reshape(b * n, c.cfg.conv_width - 1, -1)
            y, h, win = layer.temporal.step(x.reshape(b * n, d), h, win, is_first)
            new_h.append(h.reshape(b, n, -1))
            new_win.append(win.reshape(b, n, c.cfg.conv_width - 1, -1).transpose(1, 2))
            x = layer.spatial(y.reshape(b, n, d))
        feat = torch.tanh(c.pre_logits(c.norm(x[:, 0])))
        pool_sum = pool_sum + feat
        frames_seen = frames_seen + 1
        logits = c.head(pool_sum / frames_seen)
        return logits, feat, torch.stack(new_h, 1), torch.stack(new_win, 1), pool_sum, frames_seen


TRECVIT_CONFIGS = {
    "tiny": TRecViTConfig(dim=64, depth=2, heads=4, mlp_dim=128, rep_size=64),  # test-sized
    "s": TRecViTConfig(dim=384, depth=12, heads=6, mlp_dim=1536),
    "b": TRecViTConfig(dim=768, depth=12, heads=12, mlp_dim=3072),
}


def _clip(size: str, **kw) -> TRecViT:
    return TRecViT(TRECVIT_CONFIGS[size], **kw)


@register_model
def trecvit_tiny(**kw) -> TRecViT:
    """Test-sized clip model (dim 64, 2 layers); use with a small img_size (e.g. 32)."""
    kw.setdefault("num_classes", 10)
    return _clip("tiny", **kw)


@register_model
def trecvit_s(**kw) -> TRecViT:
    return _clip("s", **kw)


@register_model
def trecvit_b(**kw) -> TRecViT:
    return _clip("b", **kw)


@register_model
def trecvit_step_tiny(**kw) -> TRecViTStep:
    """Streaming step model of `trecvit_tiny` (same weights layout: `step.clip`)."""
    return TRecViTStep(trecvit_tiny(**kw))


@register_model
def trecvit_step_s(**kw) -> TRecViTStep:
    return TRecViTStep(trecvit_s(**kw))


@register_model
def trecvit_step_b(**kw) -> TRecViTStep:
    return TRecViTStep(trecvit_b(**kw))
