"""Quantize any torch.nn.Module: torch.fx capture, quantizer placement, calibration, simulation.

`quantize(model, calib, ...)` returns a `QuantizedModule`: the model with fake-quantizers where
a runtime would quantize (the same rules as the ONNX placement, `placement.py`):
- inputs of Conv/Linear modules and of matmuls (q@k^T and attn@v: both operands, so softmax
  outputs too), weights per-channel;
- Conv outputs (after a following ReLU / BatchNorm / per-channel layer-scale multiply, which
  the ONNX graph folds), residual adds, pooling and concatenation when their output reaches a
  quantized op;
- optionally LayerNorm inputs; never shape/index ops (a tensor reached through view / reshape /
  permute / transpose / flatten is quantized at its source).
BatchNorm is folded into the conv before it first. Bits below 8 are simulated exactly
(narrower integer range). Softmax outputs may use a log2 / log-sqrt2 quantizer in simulation
(`softmax_quantizer`); those have no QuantizeLinear form, so QDQ export keeps uniform 8-bit.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeforge.quant.observers import Observer, observer_for
from edgeforge.quant.overflow import layer_for, make_safe, max_activation_code
from edgeforge.quant.quantizers import QParams, dequantize, fit_inside, log_params, quantize_bias
from edgeforge.quant.scheme import Scheme, convert_for_target, resolve

PASS_METHODS = {"view", "reshape", "permute", "transpose", "flatten", "contiguous", "squeeze", "unsqueeze"}
PASS_FUNCS = {torch.reshape, torch.permute, torch.transpose, torch.flatten, torch.squeeze, torch.unsqueeze}
MATMULS = {operator.matmul, torch.matmul, torch.bmm}
ADDS = {operator.add, torch.add}
CATS = {torch.cat, torch.concat}
POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.MaxPool2d)
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
FOLDABLE_AFTER = (nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout)
CLIP_FUNCS = (F.relu6, F.hardtanh)  # exported as Clip; ReLU6 / Hardtanh modules too


def _fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    if qp.kind != "uniform":
        delta = float(qp.scale)
        k = 2.0 if qp.kind == "logsqrt2" else 1.0
        xs = x.clamp_min(0) / delta
        q = torch.round(-k * torch.log2(xs.clamp_min(1e-30))).clamp_min(0)
        out = delta * torch.pow(2.0, -q / k)
        return torch.where((q > 2 ** qp.bits - 1) | (xs <= 0), torch.zeros_like(out), out)
    if qp.per_channel:
        return torch.fake_quantize_per_channel_affine(
            x, torch.as_tensor(qp.scale, dtype=torch.float32), torch.as_tensor(qp.zero_point, dtype=torch.int32),
            qp.axis, qp.qmin, qp.qmax)
    return torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)


class ActQuant(nn.Module):
    """Observes (mode 'observe'), fake-quantizes ('quant') or passes through ('off')."""

    def __init__(self, site: str, roles: set[str], method: str, percentile: float = 99.99):
        super().__init__()
        self.site, self.roles = site, set(roles)
        self.observer = Observer(method, percentile=percentile)
        self.qparams: QParams | None = None
        self.clip: tuple[float, float] | None = None  # a ReLU6/Hardtanh range the quantizer must fit in
        self.mode = "observe"

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or self.mode == "off":
            return x
        if self.mode == "observe":
            self.observer.update(x.detach().float().cpu().numpy())
            return x
        return _fake_quant(x, self.qparams)


class QuantWeight(nn.Module):
    """A Conv/Linear whose weight is fake-quantized per output channel; once its input's scale is
    known (`round_bias`), its bias is rounded to the int32 grid s_in * s_w, as in the QDQ model."""

    def __init__(self, inner: nn.Module, qp: QParams):
        super().__init__()
        self.inner, self.qparams, self.enabled = inner, qp, True
        self.register_buffer("wq", self._quantized(qp), persistent=False)
        self.bq: torch.Tensor | None = None
        self.bias_int: np.ndarray | None = None  # the int32 values the QDQ model stores
        self.correct_bias = True
        self.collecting = False  # during calibration: sum the inputs (mean input map)
        self.x_sum: torch.Tensor | None = None
        self.x_count = 0

    def _quantized(self, qp: QParams) -> torch.Tensor:
        w = self.inner.weight.detach()
        if qp.codes is not None:  # explicit codes (saturation-safe, GPTQ): the integers the QDQ model stores
            return torch.from_numpy(dequantize(qp.codes, qp)).to(w.dtype)
        return _fake_quant(w, qp)

    def set_qparams(self, qp: QParams) -> None:
        """Take another weight quantizer (a method's searched scales), after calibration."""
        self.qparams = qp
        self.wq = self._quantized(qp)

    # A parent that reads `self.conv.weight` in its own forward (or a tied layer) still finds the
    # float parameters: without these, swapping the layer for its QuantWeight broke that read
    # ('QuantWeight' object has no attribute 'weight').
    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def collect_input(self, x: torch.Tensor) -> None:
        """Add a calibration batch to the mean input map (for bias correction)."""
        s = x.detach().double().sum(dim=0, keepdim=True)
        self.x_sum = s if self.x_sum is None else self.x_sum + s
        self.x_count += x.shape[0]

    def bias_shift(self) -> np.ndarray | None:
        """The mean output shift its weight rounding causes (bias_correction.py), as the ONNX engine
        computes it from the same calibration samples."""
        if self.x_sum is None or self.inner.bias is None:
            return None
        from edgeforge.quant.bias_correction import layer_shift

        m = self.inner
        x_mean = (self.x_sum / self.x_count).cpu().numpy()
        dw = self.wq.double().cpu().numpy() - m.weight.detach().double().cpu().numpy()
        if isinstance(m, nn.Linear):
            return layer_shift(x_mean, dw, "linear", trans_b=True)
        if isinstance(m.padding, str) or getattr(m, "padding_mode", "zeros") != "zeros":
            return None
        return layer_shift(x_mean, dw, "conv", m.stride, m.padding, m.dilation, m.groups)

    def round_bias(self, input_scale: float) -> None:
        """Round the bias as the QDQ export does (`qdq.py`: int32, scale s_in * s_w, zero-point 0,
        less the bias correction)."""
        b = self.inner.bias
        if b is None:
            return
        bq, bscale = quantize_bias(b.detach().cpu().numpy(), input_scale, self.qparams.scale,
                                   self.bias_shift() if self.correct_bias else None)
        self.bias_int = bq
        # float32 product, as DequantizeLinear computes it
        self.bq = torch.from_numpy(bq.astype(np.float32) * bscale).to(b.dtype)

    def forward(self, x):
        if self.collecting:
            self.collect_input(x)
        w, b = (self.wq, self.inner.bias if self.bq is None else self.bq) if self.enabled else \
            (self.inner.weight, self.inner.bias)
        m = self.inner
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        return m._conv_forward(x, w, b)


@dataclass
class QuantizedModule:
    """The simulation: `model(x)` runs with every quantizer active."""

    model: fx.GraphModule
    scheme: Scheme
    method: str
    act_quantizers: dict[str, ActQuant] = field(default_factory=dict)
    weight_quantizers: dict[str, QParams] = field(default_factory=dict)
    kept_fp: list[str] = field(default_factory=list)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def set_enabled(self, enabled: bool) -> None:
        for q in self.act_quantizers.values():  # tensors a method left in float are not among them
            q.mode = "quant" if enabled else "off"
        for m in self.model.modules():
            if isinstance(m, QuantWeight):
                m.enabled = enabled

    def quantizers_json(self) -> dict:
        return {"activations": {k: {**q.qparams.to_json(), "roles": sorted(q.roles)}
                                for k, q in self.act_quantizers.items()},
                "weights": {k: qp.to_json() for k, qp in self.weight_quantizers.items()}}


# ----------------------------------------------------------------------------- capture + placement
def _single_cat(n: fx.Node) -> bool:
    # torch.cat of one tensor: the ONNX exporter/onnxslim drop it, so it is a pass-through here too
    return n.op == "call_function" and n.target in CATS and bool(n.args) and \
        isinstance(n.args[0], (list, tuple)) and len(n.args[0]) == 1


def _is_pass(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_method" and n.target in PASS_METHODS:
        return True
    if n.op == "call_function" and (n.target in PASS_FUNCS or _single_cat(n)):
        return True
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Identity, nn.Dropout, nn.Flatten))


