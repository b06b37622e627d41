"""RepQ-ViT / RepQuant scale reparameterization of post-LayerNorm activations.

Post-LayerNorm activations of ViTs have a few channels with ranges 10-100x the others; one
per-tensor quantizer spends its levels on them. Calibrated per channel (scale s_c, zero-point
z_c), the per-channel quantizer is folded into the model exactly:

    s~ = mean(s),  z~ = round(mean(z)),  r1 = s / s~,  r2 = z - z~
    LayerNorm:   gamma' = gamma / r1,         beta' = (beta + s * r2) / r1
    next linear: W' = W diag(r1) (input columns), b' = b - W (s * r2)

so X' = (X + s r2) / r1 and X' W'^T + b' = X W^T + b: the network computes the same function
(before quantization), and per-tensor quantization of X' with (s~, z~) is *exactly* the
per-channel quantization of X with (s_c, z_c): round(X'_c / s~) + z~ = round(X_c / s_c) + z_c.
Every runtime runs the per-tensor form. A LayerNorm qualifies when every consumer of its output
(through reshapes) is a linear layer with a constant weight over the normalized axis.

`reparam_constants` is the math; `reparam_onnx` applies it to an ONNX graph (the engine) and
`reparam_torch` to nn.LayerNorm -> nn.Linear modules of a torch.fx graph (the simulation), so both
place the same quantizers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeforge.quant.quantizers import QParams, params_from_range

# ops between a LayerNorm and its linear consumers that keep the channel axis last
CHANNEL_KEEPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass
class Reparam:
    """The constants of one folded per-channel quantizer."""

    r1: np.ndarray  # (C,) float64: s_c / s~
    shift: np.ndarray  # (C,) float64: s_c * (z_c - z~)
    per_tensor: QParams  # (s~, z~): the quantizer the deployed model uses
    per_channel: QParams  # (s_c, z_c): what it equals

    def fold_norm(self, gamma: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, b = gamma.astype(np.float64), beta.astype(np.float64)
        return (g / self.r1).astype(np.float32), ((b + self.shift) / self.r1).astype(np.float32)

    def fold_linear(self, w: np.ndarray, b: np.ndarray | None, in_axis: int) -> tuple[np.ndarray, np.ndarray]:
        """W (2-D, input channels on `in_axis`) and bias (None: zeros) of the next linear layer."""
        w64 = w.astype(np.float64)
        shape = [1, 1]
        shape[in_axis] = -1
        new_w = w64 * self.r1.reshape(shape)
        # W (s * r2): the constant the LayerNorm now adds, taken back out of the bias
        out = (w64 * self.shift.reshape(shape)).sum(axis=in_axis)
        bias = (np.zeros(out.shape) if b is None else b.astype(np.float64)) - out
        return new_w.astype(np.float32), bias.astype(np.float32)


def reparam_constants(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool, signed: bool) -> Reparam:
    """Per-channel quantizers of the range [lo_c, hi_c] and their per-tensor equivalent."""
    pc = params_from_range(lo, hi, bits, symmetric, signed, axis=0, observer="per-channel minmax")
    s = pc.scale.astype(np.float64)
    z = pc.zero_point.astype(np.int64)
    s_t = np.float32(s.mean())
    z_t = int(np.round(z.mean()))
    # r1 from the float32 scale the QDQ model stores, so the fold is exact against it
    r1 = s / float(s_t)
    shift = s * (z - z_t)
    pt = QParams(np.asarray(s_t, np.float32), np.asarray(z_t, np.int64), bits, symmetric, signed, None,
                 "repquant per-channel -> per-tensor",
                 extra={"reparameterized_channels": int(len(s)),
                        "channel_scale_ratio_range": [round(float(r1.min()), 4), round(float(r1.max()), 4)]})
    return Reparam(r1, shift, pt, pc)


# ----------------------------------------------------------------------------- ONNX
@dataclass
class NormSite:
    norm: str  # LayerNormalization node name
    output: str  # its output tensor
    chain: list[str]  # tensors from the output through channel-keeping ops (quantizer candidates)
    linears: list[tuple[onnx.NodeProto, int]]  # (node, input-channel axis of its weight)
    channels: int


def _attr(n: onnx.NodeProto, name: str, default):
    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_norm_sites(model: onnx.ModelProto) -> list[NormSite]:
    """LayerNorms over the last axis with constant affine parameters whose every consumer (through
    reshapes) is a Gemm/MatMul with a constant 2-D weight over the same channels."""
    from edgeforge.quant.placement import GraphIndex

    idx = GraphIndex(model)
    outputs = idx.graph_outputs
    sites = []
    for n in model.graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 2 or not idx.is_const(n.input[1]):
            continue
        if len(n.input) > 2 and n.input[2] and not idx.is_const(n.input[2]):
            continue
        gamma = idx.init_array(n.input[1])
        # over the last axis only (a positive axis needs the rank, which the graph may not state)
        if gamma.ndim != 1 or _attr(n, "axis", -1) != -1:
            continue
        c = gamma.shape[0]
        chain, linears, ok = [n.output[0]], [], True
        stack = [n.output[0]]
        while stack and ok:
            t = stack.pop()
            if t in outputs or not idx.consumers.get(t):
                ok = False
                break
            for cons, slot in idx.consumers[t]:
                if cons.op_type in CHANNEL_KEEPING and slot == 0:
                    chain.append(cons.output[0])
                    stack.append(cons.output[0])
                    continue
                w = cons.input[1] if len(cons.input) > 1 else ""
                if slot != 0 or cons.op_type not in ("Gemm", "MatMul") or not idx.is_const(w):
                    ok = False
                    break
                wa = idx.init_array(w)
                if wa.ndim != 2 or (cons.op_type == "Gemm" and _attr(cons, "transA", 0)):
                    ok = False
                    break
                in_axis = 1 if (cons.op_type == "Gemm" and _attr(cons, "transB", 0)) else 0
                if wa.shape[in_axis] != c:
                    ok = False
                    break
                linears.append((cons, in_axis))
        if ok and linears:
            sites.append(NormSite(n.name, n.output[0], chain, linears, c))
    return sites


def channel_ranges(model: onnx.ModelProto, x: np.ndarray, tensors: list[str], console=None,
                   show_progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (last axis) min and max of `tensors` over the calibration samples."""
    from edgeforge.quant.calibrate import input_name, progress, session, with_outputs

    sess = session(with_outputs(model, tensors))
    inp = input_name(model)
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    with progress(f"per-channel ranges of {len(tensors)} LayerNorm outputs", len(x), console, show_progress) as adv:
        for i in range(len(x)):
            for t, v in zip(tensors, sess.run(tensors, {inp: x[i:i + 1]})):
                v = v.reshape(-1, v.shape[-1])
                mn, mx = v.min(axis=0).astype(np.float64), v.max(axis=0).astype(np.float64)
                lo[t] = mn if t not in lo else np.minimum(lo[t], mn)
                hi[t] = mx if t not in hi else np.maximum(hi[t], mx)
            adv()
    return {t: (lo[t], hi[t]) for t in tensors}


