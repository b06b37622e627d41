"""Q-HyViT's Hessian-guided scale search, layer by layer on captured FP32 inputs.

Objective (Q-HyViT, arXiv 2303.12557): E[dO^T diag((dL/dO)^2) dO], dO the change quantization
makes to a layer's output O. Here:
- (dL/dO)^2 comes once from the FP32 torch model (`output_grads`): L is the cross-entropy of the
  model's logits against the FP32 model's own argmax (its gradient is not zero at the FP point,
  unlike KL(FP || Q)), hooks on the modules the ONNX layers came from (`placement.module_path`),
  reduced to per-sample per-output-channel means (N, C_out) to keep memory small. Without a torch
  model (an imported ONNX) the weights are 1: plain output MSE.
- the layer inputs are the FP32 tensors ONNX Runtime computes on the prepared graph; a Conv
  becomes rows of patches (im2col at a random subset of output positions), a Gemm / MatMul with a
  constant weight rows of tokens, so every weighted layer is `O = U @ W^T` per group, and a
  candidate costs one matmul on a few thousand rows.
- the search alternates, for `rounds` rounds: each weight's per-channel scales (the objective is
  separable over output channels once the input quantizer is fixed: each channel takes its best
  of the candidates), then each activation quantizer (scale and, where the target allows, the
  scheme: asymmetric or symmetric), scored on the summed objective of every layer reading it. The
  candidates are the paper's grid, `alpha * max|w| / (2^(k-1) - 1)` with alpha in [0.01, 1.2]
  (101 values), plus the current quantizer, so no step can increase the objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeforge.quant.placement import GraphIndex, module_path
from edgeforge.quant.quantizers import EPS, QParams, params_from_range, qrange

ALPHAS = np.linspace(0.01, 1.2, 101)


@dataclass
class LayerData:
    node: str
    op: str
    weight: str | None  # initializer (None: a MatMul of two activations)
    acts: list[str]  # act quantizer keys of the activation inputs (slot order)
    groups: int = 1
    cout: int = 0
    w_axis: int | None = None  # output-channel axis of the stored weight
    w_shape: tuple = ()
    W: object = None  # torch (G, Og, Kg)
    U: object = None  # torch (rows, G, Kg) FP32 input rows
    sample: object = None  # torch (rows,) sample index of each row
    O0: object = None  # torch (rows, Cout) FP32 output rows
    g2: object = None  # torch (N, Cout) squared output gradients (None: unweighted)
    g2r: object = None  # g2 per row (rows, Cout), made on first use
    amax: object = None  # (per-channel, per-tensor) max|w|, made on first use
    row_weight: float = 1.0  # output positions per sampled row
    A: object = None  # dynamic MatMul: both FP32 inputs (subset of samples)
    B: object = None
    bridge: str | None = None


@dataclass
class ActData:
    tensor: str
    consumers: list[int] = field(default_factory=list)  # LayerData indices reading it
    lo: float = 0.0
    hi: float = 0.0
    values: object = None  # (bin centres, counts) of the tensor's histogram (when no layer reads it)
    clip: tuple | None = None


def _torch():
    import torch

    return torch


# ----------------------------------------------------------------------------- fake quant
def fq(x, qp: QParams):
    """Fake-quantize torch tensor x: per-tensor, or per-channel along dim 0 (torch's fused kernels)."""
    torch = _torch()
    if np.ndim(qp.scale):
        s = torch.as_tensor(np.asarray(qp.scale, np.float32))
        z = torch.as_tensor(np.asarray(qp.zero_point, np.int32))
        return torch.fake_quantize_per_channel_affine(x, s, z, 0, qp.qmin, qp.qmax)
    return torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)


def hist_mse(ad: "ActData", qp: QParams) -> float:
    """Squared error of fake-quantizing the tensor, from its histogram (bin centres x counts)."""
    c, h = ad.values
    d = fq(c, qp) - c
    return float((h * d.double() ** 2).sum())


def _wq(ld: LayerData, qp: QParams):
    """The layer's fake-quantized weight as (G, Og, Kg), from the canonical (Cout, K) order."""
    G, Og, Kg = ld.W.shape
    return fq(ld.W.reshape(G * Og, Kg), qp).reshape(G, Og, Kg)


def _out(U, W):
    torch = _torch()
    if U.shape[1] == 1:
        return U[:, 0] @ W[0].T
    return torch.einsum("rgk,gok->rgo", U, W).reshape(U.shape[0], -1)