def _pass_input(n: fx.Node):
    """The tensor a pass-through op forwards (its first argument; the one element of a 1-cat)."""
    a = n.args[0] if n.args else None
    return a[0] if _single_cat(n) else a


def _is_meta_read(u: fx.Node) -> bool:
    # x.shape / x.size() / x.dtype: reads no values (static in the export, where they fold away)
    return (u.op == "call_function" and u.target is getattr and len(u.args) > 1 and
            u.args[1] in ("shape", "dtype", "device")) or (u.op == "call_method" and u.target in ("size", "dim"))


def _value_users(n: fx.Node) -> list[fx.Node]:
    return [u for u in n.users if not _is_meta_read(u)]


def _source(gm: fx.GraphModule, n: fx.Node) -> fx.Node:
    while _is_pass(gm, n) and len(_value_users(n)) == 1 and isinstance(_pass_input(n), fx.Node):
        n = _pass_input(n)
    return n


def _is_const(gm, n) -> bool:
    if not isinstance(n, fx.Node):
        return True
    if n.op == "get_attr":
        return True
    if _is_pass(gm, n) and isinstance(_pass_input(n), fx.Node):
        return _is_const(gm, _pass_input(n))
    return False


def _fold_forward(gm: fx.GraphModule, n: fx.Node) -> fx.Node:
    """Walk past ops the ONNX graph folds into a Conv's output (ReLU, BN, layer-scale multiply)."""
    while len(_value_users(n)) == 1:
        u = _value_users(n)[0]
        if u.op == "call_module" and isinstance(gm.get_submodule(u.target), FOLDABLE_AFTER):
            n = u
        elif u.op == "call_function" and u.target in (F.relu, torch.relu, F.batch_norm):
            n = u
        elif _clip_bounds(gm, u) is not None:
            n = u  # Conv -> Clip (ReLU6): quantized once after it, as placement.plan does
        elif u.op == "call_function" and u.target in (operator.mul, torch.mul) and \
                any(_is_const(gm, a) for a in u.args if a is not n):
            n = u
        else:
            break
    return n