def _set_init(g: onnx.GraphProto, name: str, arr: np.ndarray) -> None:
    for i, init in enumerate(g.initializer):
        if init.name == name:
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            return
    g.initializer.append(numpy_helper.from_array(arr, name))


def reparam_onnx(model: onnx.ModelProto, x: np.ndarray, bits: int, symmetric: bool, signed: bool,
                 console=None, show_progress: bool = True) -> dict[str, dict]:
    """Fold per-channel post-LayerNorm quantizers into `model` (in place). Returns, per folded
    LayerNorm, its forced per-tensor quantizer and the tensors it may sit on: {norm: {"qparams":
    QParams, "chain": [...], "linears": [...]}}. New initializers get new names: the exporter
    shares equal initializers between nodes, and only these nodes may change."""
    sites = find_norm_sites(model)
    if not sites:
        return {}
    ranges = channel_ranges(model, x, [s.output for s in sites], console, show_progress)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    out = {}
    replaced: set[str] = set()
    for k, s in enumerate(sites):
        rp = reparam_constants(*ranges[s.output], bits, symmetric, signed)
        ln = nodes[s.norm]
        gamma = numpy_helper.to_array(inits[ln.input[1]])
        beta = numpy_helper.to_array(inits[ln.input[2]]) if len(ln.input) > 2 and ln.input[2] else \
            np.zeros_like(gamma)
        g_new, b_new = rp.fold_norm(gamma, beta)
        replaced.update(t for t in ln.input[1:] if t)
        gname, bname = f"{ln.input[1]}_repquant{k}", f"{ln.name}_bias_repquant{k}"
        _set_init(g, gname, g_new)
        _set_init(g, bname, b_new)
        ln.input[1] = gname
        if len(ln.input) > 2:
            ln.input[2] = bname
        else:
            ln.input.append(bname)
        for j, (lin, in_axis) in enumerate(s.linears):
            w = numpy_helper.to_array(inits[lin.input[1]])
            bias_name, bias_add = _linear_bias(model, lin)
            replaced.update(t for t in (lin.input[1], bias_name) if t)
            b = numpy_helper.to_array(inits[bias_name]) if bias_name else None
            if b is not None and b.shape != (w.shape[1 - in_axis],):
                b = np.broadcast_to(b, (w.shape[1 - in_axis],)).copy()
            w_new, b_new = rp.fold_linear(w, b, in_axis)
            wname, nb = f"{lin.input[1]}_repquant{k}_{j}", f"{lin.name}_bias_repquant{k}"
            _set_init(g, wname, w_new)
            _set_init(g, nb, b_new)
            lin.input[1] = wname
            if lin.op_type == "Gemm":
                if len(lin.input) > 2:
                    lin.input[2] = nb
                else:
                    lin.input.append(nb)
            elif bias_add is not None:
                bias_add.input[[i for i, t in enumerate(bias_add.input) if t == bias_name][0]] = nb
            else:  # MatMul without a bias: add one (the fold moves a constant into it)
                _insert_bias_add(model, lin, nb)
        out[s.norm] = {"qparams": rp.per_tensor, "chain": s.chain, "linears": [lin.name for lin, _ in s.linears],
                       "channels": s.channels}
    _drop_unused_initializers(model, replaced)
    return out


