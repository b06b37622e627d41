"""Error-compensating weight rounding for linear layers (OBQ / GPTQ, arXiv 2210.17323).

Rounding each weight to its nearest level minimises the weight error, not the layer's output
error. With H = E[x x^T] the Gram matrix of the layer's calibration inputs, the output error of
one row is (w - q) H (w - q)^T; GPTQ rounds the input columns one at a time and spreads each
column's rounding error over the columns not yet rounded, through the Cholesky factor of H^-1,
so the later columns absorb it. Scales stay as given (per output channel): only the integer codes
change, and they are written as explicit codes (QParams.codes), which the QDQ export and the
torch simulation both store as they are.
"""

from __future__ import annotations

import numpy as np

from edgeforge.quant.quantizers import QParams

DAMP = 0.01  # fraction of the mean diagonal added to H (keeps the Cholesky factor stable)
BLOCK = 128  # columns updated lazily per block (same result, fewer passes over the matrix)


def gram(inputs: list[np.ndarray]) -> np.ndarray:
    """E[x x^T] over every row (token, sample) of `inputs` (arrays (..., K))."""
    k = inputs[0].shape[-1]
    h = np.zeros((k, k))
    n = 0
    for x in inputs:
        r = x.reshape(-1, k).astype(np.float64)
        h += r.T @ r
        n += len(r)
    return h / max(n, 1)


def gptq_rows(w_rows: np.ndarray, scale: np.ndarray, qmin: int, qmax: int, h: np.ndarray) -> np.ndarray:
    """Integer codes (C_out, K) for weight rows `w_rows` (C_out, K) with per-row `scale`, symmetric
    (zero-point 0), minimising sum_rows (w - s q) H (w - s q)^T column by column."""
    w = np.asarray(w_rows, np.float64).copy()
    s = np.asarray(scale, np.float64).reshape(-1, 1) * np.ones((len(w), 1))
    h = np.asarray(h, np.float64).copy()
    k = h.shape[0]
    dead = np.diag(h) <= 0  # inputs that are always zero: nothing to compensate through them
    h[dead, dead] = 1.0  # (their weights still round to the nearest level)
    h += DAMP * float(np.mean(np.diag(h))) * np.eye(k)
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor U with H^-1 = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.rint(w / s), qmin, qmax).astype(np.int32)
    q = np.zeros_like(w)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        wb = w[:, b0:b1].copy()
        errb = np.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[:, i]
            qc = np.clip(np.rint(col / s[:, 0]), qmin, qmax)
            q[:, b0 + i] = qc
            err = (col - qc * s[:, 0]) / hb[i, i]
            wb[:, i:] -= np.outer(err, hb[i, i:])
            errb[:, i] = err
        w[:, b1:] -= errb @ hinv[b0:b1, b1:]
    return q.astype(np.int32)


def gptq_params(w: np.ndarray, qp: QParams, axis: int, h: np.ndarray) -> QParams:
    """`qp` (symmetric, per-channel on `axis` of a 2-D weight) with GPTQ codes for input Gram `h`."""
    if w.ndim != 2 or not qp.symmetric or not qp.signed or qp.axis != axis:
        return qp
    rows = np.moveaxis(np.asarray(w, np.float32), axis, 0)
    codes = gptq_rows(rows, qp.scale, qp.qmin, qp.qmax, h)
    return QParams(qp.scale, qp.zero_point, qp.bits, qp.symmetric, qp.signed, qp.axis, qp.observer, qp.kind,
                   {**qp.extra, "rounding": "gptq"}, codes=np.moveaxis(codes, 0, axis).astype(np.int32))


def output_error(w: np.ndarray, qp: QParams, axis: int, h: np.ndarray) -> float:
    """sum over output channels of (w - w_hat) H (w - w_hat)^T: the expected squared output error."""
    from edgeforge.quant.quantizers import dequantize, weight_codes

    d = np.moveaxis(dequantize(weight_codes(w, qp), qp) - w, axis, 0).astype(np.float64)
    return float(np.einsum("ik,kl,il->", d, h, d))


