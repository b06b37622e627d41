"""INT8 weights that cannot overflow the 16-bit pair sums of x86 CPUs without VNNI.

On AVX2 and AVX-512BW without VNNI, the u8 x s8 kernels of ONNX Runtime (MLAS) and OpenVINO
(oneDNN) multiply byte pairs and add each pair into a signed 16-bit lane with saturation
(`vpmaddubsw`): `a0*w0 + a1*w1` with activation codes up to 255 overflows once two paired weights
of the same sign sum past 128 in magnitude. VNNI, AMX and Arm's dot product accumulate in 32 bits.

Which weights are paired was measured on both runtimes by running their AVX2 kernels on layers
where only two chosen weights are large (OpenVINO natively with ONEDNN_MAX_CPU_ISA=AVX2, ONNX
Runtime under `qemu-x86_64 -cpu Haswell`; `tests/test_quant_overflow.py` repeats it):
- Gemm / MatMul: reduction indices (2m, 2m+1).
- Conv, ONNX Runtime: the reduction runs over (kh, kw, c_in) with c_in innermost, paired
  (2m, 2m+1) over that flat order: with an odd c_in a pair straddles two kernel positions.
- Conv, OpenVINO: input channels (2m, 2m+1) at the same kernel position (c_in padded to even).
- Depthwise Conv (one input channel per group): neither runtime pairs (32-bit kernels).
A model may be compiled for either runtime, so both pairings are constrained.

The fix that costs least: per output channel, search the scale between the 8-bit min/max scale
and twice it (where no pair can reach 129: the 7-bit answer of ORT's `reduce_range` and NNCF's
`overflow_fix`), at each scale round the weights and pull only the offending pairs back to a sum
of 128 by the L2-nearest integers, and keep the scale with the least weight error. The 7-bit
scale is a candidate, so the result is never worse than 7-bit weights in L2, and channels whose
large weights are not paired keep full 8-bit resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeforge.quant.quantizers import QParams

I16_MAX = 32767
SCALE_STEPS = 33  # scale factors searched in [1, 2]


@dataclass(frozen=True)
class Layer:
    """How a weight enters its kernel: `op` is conv or linear; `c_in` input channels per group;
    `kernel` the number of kernel positions (kh*kw) for a conv, 1 for a linear layer."""

    op: str
    c_in: int
    kernel: int = 1

    @property
    def depthwise(self) -> bool:
        return self.op == "conv" and self.c_in == 1


def layer_for(op: str, w_shape: tuple, trans_b: bool = False) -> tuple[Layer, int] | None:
    """(Layer, output-channel axis) of a weight of shape `w_shape` in an ONNX Conv / Gemm / MatMul
    (or a torch Conv "conv" / Linear "linear", whose weights are laid out like Conv and Gemm with
    transB); None for layouts without kernel pairs here (batched MatMul weights)."""
    if op in ("Conv", "conv") and len(w_shape) >= 3:
        return Layer("conv", int(w_shape[1]), int(np.prod(w_shape[2:]))), 0
    if len(w_shape) != 2:
        return None
    if op == "linear" or (op == "Gemm" and trans_b):
        return Layer("linear", int(w_shape[1])), 0
    if op in ("Gemm", "MatMul"):
        return Layer("linear", int(w_shape[0])), 1
    return None


def pair_limit(act_max: int) -> int:
    """The largest |w0| + |w1| (same sign) whose pair sum fits in int16 with activations <= act_max."""
    return I16_MAX // act_max


def max_activation_code(bits: int, signed: bool) -> int:
    """The largest unsigned byte the kernel multiplies: u8 codes as they are; int8 activations are
    shifted by 128 into u8 by the x86 kernels, so they reach 255 too."""
    return 255 if signed or bits == 8 else 2 ** bits - 1


def pairs(layer: Layer) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs into one output channel's weights, flattened in ONNX order ((c_in, kh, kw) for a
    conv, K for a linear layer), that the kernels add in one 16-bit lane: one (a, b) array pair per
    runtime pairing."""
    if layer.depthwise:
        return []
    if layer.op == "linear" or layer.kernel == 1:
        k = layer.c_in * layer.kernel
        m = np.arange(k // 2)
        return [(2 * m, 2 * m + 1)]
    c, p = layer.c_in, layer.kernel
    out = []
    # ONNX Runtime: flat order t = position * c_in + channel
    t = np.arange((c * p) // 2)
    ta, tb = 2 * t, 2 * t + 1
    out.append(((ta % c) * p + ta // c, (tb % c) * p + tb // c))
    if c % 2:  # OpenVINO pads c_in per position, so its pairs differ from ORT's only for odd c_in
        m = np.arange(c // 2)
        pos = np.arange(p)
        a = (2 * m[:, None] * p + pos[None, :]).ravel()
        out.append((a, a + p))
    return out


def _fix_pairs(codes: np.ndarray, target: np.ndarray, pair_sets, limit: int) -> int:
    """Pull same-sign pairs whose |sum| exceeds `limit` back to it, in place, choosing the integer
    split nearest (L2) to the unrounded targets; never grows a magnitude. Returns pairs changed."""
    changed = 0
    for _ in range(8):  # an element is in at most two pairs: a few sweeps settle every chain
        moved = 0
        for a, b in pair_sets:
            qa, qb = codes[:, a], codes[:, b]
            same = (qa * qb) > 0
            over = same & (np.abs(qa + qb) > limit)
            if not over.any():
                continue
            sign = np.sign(qa)
            ma, mb = np.abs(qa), np.abs(qb)
            ta, tb = np.abs(target[:, a]), np.abs(target[:, b])
            # minimise (ta - x)^2 + (tb - (limit - x))^2 over integers x
            xa = np.clip(np.rint((limit + ta - tb) / 2), 0, limit)
            na = np.minimum(ma, xa)
            nb = np.minimum(mb, limit - na)
            na = np.minimum(ma, limit - nb)
            codes[:, a] = np.where(over, sign * na, qa)
            codes[:, b] = np.where(over, sign * nb, qb)
            moved += int(over.sum())
        changed += moved
        if not moved:
            break
    return changed


def safe_codes(w_rows: np.ndarray, scale: np.ndarray, layer: Layer, qmax: int, act_max: int,
               search: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Saturation-safe integer codes for weights `w_rows` (C_out, K) given starting scales (C_out,)
    (or one scale for all rows). Returns (codes (C_out, K) int8, scales, stats)."""
    w = np.asarray(w_rows, np.float64)
    per_row = np.ndim(scale) > 0 and np.size(scale) > 1
    s0 = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (len(w),)).copy() if per_row else \
        np.full(len(w), float(np.asarray(scale).reshape(-1)[0]))
    limit = pair_limit(act_max)
    pair_sets = pairs(layer)
    stats = {"limit": limit, "pairs_fixed": 0, "channels_rescaled": 0}
    if not pair_sets or 2 * qmax <= limit:
        codes = np.clip(np.rint(w / s0[:, None]), -qmax, qmax)
        return codes.astype(np.int8), s0.astype(np.float32), stats
    factors = np.linspace(1.0, 2.0, SCALE_STEPS) if search else np.asarray([1.0])
    best_err = np.full(len(w), np.inf)
    best_codes = np.zeros_like(w)
    best_s = s0.copy()
    best_fixed = np.zeros(len(w), np.int64)
    for f in factors:
        s = s0 * f
        if not per_row:
            s = np.full(len(w), s[0])
        target = w / s[:, None]
        codes = np.clip(np.rint(target), -qmax, qmax)
        before = codes.copy()
        _fix_pairs(codes, target, pair_sets, limit)
        err = (((codes - target) * s[:, None]) ** 2).sum(axis=1)
        if not per_row:
            err = np.full(len(w), err.sum())
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_codes[better] = codes[better]
        best_s = np.where(better, s, best_s)
        best_fixed = np.where(better, (codes != before).sum(axis=1), best_fixed)
    stats["pairs_fixed"] = int(best_fixed.sum())
    stats["channels_rescaled"] = int((best_s > s0 * (1 + 1e-9)).sum()) if per_row else int(best_s[0] > s0[0])
    stats["mean_scale_factor"] = round(float(np.mean(best_s / s0)), 4)
    out_s = best_s if per_row else np.asarray(best_s[0])
    return best_codes.astype(np.int8), np.asarray(out_s, np.float32), stats


def channel_rows(w: np.ndarray, axis: int | None) -> np.ndarray:
    """(C_out, K) view of a weight with its output-channel axis first (ONNX order otherwise)."""
    if axis is None:
        return w.reshape(w.shape[0], -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def from_rows(rows: np.ndarray, shape: tuple, axis: int | None) -> np.ndarray:
    if axis is None:
        return rows.reshape(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(axis))
    return np.moveaxis(rows.reshape(moved), 0, axis)


def make_safe(w: np.ndarray, qp: QParams, layer: Layer, act_max: int, out_axis: int | None,
              search: bool = True) -> QParams:
    """`qp` with explicit saturation-safe codes (QParams.codes) and its possibly larger scales.
    `out_axis` is the weight's output-channel axis (also when `qp` is per-tensor)."""
    w = np.asarray(w, np.float32)
    axis = qp.axis if qp.axis is not None else out_axis
    if axis is None or (layer.op == "linear" and w.ndim != 2):
        return qp  # batched MatMul weights (one scale, 3-D): rows are not channels; left as they are
    rows = channel_rows(w, axis)
    codes, scale, stats = safe_codes(rows, qp.scale, layer, qp.qmax, act_max, search)
    extra = {**qp.extra, "overflow_fix": {"kind": "int16 pair limit", **stats}}
    return QParams(scale if qp.axis is not None else np.asarray(scale, np.float32).reshape(()),
                   qp.zero_point, qp.bits, qp.symmetric, qp.signed, qp.axis, qp.observer, qp.kind, extra,
                   codes=from_rows(codes, w.shape, axis))


def worst_pair_sum(codes_rows: np.ndarray, layer: Layer) -> int:
    """The largest |w0| + |w1| over same-sign kernel pairs in (C_out, K) integer codes."""
    worst = 0
    c = np.asarray(codes_rows, np.int64)
    for a, b in pairs(layer):
        qa, qb = c[:, a], c[:, b]
        same = (qa * qb) > 0
        if same.any():
            worst = max(worst, int(np.abs(qa + qb)[same].max()))
    return worst


def saturation_check(model) -> dict:
    """Which integer layers of a QDQ model could saturate 16-bit pair sums, for any input.

    A static bound (the numpy model of the pair arithmetic): for every Conv/Gemm/MatMul whose
    weight is a DequantizeLinear of int8 constants, the worst same-sign kernel pair times the
    largest activation code (255) against the int16 limit. Zero layers means the model computes
    the same on saturating x86 CPUs as on VNNI/AMX/Arm ones."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    limit = pair_limit(255)
    risky, worst_all, checked = [], 0, 0
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        codes = numpy_helper.to_array(inits[dq.input[0]])
        if codes.dtype != np.int8:
            continue
        act = producer.get(n.input[0])
        if act is None or act.op_type != "DequantizeLinear":
            continue  # float activation: no integer kernel
        found = layer_for(n.op_type, codes.shape, bool(next((a.i for a in n.attribute if a.name == "transB"), 0)))
        if found is None:
            continue
        layer, axis = found
        checked += 1
        worst = worst_pair_sum(channel_rows(codes, axis), layer)
        worst_all = max(worst_all, worst)
        if worst > limit:
            risky.append({"layer": n.name, "worst_pair_sum": worst})
    return {"layers_checked": checked, "layers_that_can_saturate": len(risky), "pair_limit": limit,
            "worst_pair_sum": worst_all, "examples": risky[:5]}