def _linear_bias(model: onnx.ModelProto, lin: onnx.NodeProto) -> tuple[str | None, onnx.NodeProto | None]:
    """The bias initializer of a Gemm (input 2) or of the Add right after a MatMul, if any."""
    inits = {i.name for i in model.graph.initializer}
    if lin.op_type == "Gemm":
        return (lin.input[2] if len(lin.input) > 2 and lin.input[2] in inits else None), None
    users = [n for n in model.graph.node if lin.output[0] in n.input]
    if len(users) == 1 and users[0].op_type == "Add":
        other = [t for t in users[0].input if t != lin.output[0]]
        if len(other) == 1 and other[0] in inits:
            return other[0], users[0]
    return None, None


def _insert_bias_add(model: onnx.ModelProto, lin: onnx.NodeProto, bias: str) -> None:
    g = model.graph
    old = lin.output[0]
    new = f"{old}_nobias"
    lin.output[0] = new
    add = onnx.helper.make_node("Add", [new, bias], [old], name=f"{lin.name}_bias_add")
    pos = list(g.node).index(lin)
    g.node.insert(pos + 1, add)


def _drop_unused_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the initializers the fold replaced, where nothing reads them any more (nodes of the
    graph and of its subgraphs, graph outputs)."""
    used: set[str] = {o.name for o in model.graph.output}

    def scan(g: onnx.GraphProto) -> None:
        for n in g.node:
            used.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    scan(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        scan(sg)

    scan(model.graph)
    keep = [i for i in model.graph.initializer if i.name in used or i.name not in candidates]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


# ----------------------------------------------------------------------------- torch
def reparam_torch(gm, x, bits: int, symmetric: bool, signed: bool, batch: int = 8) -> dict[str, QParams]:
    """The same fold on a torch.fx graph: nn.LayerNorm modules (called once, last-axis) whose output
    reaches only nn.Linear modules (called once) through shape ops. Parameters change in place.
    Returns {fx node name: per-tensor QParams} for the LayerNorm output and the shape ops after it
    (the simulation's quantizer sits on one of them)."""
    import torch
    from torch import nn

    from edgeforge.quant.torch_sim import _is_pass, _value_users

    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            calls[n.target] = calls.get(n.target, 0) + 1
    sites = []
    for n in gm.graph.nodes:
        norm = _layer_norm_params(gm, n, calls)
        if norm is None:
            continue
        chain, linears, stack, ok = [n], [], [n], True
        while stack and ok:
            t = stack.pop()
            users = _value_users(t)
            if not users:
                ok = False
            for u in users:
                if _is_pass(gm, u) and u.op == "call_method" and u.target in ("view", "reshape", "flatten",
                                                                              "contiguous", "squeeze", "unsqueeze"):
                    chain.append(u)
                    stack.append(u)
                elif u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.Linear) \
                        and calls[u.target] == 1 and u.args and u.args[0] is t:
                    linears.append(gm.get_submodule(u.target))
                elif u.op == "call_module" and isinstance(gm.get_submodule(u.target), (nn.Identity, nn.Dropout)):
                    chain.append(u)
                    stack.append(u)
                else:
                    ok = False
                    break
        if ok and linears and all(lin.in_features == norm[0].shape[0] for lin in linears):
            sites.append((n, norm, linears, chain))
    if not sites:
        return {}
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}
    # per-channel ranges of the LayerNorm outputs, watched by an fx interpreter (modules and functions alike)
    from torch.fx.interpreter import Interpreter

    watched = {n for n, *_ in sites}

    class Watch(Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node in watched:
                v = out.detach().reshape(-1, out.shape[-1]).double()
                mn, mx = v.min(0).values, v.max(0).values
                lo[node.name] = mn if node.name not in lo else torch.minimum(lo[node.name], mn)
                hi[node.name] = mx if node.name not in hi else torch.maximum(hi[node.name], mx)
            return out

    with torch.no_grad():
        for i in range(0, len(x), batch):
            Watch(gm).run(x[i:i + batch])
    forced = {}
    with torch.no_grad():
        for n, (weight, bias), linears, chain in sites:
            rp = reparam_constants(lo[n.name].numpy(), hi[n.name].numpy(), bits, symmetric, signed)
            g_new, b_new = rp.fold_norm(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())
            weight.copy_(torch.from_numpy(g_new))
            bias.copy_(torch.from_numpy(b_new))
            for lin in linears:
                w_new, bl = rp.fold_linear(lin.weight.detach().cpu().numpy(),
                                           None if lin.bias is None else lin.bias.detach().cpu().numpy(), 1)
                lin.weight.copy_(torch.from_numpy(w_new))
                if lin.bias is None:
                    lin.bias = nn.Parameter(torch.from_numpy(bl))
                else:
                    lin.bias.copy_(torch.from_numpy(bl))
            for c in chain:
                forced[c.name] = rp.per_tensor
    return forced


def _layer_norm_params(gm, n, calls: dict) -> tuple | None:
    """(weight, bias) parameters of a last-axis affine LayerNorm node used once (nn.LayerNorm module,
    or F.layer_norm on get_attr parameters as timm's LayerNorm traces), else None."""
    import torch.nn.functional as F
    from torch import nn

    if n.op == "call_module" and calls.get(n.target) == 1:
        m = gm.get_submodule(n.target)
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1 and m.elementwise_affine \
                and m.bias is not None:
            return m.weight, m.bias
        return None
    if n.op == "call_function" and n.target is F.layer_norm:
        args = list(n.args) + [None] * 5
        shape = n.kwargs.get("normalized_shape", args[1])
        w, b = n.kwargs.get("weight", args[2]), n.kwargs.get("bias", args[3])
        if not (isinstance(shape, (list, tuple)) and len(shape) == 1):
            return None
        if all(getattr(a, "op", None) == "get_attr" and calls.get(a.target) == 1 for a in (w, b)):
            return gm.get_parameter(w.target), gm.get_parameter(b.target)
    return None