def _clip_bounds(gm: fx.GraphModule, n: fx.Node) -> tuple[float, float] | None:
    """[min, max] of a ReLU6 / Hardtanh node that contains 0 (the Clips placement folds), else None."""
    if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Hardtanh):
        m = gm.get_submodule(n.target)
        lo, hi = float(m.min_val), float(m.max_val)
    elif n.op == "call_function" and n.target is F.relu6:
        lo, hi = 0.0, 6.0
    elif n.op == "call_function" and n.target is F.hardtanh:
        args = list(n.args[1:3])
        lo = float(n.kwargs.get("min_val", args[0] if args else -1.0))
        hi = float(n.kwargs.get("max_val", args[1] if len(args) > 1 else 1.0))
    else:
        return None
    return (lo, hi) if lo <= 0.0 <= hi else None


def _module_name(n: fx.Node) -> str:
    return str(n.target) if n.op == "call_module" else n.name


def _users_forward(gm, n: fx.Node) -> list[fx.Node]:
    out = []
    for u in n.users:
        out.extend(_users_forward(gm, u) if _is_pass(gm, u) else [u])
    return out


def _permute_dims(n: fx.Node) -> tuple | None:
    is_permute = (n.op == "call_method" and n.target == "permute") or \
        (n.op == "call_function" and n.target is torch.permute)
    if not is_permute or len(n.args) < 2:
        return None
    dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else n.args[1:]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def cancel_inverse_permutes(gm: fx.GraphModule) -> int:
    """Remove permute(permute(x, p), p^-1) pairs, as onnxslim removes the Transpose pairs they
    export to: the placement must see the graph the ONNX engine sees (a quantizer walks back to
    a tensor's source only through a shape op with a single consumer)."""
    n_removed = 0
    for n in list(gm.graph.nodes):
        outer = _permute_dims(n)
        inner_node = n.args[0] if outer and isinstance(n.args[0], fx.Node) else None
        inner = _permute_dims(inner_node) if inner_node is not None else None
        if inner is None or len(inner) != len(outer) or any(inner[outer[k]] != k for k in range(len(outer))):
            continue
        n.replace_all_uses_with(inner_node.args[0])
        gm.graph.erase_node(n)
        if not inner_node.users:
            gm.graph.erase_node(inner_node)
        n_removed += 1
    if n_removed:
        gm.recompile()
    return n_removed


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps modules marked `fx_leaf = True` as single calls: modules that
    compute constants from feature-map sizes (e.g. RMT's decay/rotary tables, frozen at export),
    which a symbolic trace cannot evaluate and which hold nothing to quantize."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return bool(getattr(m, "fx_leaf", False)) or super().is_leaf_module(m, qualname)


def place(gm: fx.GraphModule, keep_fp: list[str] = (), norm_inputs: bool = False
          ) -> tuple[dict[fx.Node, set[str]], list[str], list[str]]:
    """Sites (node -> roles), quantized weighted modules, kept-fp layers."""
    from edgeforge.errors import BadInput

    sites: dict[fx.Node, set[str]] = {}
    weighted, kept, compute = [], [], set()
    unmatched = set(keep_fp)

    def add(n, role):
        if isinstance(n, fx.Node) and not _is_const(gm, n):
            sites.setdefault(n, set()).add(role)

    for n in list(gm.graph.nodes):
        is_w = n.op == "call_module" and isinstance(gm.get_submodule(n.target), WEIGHTED)
        is_mm = n.op == "call_function" and n.target in MATMULS
        if not (is_w or is_mm):
            continue
        name = _module_name(n)
        hits = [p for p in keep_fp if name == p or name.startswith(p + ".")]
        if hits:
            kept.append(name)
            unmatched -= set(hits)
            continue
        compute.add(n)
        for a in (n.args[:1] if is_w else n.args[:2]):
            add(_source(gm, a), "input")
        if is_w:
            weighted.append(n.target)
            if isinstance(gm.get_submodule(n.target), (nn.Conv1d, nn.Conv2d)):
                add(_fold_forward(gm, n), "output")
    if unmatched:
        raise BadInput(f"--keep-fp {', '.join(sorted(unmatched))}: no Conv/Linear/matmul module matches "
                       f"(module paths such as {', '.join(weighted[:4])})")
    changed = True
    while changed:
        changed = False
        for n in gm.graph.nodes:
            if n in compute:
                continue
            is_add = n.op == "call_function" and n.target in ADDS and len(n.args) >= 2 and \
                all(isinstance(a, fx.Node) and not _is_const(gm, a) for a in n.args[:2])
            is_pool = (n.op == "call_module" and isinstance(gm.get_submodule(n.target), POOLS)) or \
                (n.op == "call_function" and n.target in (F.avg_pool2d, F.adaptive_avg_pool2d, F.max_pool2d))
            # Concat, as in the ONNX placement: int8 in, int8 out when its output reaches a
            # quantized op (each input keeps its own scale until the concat requantizes it).
            is_cat = n.op == "call_function" and n.target in CATS and n.args and not _single_cat(n) and \
                isinstance(n.args[0], (list, tuple)) and all(isinstance(a, fx.Node) and not _is_const(gm, a)
                                                             for a in n.args[0])
            if not (is_add or is_pool or is_cat):
                continue
            if not any(u in compute for u in _users_forward(gm, n)):
                continue
            ins = list(n.args[0]) if is_cat else (n.args[:2] if is_add else n.args[:1])
            for a in ins:
                add(_source(gm, a), "chain")
            add(n, "chain")
            compute.add(n)
            changed = True
    if norm_inputs:
        for n in gm.graph.nodes:
            if (n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.LayerNorm)) or \
                    (n.op == "call_function" and n.target is F.layer_norm):
                add(_source(gm, n.args[0]), "norm")
    return sites, weighted, kept