def reconstruct(model, x: np.ndarray, plan, weight_q: dict, scheme, console=None, show_progress: bool = True) -> dict:
    """GPTQ codes for every 2-D Gemm/MatMul weight and every 1x1 Conv (groups 1, no padding) of
    `plan`, against the Gram matrix of the layer's FP32 calibration inputs; `weight_q` is updated
    where GPTQ lowers the layer's expected output error. Returns what it did (for quant.json)."""
    import time

    from edgeforge.quant.calibrate import input_name, progress, session, with_outputs
    from edgeforge.quant.placement import GraphIndex

    if scheme.overflow_fix == "pairs":
        # the saturation-safe codes (overflow.make_safe) bound pairs of codes; rounding them again
        # would break that bound
        return {"applied": False, "why": "int16-pairs target: the saturation-safe weight codes are kept"}
    t0 = time.perf_counter()
    idx = GraphIndex(model)
    nodes = {n.name: n for n in model.graph.node}
    sites = []
    for ws in plan.weights:
        n = nodes[ws.node]
        if ws.axis is None or ws.initializer not in weight_q:
            continue
        w = idx.init_array(ws.initializer)
        if n.op_type in ("Gemm", "MatMul") and w.ndim == 2:
            sites.append((ws, None))
        elif n.op_type == "Conv" and w.ndim == 4 and w.shape[2:] == (1, 1) and _attr(n, "group", 1) == 1 \
                and not any(_attr(n, "pads", [0])) and _attr(n, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            sites.append((ws, tuple(_attr(n, "strides", [1, 1]))))
    if not sites:
        return {"applied": False, "why": "no 2-D linear or 1x1 conv weights"}
    inputs = {}
    for ws, strides in sites:
        inputs.setdefault((nodes[ws.node].input[0], strides), None)
    names = list(dict.fromkeys(t for t, _ in inputs))
    sess = session(with_outputs(model, names))
    inp = input_name(model)
    grams: dict[tuple, np.ndarray] = {}
    with progress(f"input Gram matrices of {len(sites)} layers (GPTQ)", len(x), console, show_progress) as adv:
        for i in range(len(x)):
            vals = dict(zip(names, sess.run(names, {inp: x[i:i + 1]})))
            for (t, strides) in inputs:
                v = vals[t]
                if strides is not None:  # NCHW at the 1x1 conv's sampling positions -> (pixels, C)
                    v = np.moveaxis(v[:, :, ::strides[0], ::strides[1]], 1, -1)
                r = v.reshape(-1, v.shape[-1]).astype(np.float64)
                grams[(t, strides)] = grams.get((t, strides), 0) + r.T @ r / len(r)
            adv()
    before = after = 0.0
    changed = 0
    with progress("GPTQ weight rounding", len(sites), console, show_progress) as adv:
        for ws, strides in sites:
            w = idx.init_array(ws.initializer)
            w2 = w.reshape(w.shape[0], -1) if strides is not None else w
            h = grams[(nodes[ws.node].input[0], strides)] / len(x)
            qp = weight_q[ws.initializer]
            if h.shape[0] != w2.shape[1 - ws.axis] or qp.codes is not None:
                adv()
                continue
            new = gptq_params(w2, qp, ws.axis, h)  # a 1x1 conv's (C_out, C_in) rows keep axis 0
            e0, e1 = output_error(w2, qp, ws.axis, h), output_error(w2, new, ws.axis, h)
            if e1 < e0:  # nearest rounding stays where it is already better (damping, tiny layers)
                codes = new.codes.reshape(w.shape) if strides is not None else new.codes
                weight_q[ws.initializer] = QParams(qp.scale, qp.zero_point, qp.bits, qp.symmetric, qp.signed,
                                                   qp.axis, qp.observer, qp.kind, {**qp.extra, "rounding": "gptq"},
                                                   codes=codes)
                changed += 1
            before, after = before + e0, after + min(e0, e1)
            adv()
    return {"applied": True, "layers": len(sites), "layers_changed": changed,
            "expected_output_error_before": round(before, 6), "expected_output_error_after": round(after, 6),
            "seconds": round(time.perf_counter() - t0, 1)}


def _attr(n, name: str, default):
    import onnx

    for a in n.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
