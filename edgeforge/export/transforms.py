"""Deploy transforms: exact, idempotent model surgery applied before export.

Each transform is a small function `fn(model, example_inputs) -> int` registered by name (the
number it returns is how many sites it changed). Recipes list them in `export.transforms`. The
exporter runs them in order and checks each one: outputs before == outputs after (see
`apply_transforms`). A family-specific transform lives beside its model and registers itself
with `@register_transform("name")`; the generic `reparameterize` calls `reparameterize()` on
every module that has one (timm style), so a block owns its own surgery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from edgeforge.errors import BadInput, CheckFailed

TransformFn = Callable[[nn.Module, tuple], int]
_TRANSFORMS: dict[str, TransformFn] = {}


def register_transform(name: str):
    def wrap(fn: TransformFn) -> TransformFn:
        if name in _TRANSFORMS and _TRANSFORMS[name] is not fn:
            raise ValueError(f"deploy transform {name!r} registered twice")
        _TRANSFORMS[name] = fn
        return fn

    return wrap


def available_transforms() -> list[str]:
    import edgeforge.models  # families register their transforms on import

    edgeforge.models._load_all()
    return sorted(_TRANSFORMS)


def get_transform(name: str) -> TransformFn:
    known = available_transforms()
    if name not in known:
        raise BadInput(f"unknown deploy transform {name!r}; known: {', '.join(known)}")
    return _TRANSFORMS[name]


@dataclass
class TransformRecord:
    name: str
    changed: int
    max_abs_err: float
    rel_err: float
    extra: dict = field(default_factory=dict)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return []


@torch.no_grad()
def apply_transforms(model: nn.Module, names: list[str], example_inputs: tuple,
                     tol: float = 1e-5, floor: float = 1.0) -> list[TransformRecord]:
    """Apply the named transforms in order; each must leave the outputs unchanged.

    "Unchanged" is relative to the output scale: max|after-before| <= tol * max(max|before|, floor),
    since folding reorders float arithmetic (exact equality is not achievable).
    """
    return apply_transforms_with_outputs(model, names, example_inputs, tol, floor)[0]


@torch.no_grad()
def apply_transforms_with_outputs(model: nn.Module, names: list[str], example_inputs: tuple,
                                  tol: float = 1e-5, floor: float = 1.0
                                  ) -> tuple[list[TransformRecord], list[torch.Tensor]]:
    """`apply_transforms`, also returning the final outputs (so callers need not run the model again)."""
    records = []
    model.eval()
    before = [t.clone() for t in _flatten(model(*example_inputs))]
    for name in names:
        fn = get_transform(name)
        changed = int(fn(model, example_inputs) or 0)
        model.eval()
        after = _flatten(model(*example_inputs))
        err = max((float((a - b).abs().max()) for a, b in zip(after, before)), default=0.0)
        scale = max((float(b.abs().max()) for b in before), default=0.0)
        rel = err / max(scale, floor)
        records.append(TransformRecord(name, changed, err, rel))
        if rel > tol:
            raise CheckFailed(f"deploy transform {name!r} changed the outputs: max abs err {err:.3g} "
                              f"(relative {rel:.3g} > {tol:g}); it is not exact for this model")
        # Each transform is compared with the model just before it, so an error is pinned on one.
        before = [t.clone() for t in after]
    return records, before


# ---------------------------------------------------------------------------- generic transforms
@register_transform("reparameterize")
def reparameterize(model: nn.Module, example_inputs: tuple) -> int:
    """Call `reparameterize()` on every module that defines it (branch folding etc.)."""
    n = 0
    for m in list(model.modules()):
        if m is not model and callable(getattr(m, "reparameterize", None)):
            m.reparameterize()
            n += 1
    return n


@register_transform("materialize_attention_bias")
def materialize_attention_bias(model: nn.Module, example_inputs: tuple) -> int:
    """Replace `attention_biases[:, attention_bias_idxs]` (a Gather over a parameter) by a constant.

    timm's EfficientFormer V1/V2 attention gathers its bias table by an index buffer on every
    traced call; constant folding does not remove it and TensorRT cannot calibrate constants that
    flow through a Gather. After this, the graph holds one Add of a constant.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "attention_biases") and hasattr(m, "attention_bias_idxs") and callable(
                getattr(m, "get_attention_biases", None)):
            if getattr(m, "_edgeforge_bias_materialized", False):
                continue  # idempotent
            bias = m.attention_biases.detach()[:, m.attention_bias_idxs].clone()
            m.register_buffer("attention_bias_materialized", bias, persistent=False)
            m.get_attention_biases = (lambda mod: (lambda device=None: mod.attention_bias_materialized))(m)
            m._edgeforge_bias_materialized = True
            n += 1
    return n


@register_transform("fold_bn")
def fold_bn(model: nn.Module, example_inputs: tuple) -> int:
    """Fold each BatchNorm into the Conv/Linear that feeds it alone (found on an FX trace).

    Works on the original module tree: the conv gets the folded weights and the BN becomes
    Identity, so names and the rest of the model stay as they were. Models FX cannot trace are
    left unchanged (the ONNX exporter still folds Conv+BN in eval mode).
    """
    import torch.fx as fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models keep their BN; reported as 0 folded
        return 0
    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not bn.track_running_stats:
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv = model.get_submodule(prev.target)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(conv, model.get_submodule(node.target))
        elif isinstance(conv, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(conv, model.get_submodule(node.target))
        else:
            continue
        _set_submodule(model, prev.target, fused)
        _set_submodule(model, node.target, nn.Identity())
        n += 1
    return n


def _set_submodule(model: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