def _chan_err(ld: LayerData, dO):
    """Per-output-channel weighted error: sum_rows g2[sample, c] * dO^2 (times row_weight)."""
    sq = dO * dO
    if ld.g2 is not None:
        if ld.g2r is None:
            ld.g2r = ld.g2[ld.sample].contiguous()
        sq = sq * ld.g2r
    return sq.sum(0).double() * ld.row_weight


def layer_error(ld: LayerData, aq: list[QParams | None], wq: QParams | None, per_channel: bool = False):
    """The layer's objective under input quantizers aq (None: float) and weight quantizer wq."""
    torch = _torch()
    if ld.weight is None:
        a = fq(ld.A, aq[0]) if aq[0] is not None else ld.A
        b = fq(ld.B, aq[1]) if len(aq) > 1 and aq[1] is not None else ld.B
        d = (a @ b) - (ld.A @ ld.B)
        e = (d.double() ** 2).sum() * ld.row_weight
        return e if not per_channel else e.reshape(1)
    Uq = fq(ld.U, aq[0]) if aq[0] is not None else ld.U
    Wq = _wq(ld, wq) if wq is not None else ld.W
    e = _chan_err(ld, _out(Uq, Wq) - ld.O0)
    return e if per_channel else e.sum()


# ----------------------------------------------------------------------------- problem set-up
def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _rows_conv(x: np.ndarray, node, w: np.ndarray, budget: int, rng):
    """im2col rows (rows, G, Kg) of a 2-D Conv at a random subset of output positions."""
    torch = _torch()
    import torch.nn.functional as F

    at = _attrs(node)
    G = int(at.get("group", 1))
    kh, kw = w.shape[2], w.shape[3]
    pads = list(at.get("pads", [0, 0, 0, 0]))
    strides = tuple(at.get("strides", [1, 1]))
    dil = tuple(at.get("dilations", [1, 1]))
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    xt = F.pad(xt, (pads[1], pads[3], pads[0], pads[2]))
    cols = F.unfold(xt, (kh, kw), dilation=dil, stride=strides)  # (N, C*kh*kw, L)
    N, K, L = cols.shape
    per = max(4, min(L, budget // max(1, N * K)))
    if per < L:
        pos = torch.from_numpy(np.sort(rng.choice(L, per, replace=False)))
        cols = cols[:, :, pos]
    rows = cols.permute(0, 2, 1).reshape(N * cols.shape[2], G, K // G)
    sample = torch.arange(N).repeat_interleave(cols.shape[2])
    return rows.contiguous(), sample, L / cols.shape[2], G


def _rows_linear(x: np.ndarray, k: int, budget: int, rng, n: int):
    """Token rows (rows, 1, K) of a Gemm / MatMul input captured for n samples (a Gemm's 2-D
    input holds every sample's tokens stacked)."""
    torch = _torch()
    N = n
    xr = x.reshape(N, -1, k)
    T = xr.shape[1]
    per = max(4, min(T, budget // max(1, N * k)))
    if per < T:
        pos = np.sort(rng.choice(T, per, replace=False))
        xr = xr[:, pos]
    rows = torch.from_numpy(np.ascontiguousarray(xr.reshape(-1, 1, k), np.float32))
    sample = torch.arange(N).repeat_interleave(xr.shape[1])
    return rows, sample, T / xr.shape[1]


def canonical_weight(node, w: np.ndarray, groups: int = 1):
    """(G, Og, Kg) torch weight, the output-channel axis of the stored tensor, and Cout."""
    torch = _torch()
    if node.op_type == "Conv":
        cout = w.shape[0]
        return torch.from_numpy(np.array(w.reshape(groups, cout // groups, -1), np.float32)), 0, cout
    trans_b = bool(_attrs(node).get("transB", 0)) if node.op_type == "Gemm" else False
    wc = w if trans_b else w.T
    return torch.from_numpy(np.array(wc[None], np.float32)), (0 if trans_b else 1), wc.shape[0]


def build(prepared: onnx.ModelProto, plan, x: np.ndarray, act_keys: set[str], g2: dict | None,
          budget: int = 1 << 20, chunk: int = 8, seed: int = 0, advance=None):
    """LayerData for every searchable quantized layer and ActData for every activation quantizer,
    from FP32 captures (ONNX Runtime on the prepared graph, `chunk` tensors per pass)."""
    torch = _torch()
    from edgeforge.quant.calibrate import run_outputs

    rng = np.random.default_rng(seed)
    idx = GraphIndex(prepared)
    nodes = {n.name: n for n in prepared.graph.node}
    wsites = {ws.node: ws for ws in plan.weights}
    layers: list[LayerData] = []
    skipped: dict[str, str] = {}
    want: dict[str, list] = {}  # tensor -> [(layer index, slot)]
    for name in plan.layers:
        n = nodes[name]
        ws = wsites.get(name)
        if n.op_type == "Conv":
            if ws is None or len(idx.init_array(ws.initializer).shape) != 4:
                skipped[name] = "not a 2-D Conv with a constant weight"
                continue
            slots = [0]
        elif ws is not None:
            if idx.init_array(ws.initializer).ndim != 2:
                skipped[name] = "batched constant MatMul weight"
                continue
            slots = [0]
        else:
            slots = [0, 1]
        acts = [idx.source(n.input[s]) for s in slots]
        if not all(a in act_keys for a in acts):
            skipped[name] = "an input is not quantized"
            continue
        li = len(layers)
        layers.append(LayerData(name, n.op_type, ws.initializer if ws else None, acts))
        for s in slots:
            want.setdefault(n.input[s], []).append((li, s))
    acts: dict[str, ActData] = {}
    for li, ld in enumerate(layers):
        for a in ld.acts:
            acts.setdefault(a, ActData(a)).consumers.append(li)
    for a in act_keys:
        acts.setdefault(a, ActData(a))
    tensors = list(dict.fromkeys([*want, *[a for a, ad in acts.items() if not ad.consumers]]))
    tensors = [t for t in tensors if t not in idx.inits]
    ranges: dict[str, list[float]] = {}
    for i in range(0, len(tensors), chunk):
        part = tensors[i:i + chunk]
        cap = run_outputs(prepared, x, part)
        for t in part:
            v = cap.pop(t)
            r = ranges.setdefault(t, [np.inf, -np.inf])
            r[0], r[1] = min(r[0], float(v.min())), max(r[1], float(v.max()))
            if t in acts and not acts[t].consumers:
                # a tensor no searched layer reads: its own squared error, from a fine histogram
                lo_v, hi_v = float(v.min()), float(v.max())
                if hi_v > lo_v:
                    h, edges = np.histogram(v, bins=4096, range=(lo_v, hi_v))
                    centres = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
                    acts[t].values = (torch.from_numpy(centres), torch.from_numpy(h.astype(np.float64)))
            for li, slot in want.get(t, []):
                ld = layers[li]
                n = nodes[ld.node]
                if ld.weight is None:
                    nkeep = max(1, min(len(v), budget // max(1, v[0].size)))
                    arr = torch.from_numpy(np.ascontiguousarray(v[:nkeep], np.float32))
                    if slot == 0:
                        ld.A = arr
                    else:
                        ld.B = arr
                    ld.row_weight = len(v) / nkeep
                    continue
                w = idx.init_array(ld.weight)
                if ld.op == "Conv":
                    G = int(_attrs(n).get("group", 1))
                    ld.U, ld.sample, ld.row_weight, ld.groups = _rows_conv(v, n, w, budget, rng)
                    ld.W, ld.w_axis, ld.cout = canonical_weight(n, w, G)
                else:
                    ld.W, ld.w_axis, ld.cout = canonical_weight(n, w)
                    ld.U, ld.sample, ld.row_weight = _rows_linear(v, ld.W.shape[2], budget, rng, len(x))
                ld.w_shape = w.shape
                ld.O0 = _out(ld.U, ld.W)
                gg = (g2 or {}).get(ld.node)
                if gg is not None and gg.shape == (len(x), ld.cout):
                    gt = torch.from_numpy(np.asarray(gg, np.float32))
                    ld.g2 = gt + 1e-12 * float(gt.mean() + 1e-30)
        if advance:
            advance(len(part))
        del cap
    for ld in layers:
        if ld.weight is None and ld.A is not None and ld.B is not None:
            k = min(len(ld.A), len(ld.B))  # the two inputs are kept for the same samples
            ld.A, ld.B, ld.row_weight = ld.A[:k], ld.B[:k], len(x) / k
    for t, ad in acts.items():
        src_ranges = [ranges[nodes[layers[li].node].input[0 if layers[li].acts[0] == t else 1]]
                      for li in ad.consumers] if ad.consumers else [ranges.get(t, [0.0, 0.0])]
        ad.lo = float(min(r[0] for r in src_ranges))
        ad.hi = float(max(r[1] for r in src_ranges))
    return layers, acts, skipped


# ----------------------------------------------------------------------------- gradients
def output_grads(torch_model, x: np.ndarray, layer_nodes: dict[str, int], batch: int = 8) -> tuple[dict, dict]:
    """(dL/dO)^2 per sample and output channel (N, C_out) for each ONNX layer (node name -> C_out)
    from its torch module's output; L = cross-entropy against the FP32 argmax. Returns (grads,
    what was not found: node -> why)."""
    torch = _torch()

    mods = dict(torch_model.named_modules())
    by_mod: dict[str, list[str]] = {}
    missing = {}
    for node in layer_nodes:
        mp = module_path(node)
        if mp in mods and mp:
            by_mod.setdefault(mp, []).append(node)
        else:
            missing[node] = f"no torch module {mp!r}"
    store: dict[str, list] = {mp: [] for mp in by_mod}
    handles = []

    def hook_for(mp):
        def fwd(_m, _i, out):
            o = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(o, torch.Tensor) and o.requires_grad:
                o.register_hook(lambda g, mp=mp: store[mp].append(g.detach()))
        return fwd

    for mp in by_mod:
        handles.append(mods[mp].register_forward_hook(hook_for(mp)))
    torch_model = torch_model.eval()
    chunks: dict[str, list] = {mp: [] for mp in by_mod}
    try:
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], np.float32)).requires_grad_(True)
            for mp in store:
                store[mp] = []
            out = torch_model(xb)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(logits, dict):
                logits = next(iter(logits.values()))
            logits = logits.reshape(len(xb), -1)
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(-1).detach(), reduction="sum")
            loss.backward()
            for mp, gs in store.items():
                if not gs:
                    continue
                per = None
                for g in gs:  # a module called more than once: its calls' squared gradients add up
                    red = _reduce_g2(g, len(xb))
                    if red is None:
                        per = None
                        break
                    per = red if per is None or per.shape != red.shape else per + red
                chunks[mp].append(per)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, np.ndarray] = {}
    for mp, nodes in by_mod.items():
        parts = chunks[mp]
        if not parts or any(p is None for p in parts):
            for n in nodes:
                missing[n] = "its module's output gradient has no per-sample channel layout"
            continue
        g = torch.cat(parts).numpy()
        for n in nodes:
            cout = layer_nodes[n]
            if g.shape[1] == cout:
                out[n] = g
            else:
                missing[n] = f"module output has {g.shape[1]} channels, the layer {cout}"
    return out, missing


def _reduce_g2(g, n: int):
    """(N, C, H, W) -> mean over H, W; (N, T, C) -> mean over T; (N, C) as is."""
    g2 = g.double() ** 2
    if g2.ndim == 2 and g2.shape[0] == n:
        return g2.float()
    if g2.ndim == 4 and g2.shape[0] == n:
        return g2.mean(dim=(2, 3)).float()
    if g2.ndim == 3 and g2.shape[0] == n:
        return g2.mean(dim=1).float()
    return None


# ----------------------------------------------------------------------------- search
def act_candidate(ad: ActData, fam: str, alpha: float, bits: int, signed: bool) -> QParams | None:
    """The activation quantizer covering alpha * [min, max] of the FP32 tensor (inside the Clip it
    follows), asymmetric or symmetric."""
    lo, hi = min(ad.lo, 0.0), max(ad.hi, 0.0)
    if ad.clip is not None:
        lo, hi = max(lo, ad.clip[0]), min(hi, ad.clip[1])
    if hi - lo <= 0:
        return None
    return params_from_range(lo * alpha, hi * alpha, bits, fam == "symmetric", signed, None, "qhyvit")


def search_act(ad: ActData, cur: QParams, bits: int, families: list[str], signed: bool, score,
               alphas=ALPHAS) -> tuple[QParams, tuple[str, float], float]:
    """Best activation quantizer by `score(qp) -> float`: the current one, or a candidate of the
    grid `alphas` for each scheme family (coarse to fine: every 5th value, then the neighbours
    of the best). Returns (quantizer, (family or "current", alpha), score)."""
    best, meta, best_e = cur, ("current", float("nan")), score(cur)
    coarse, fine = _coarse_fine(len(alphas))
    grid: dict[tuple[str, int], float] = {}

    def consider(fam, i):
        nonlocal best, meta, best_e
        if (fam, i) in grid:
            return
        qp = act_candidate(ad, fam, float(alphas[i]), bits, signed)
        if qp is None:
            grid[(fam, i)] = np.inf
            return
        e = score(qp)
        grid[(fam, i)] = e
        if e < best_e:
            best, meta, best_e = qp, (fam, float(alphas[i])), e

    for fam in families:
        for i in coarse:
            consider(fam, int(i))
    if grid:
        fam, i = min(grid, key=grid.get)
        for k in fine:
            if 0 <= i + k < len(alphas):
                consider(fam, int(i + k))
    return best, meta, best_e


def weight_candidate(ld: LayerData, bits: int, alpha, per_channel: bool) -> QParams:
    """Symmetric int8-container weight quantizer with scale alpha * max|w| / qmax (per channel)."""
    G, Og, Kg = ld.W.shape
    if ld.amax is None:
        w = ld.W.reshape(G * Og, Kg).abs()
        ld.amax = (w.max(1).values.double().numpy(), np.asarray([float(w.max())]))
    amax = ld.amax[0] if per_channel else ld.amax[1]
    qmax = qrange(bits, True, True)[1]
    scale = np.maximum(np.asarray(alpha) * amax / qmax, EPS).astype(np.float32)
    if not per_channel:
        scale = np.asarray(scale.reshape(()), np.float32)
    return QParams(scale, np.zeros(np.shape(scale), np.int64), bits, True, True,
                   ld.w_axis if per_channel else None, "qhyvit")


def _coarse_fine(n: int, step: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the coarse pass over a grid of n, and the fine offsets around its best."""
    return np.arange(0, n, step), np.array([k for k in range(-(step - 1), step) if k])


def search_weight(ld: LayerData, aq: list[QParams], cur: QParams, bits: int, alphas=ALPHAS) -> tuple[QParams, np.ndarray]:
    """Per-channel best scale on the grid `alphas` (searched coarse to fine: every 5th value,
    then each channel's neighbours of its best), the current scale kept where no candidate beats
    it. Returns the quantizer and each channel's alpha (nan where the current scale stayed)."""
    torch = _torch()
    per_channel = cur.per_channel
    Uq = fq(ld.U, aq[0])

    def err(q):
        e = _chan_err(ld, _out(Uq, _wq(ld, q)) - ld.O0)
        return e if per_channel else e.sum().reshape(1)

    best = err(cur)
    best_scale = np.array(np.asarray(cur.scale, np.float64).reshape(-1), copy=True)
    best_alpha = np.full(best_scale.shape, np.nan)
    grid_best = np.full(best_scale.shape, np.inf)
    grid_idx = np.zeros(best_scale.shape, np.int64)
    coarse, fine = _coarse_fine(len(alphas))

    def consider(ai: np.ndarray):
        nonlocal best
        a = np.asarray(alphas)[ai]
        cand = weight_candidate(ld, bits, a if per_channel else a.reshape(()), per_channel)
        e = err(cand)
        en = e.numpy()
        g = en < grid_best
        grid_best[g], grid_idx[g] = en[g], np.broadcast_to(ai, grid_idx.shape)[g]
        better = (e < best).numpy()
        if better.any():
            best = torch.where(torch.from_numpy(better), e, best)
            best_scale[better] = np.asarray(cand.scale, np.float64).reshape(-1)[better]
            best_alpha[better] = np.broadcast_to(a, best_alpha.shape)[better]

    for i in coarse:
        consider(np.full(best_scale.shape, i))
    centre = grid_idx.copy()
    for k in fine:
        consider(np.clip(centre + k, 0, len(alphas) - 1))
    scale = best_scale.astype(np.float32)
    if not per_channel:
        scale = np.asarray(scale.reshape(()), np.float32)
    qp = QParams(scale, np.zeros(np.shape(scale), np.int64), bits, True, True, cur.axis, "qhyvit",
                 extra={k: v for k, v in cur.extra.items() if k != "codes"})
    return qp, best_alpha


def total_objective(layers: list[LayerData], acts: dict[str, ActData], act_q: dict, weight_q: dict) -> dict:
    """{"layers": sum of layer objectives, "tensors": sum of unread tensors' MSE}."""
    lt = 0.0
    for ld in layers:
        lt += float(layer_error(ld, [act_q[a] for a in ld.acts], weight_q.get(ld.weight) if ld.weight else None))
    tt = 0.0
    for t, ad in acts.items():
        if ad.values is not None and t in act_q:
            tt += hist_mse(ad, act_q[t])
    return {"layers": lt, "tensors": tt}
