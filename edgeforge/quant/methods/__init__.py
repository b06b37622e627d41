"""Quantization methods, one file each, registered by name (as models are in `edgeforge.models`).

The engine (`engine.quantize_onnx`) is a pipeline; a method plugs into it at these points:
- `rewrite(ctx)`: exact graph rewrites before calibration that make the model easier to quantize
  without changing its function (repquant folds per-channel post-LayerNorm ranges into the
  LayerNorm affine and the next linear layer);
- `activation_observer(scheme)` (default `observer`): the range observer of each activation
  (minmax, percentile, mse, entropy);
- `weight_params(w, bits, axis)`: each weight's quantizer;
- `refine(ctx)`: a search over the calibrated quantizers (qhyvit's loss-weighted scale search);
- `weight_rounding`: "nearest" or "gptq" (quant/gptq.py), after refine.
The torch simulation (`torch_sim.quantize`) calls `rewrite_torch` (the same rewrite on the fx
graph) and `apply_torch` (take over what refine chose on the engine), so it places, calibrates
and computes what the deployed QDQ model does.
`engine = "ort"` hands the whole run to ONNX Runtime's own quantize_static instead (the baseline).

The CLI's `--method` choices, the target profiles' `quantizers` check and the benchmarks all read
`names()`, so a method is added by adding a file here. Importing this package must stay free of
torch (the CLI's --help and the agent import it): methods import torch inside their hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeforge.registry import import_submodules

_REGISTRY: dict[str, type["Method"]] = {}
_loaded = False


@dataclass
class Context:
    """What a method's hooks see of one quantize run; `info` is written to quant.json."""

    model: Any  # onnx.ModelProto, after the engine's exact passes (rewrite may change it)
    x: np.ndarray  # calibration samples (N, ...)
    scheme: Any  # quant.scheme.Scheme
    console: Any = None
    show_progress: bool = True
    # a zero-argument callable returning the artifact's FP32 torch model (recipe + weights; the
    # model the ONNX was exported from, whose module paths `placement.module_path` recovers from
    # ONNX node names), or None (an imported ONNX model): methods that need gradients use it
    torch_model: Any = None
    plan: Any = None  # placement.Plan, from calibration on
    act_q: dict = field(default_factory=dict)  # tensor -> QParams
    weight_q: dict = field(default_factory=dict)  # initializer -> QParams
    # tensor -> quant.observers.Observer after calibration (its histogram gives any other
    # observer's range without a second pass over the samples)
    observers: dict = field(default_factory=dict)
    # weight_q -> {layer: bias shift} as the engine applies when it writes the model (bias
    # correction); searches that compare candidate models build them with it. None: no correction
    bias_shifts: Any = None
    # what the model outputs: "logits", "embedding" (a backbone: losses compare vectors, not
    # distributions) or "auto" (logits when the output is (N, C > 1))
    output_kind: str = "auto"
    # the FP32 model's output on `x`, once computed (the model-output checks share it)
    fp32_output: Any = None
    info: dict = field(default_factory=dict)


class Method:
    """A quantization method: the defaults are plain calibration with `observer`."""

    name: str = ""
    summary: str = ""
    observer: str = "minmax"
    engine: str = "edgeforge"  # "ort": ONNX Runtime's quantize_static runs the whole method
    # the name target profiles list under `quantization.quantizers` (mse is OMSE there)
    profile_name: str | None = None
    # "nearest" or "gptq" (quant/gptq.py: codes that minimise each linear layer's output error)
    weight_rounding: str = "nearest"

    def activation_observer(self, scheme) -> str:
        """The range observer of activations under `scheme` (the engine and the simulation ask this)."""
        return self.observer

    def rewrite(self, ctx: Context) -> None:
        """Exact graph rewrites before calibration (ctx.model is replaced in place)."""

    def rewrite_torch(self, gm, x, scheme) -> dict:
        """The same rewrites on the torch simulation's fx graph (parameters change in place);
        returns {fx node name: QParams} for activation quantizers the rewrite fixes."""
        return {}

    def apply_torch(self, sim_acts: dict, sim_weights: dict, scheme, params) -> None:
        """After the simulation calibrated: take over what `refine` chose on the ONNX engine
        (`params`: what refine left in ctx.info["_sim_params"], or None when the simulation runs
        on its own). `sim_acts`: fx node name -> ActQuant; `sim_weights`: module path -> QuantWeight."""

    def weight_params(self, w: np.ndarray, bits: int, axis: int | None):
        """Per-channel symmetric weights: minmax at 8 bits, the MSE clip search below (minmax spends
        the few levels of a narrow grid on outliers)."""
        from edgeforge.quant.observers import weight_params

        return weight_params(w, bits, "mse" if bits < 8 else "minmax", axis)

    def refine(self, ctx: Context) -> None:
        """Adjust the calibrated quantizers (ctx.act_q / ctx.weight_q) before the QDQ model is written."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register `cls` under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} registered twice ({_REGISTRY[cls.name].__module__} and {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_submodules(__name__, __path__)


# the order users see in --help: the plain observers first, the ViT methods, then the baseline
_ORDER = ("minmax", "percentile", "mse", "entropy", "qhyvit", "repquant", "ort")


def names() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_REGISTRY, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)))


def get(name: str) -> Method:
    """The method registered as `name` (ValueError listing the accepted names otherwise)."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantization method {name!r}; accepted: {', '.join(names())}")
    return _REGISTRY[name]()


def profile_name(name: str) -> str:
    """The name a target profile uses for method `name`."""
    _load_all()
    cls = _REGISTRY.get(name)
    return (cls.profile_name or cls.name) if cls else name