def _quantize_biases(gm: fx.GraphModule) -> None:
    """Give every quantized Conv/Linear with a per-tensor uniform input quantizer the int32 bias of
    the QDQ model (the input's quantizer is found behind shape ops, as `place` put it)."""
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(gm.get_submodule(n.target), QuantWeight):
            continue
        a = _source(gm, n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        aq = gm.get_submodule(a.target) if isinstance(a, fx.Node) and a.op == "call_module" else None
        if isinstance(aq, ActQuant) and aq.qparams is not None and aq.qparams.kind == "uniform" \
                and not aq.qparams.per_channel:
            gm.get_submodule(n.target).round_bias(float(aq.qparams.scale))


def _is_softmax(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target == "softmax") or \
        (n.op == "call_function" and n.target in (F.softmax, torch.softmax)) or \
        (n.op == "call_module" and n.target.endswith("softmax"))


# ----------------------------------------------------------------------------- entry point
@torch.no_grad()
def quantize(model: nn.Module, calib, method: str = "minmax", bits: str = "w8a8", target: str | None = None,
             keep_fp: list[str] = (), norm_inputs: bool = False, softmax_quantizer: str = "uniform",
             example_inputs: tuple | None = None, input_spec=None, num_samples: int | None = None,
             batch: int = 8, act_scheme: str = "auto", fold_bn: bool = True, console=None,
             show_progress: bool = False, int8_accumulation: str | None = None,
             overflow_fix: str = "auto", bias_correction: bool = True, method_params=None) -> QuantizedModule:
    """Quantize a torch model with a calibration set.

    `calib`: an array/tensor of preprocessed samples (N, ...), or a calibration-set name/path
    (then `input_spec`, a recipe InputSpec, says how to preprocess). Returns the simulation.
    """
    from edgeforge.errors import BadInput
    from edgeforge.quant.calibrate import progress

    if isinstance(calib, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(np.asarray(calib), dtype=torch.float32)
    else:
        if input_spec is None:
            raise BadInput("quantize(model, calib=NAME) needs input_spec (a recipe InputSpec) to preprocess")
        from edgeforge.data.calib import load_calib

        x = torch.from_numpy(load_calib(calib, input_spec, num_samples).x)
    if num_samples:
        x = x[:num_samples]
    scheme = resolve(bits, target, method, act_scheme, int8_accumulation, overflow_fix)
    from edgeforge.quant import methods as qmethods

    meth = qmethods.get(method)
    if meth.engine != "edgeforge":
        raise BadInput(f"method {method!r} has no torch simulation (it is run by {meth.engine})")
    model = copy.deepcopy(model).eval()
    if fold_bn:
        from edgeforge.export.transforms import apply_transforms

        apply_transforms(model, ["fold_bn"], example_inputs or (x[:1],), tol=1e-4)
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - report what failed, with the way out
        raise BadInput(f"torch.fx cannot capture {type(model).__name__} ({type(e).__name__}: {e}); quantize its "
                       "exported ONNX instead (`edgeforge quantize ARTIFACT`)") from e
    cancel_inverse_permutes(gm)
    forced = meth.rewrite_torch(gm, x, scheme)  # e.g. repquant's LayerNorm folding, as the engine does
    sites, weighted, kept = place(gm, list(keep_fp), norm_inputs)
    act: dict[str, ActQuant] = {}
    for i, (n, roles) in enumerate(sorted(sites.items(), key=lambda kv: list(gm.graph.nodes).index(kv[0]))):
        name = f"_q{i}_{n.name}"
        producer = "Softmax" if _is_softmax(n) else ("Clip" if _clip_bounds(gm, n) is not None else None)
        q = ActQuant(n.name, roles, observer_for(meth.activation_observer(scheme), producer))
        q.clip = _clip_bounds(gm, n) if "output" in roles else None
        if softmax_quantizer != "uniform" and _is_softmax(n):
            q.roles.add(softmax_quantizer)
        gm.add_submodule(name, q)
        with gm.graph.inserting_after(n):
            qn = gm.graph.call_module(name, (n,))
        n.replace_all_uses_with(qn, delete_user_cb=lambda u: u is not qn)
        act[n.name] = q
    wq: dict[str, QParams] = {}
    # a module called more than once (shared) is one layer with one weight quantizer, as the
    # exported graph's one initializer read by several Conv/Gemm nodes
    for target_name in dict.fromkeys(weighted):
        mod = gm.get_submodule(target_name)
        axis = 0 if scheme.weight_per_channel else None
        w = mod.weight.detach().cpu().numpy()
        qp = meth.weight_params(w, scheme.stored_weight_bits, axis)
        if scheme.overflow_fix == "pairs":  # as the ONNX engine does (engine.kernel_layer)
            layer, out_axis = layer_for("conv" if w.ndim >= 3 else "linear", w.shape)
            qp = make_safe(w, qp, layer, max_activation_code(scheme.act_bits, scheme.act_signed), out_axis)
        wq[target_name] = qp
        parent, _, child = target_name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, QuantWeight(mod, qp))
    gm.recompile()
    # Calibrate on the float model (weights unquantized), as the ONNX engine does on the FP32
    # graph: the simulation must pick the same ranges as the deployed QDQ model to predict it.
    qweights = [m for m in gm.modules() if isinstance(m, QuantWeight)]
    for m in qweights:
        m.enabled = False
        m.collecting = m.correct_bias = bias_correction
    with progress(f"calibrating torch simulation ({method})", len(x), console, show_progress) as advance:
        for i in range(0, len(x), batch):
            gm(x[i:i + batch])
            advance(len(x[i:i + batch]))
    for m in qweights:
        m.enabled, m.collecting = True, False
    for q in act.values():
        if q.site in forced and forced[q.site] is None:  # the method leaves this tensor in float
            q.mode = "off"
            continue
        if q.site in forced:
            q.qparams = convert_for_target(forced[q.site], scheme, f"activation {q.site}")
        elif softmax_quantizer in q.roles:
            q.qparams = log_params(max(q.observer.max, 1e-8), scheme.act_bits, softmax_quantizer, method)
        else:
            qp = q.observer.params(scheme.act_bits, scheme.act_symmetric, scheme.act_signed)
            qp = convert_for_target(qp, scheme, f"activation {q.site}")
            q.qparams = fit_inside(qp, *q.clip) if q.clip else qp
        q.mode = "quant"
    meth.apply_torch(act, {t: gm.get_submodule(t) for t in dict.fromkeys(weighted)}, scheme, method_params)
    for t in dict.fromkeys(weighted):  # the weight quantizers the simulation ends with
        wq[t] = gm.get_submodule(t).qparams
    _quantize_biases(gm)
    # tensors the method leaves in float keep their pass-through module but are no quantizers
    act = {k: q for k, q in act.items() if q.mode == "quant"}
    return QuantizedModule(gm, scheme, method, act, wq, kept)
