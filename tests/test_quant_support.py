"""Small real models and artifacts for the quantization tests (imported by test_quant_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeforge.artifacts import Manifest

INPUT = {"shape": [3, 32, 32], "layout": "NCHW", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
         "name": "input"}


class TinyHybrid(nn.Module):
    """Conv stem (BN, ReLU), pooling token mixer with residual, conv MLP with GELU, then an
    attention block (q@k^T, softmax, attn@v, LayerNorm, Linear) and a linear head: every pattern
    the placement rules care about, at toy size."""

    def __init__(self, classes: int = 10, dim: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.ReLU(),
                                  nn.Conv2d(dim, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.ReLU())
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ls1 = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.fc1 = nn.Conv2d(dim, dim * 2, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(dim * 2, dim, 1)
        self.ls2 = nn.Parameter(torch.full((dim, 1, 1), 0.7))
        self.down = nn.Conv2d(dim, dim * 2, 3, 2, 1)
        d = dim * 2
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = 2
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.ls1 * (self.pool(x) - x)
        x = x + self.ls2 * self.fc2(self.act(self.fc1(x)))
        x = self.down(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(self.norm(t)).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(y)
        return self.head(t.mean(1))


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyHybrid()
    # non-trivial BN statistics so folding matters
    for bn in (m.stem[1], m.stem[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def export_onnx(model: nn.Module, path: Path, shape=(1, 3, 32, 32)) -> Path:
    from edgeforge.export.transforms import apply_transforms

    x = torch.randn(*shape)
    apply_transforms(model, ["fold_bn"], (x,))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"])
    return path


def make_artifact(root: Path, model: nn.Module | None = None, input_spec: dict = INPUT,
                  calib: str = "natural") -> Path:
    """An artifact directory as `edgeforge export` leaves it: fp32/model.onnx + manifest export step."""
    model = model if model is not None else tiny_model()
    onnx_path = export_onnx(model, root / "fp32" / "model.onnx", (1, *input_spec["shape"]))
    Manifest(root).record("export", {"recipe": "tiny", "resolved_recipe": {
        "name": "tiny", "input": input_spec, "quant": {"method": "minmax", "calib": calib, "bits": "w8a8",
                                                       "num_samples": 8}}}, files=[onnx_path])
    return root


def calib_x(n: int = 8, shape=(3, 32, 32)) -> np.ndarray:
    from edgeforge.data.calib import materialize
    from edgeforge.data.preprocess import Preprocess

    pre = Preprocess(shape[0], shape[1], shape[2], tuple(INPUT["mean"]), tuple(INPUT["std"]))
    return materialize("natural", pre, n).x
