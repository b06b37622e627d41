"""Standard-ONNX decompositions of the custom ops, written once against a small emitter interface.

An emitter has `op(op_type, *inputs, outputs=1, **attrs)` and `const(ndarray)`. Two emitters exist:
`GraphEmitter` here (builds an onnx graph with onnx.helper; used for standalone models, benchmarks
and tests) and the torch-symbolic emitter in `edgeforge.ops.api` (used by `torch.onnx.export` in
"decompose" mode). So the graph a model exports is the graph the benchmark measured.

LinearScan has three forms (`SCAN_FORMS`); `benchmarks/ops.py` times them on ONNX Runtime CPU and
`BEST_SCAN_FORM` records the winner, which the exporter uses. The Loop form needs a subgraph, which
only `GraphEmitter` builds.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeforge.ops import schema

SCAN_FORMS = ("unrolled", "parallel", "loop")
# Fastest form on ONNX Runtime CPU for T in 8..64, C 768 (benchmarks/results/ops.json,
# "linear_scan_fastest_decomposition_counts": unrolled at every T).
BEST_SCAN_FORM = "unrolled"
INT64_MIN = np.iinfo(np.int64).min


class Emitter(Protocol):
    def op(self, op_type: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any: ...
    def const(self, value: np.ndarray) -> Any: ...


def _i64(*v: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def _flip_time(E: Emitter, x: Any) -> Any:
    return E.op("Slice", x, E.const(_i64(-1)), E.const(_i64(INT64_MIN)), E.const(_i64(1)), E.const(_i64(-1)))


def linear_scan_unrolled(E: Emitter, a, b, h0, T: int, reverse: bool, dtype=np.float32):
    """T steps of Mul+Add on (B,1,C) slices; exact (same rounding as the sequential reference)."""
    if T == 1:
        a_t, b_t = [a], [b]
    else:
        split = E.const(_i64(*([1] * T)))
        a_t = list(E.op("Split", a, split, axis=1, outputs=T))
        b_t = list(E.op("Split", b, split, axis=1, outputs=T))
    h = None if h0 is None else E.op("Unsqueeze", h0, E.const(_i64(1)))
    states: list[Any] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = b_t[t] if h is None else E.op("Add", E.op("Mul", a_t[t], h), b_t[t])
        states[t] = h
    hs = states[0] if T == 1 else E.op("Concat", *states, axis=1)
    return hs, E.op("Squeeze", h, E.const(_i64(1)))


def linear_scan_parallel(E: Emitter, a, b, h0, T: int, reverse: bool, dtype=np.float32):
    """h_t = sum_{s<=t} exp(L_t - L_s) b_s with L = cumsum(log a): O(T^2), needs a > 0.

    Only differences L_t - L_s with s <= t (bounded by 0 when a <= 1) are exponentiated, never
    exp(-L_s) on its own, which overflows for long T.
    """
    if reverse:
        a, b = _flip_time(E, a), _flip_time(E, b)
    L = E.op("CumSum", E.op("Log", a), E.const(_i64(1)))                     # (B,T,C)
    Lt = E.op("Transpose", L, perm=[0, 2, 1])                                # (B,C,T)
    diff = E.op("Sub", E.op("Unsqueeze", Lt, E.const(_i64(-1))), E.op("Unsqueeze", Lt, E.const(_i64(-2))))
    mask = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf).astype(dtype)
    w = E.op("Exp", E.op("Add", diff, E.const(mask)))                       # (B,C,T,T)
    bt = E.op("Unsqueeze", E.op("Transpose", b, perm=[0, 2, 1]), E.const(_i64(-1)))
    h = E.op("Transpose", E.op("Squeeze", E.op("MatMul", w, bt), E.const(_i64(-1))), perm=[0, 2, 1])
    if h0 is not None:
        h = E.op("Add", h, E.op("Mul", E.op("Exp", L), E.op("Unsqueeze", h0, E.const(_i64(1)))))
    last = E.op("Gather", h, E.const(np.asarray(T - 1, dtype=np.int64)), axis=1)
    if reverse:
        h = _flip_time(E, h)
    return h, last


def gated_attention(E: Emitter, q, k, v, bias, log_f, scale: float, causal: bool, N: int, M: int,
                    dtype=np.float32):
    """softmax(scale*q k^T + bias [+ c_i - c_j]) v with ONNX's (max-subtracting) Softmax."""
    s = E.op("MatMul", E.op("Mul", q, E.const(np.asarray(scale, dtype=dtype))),
             E.op("Transpose", k, perm=[0, 1, 3, 2]))
    if bias is not None:
        s = E.op("Add", s, bias)
    if log_f is not None:
        c = E.op("CumSum", log_f, E.const(_i64(-1)))
        s = E.op("Add", s, E.op("Sub", E.op("Unsqueeze", c, E.const(_i64(-1))),
                                E.op("Unsqueeze", c, E.const(_i64(-2)))))
        causal = True
    if causal:
        mask = np.where(np.tril(np.ones((N, M), dtype=bool), k=M - N), 0.0, -np.inf).astype(dtype)
        s = E.op("Add", s, E.const(mask))
    return E.op("MatMul", E.op("Softmax", s, axis=-1), v)


# --------------------------------------------------------------------------- graph building
class GraphEmitter:
    """Emitter that collects onnx.helper nodes and initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def op(self, op_type: str, *inputs: Any, outputs: int = 1, domain: str = "", **attrs: Any):
        outs = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, [i if i is not None else "" for i in inputs], outs,
                                           name=self._name(f"n_{op_type}"), domain=domain, **attrs))
        return outs[0] if outputs == 1 else tuple(outs)

    def const(self, value: np.ndarray) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name


def _loop_body(a: str, b: str, T: int, reverse: bool, elem: int) -> onnx.GraphProto:
    """Loop body: h <- a[:, t] * h + b[:, t]; t counts down when reverse."""
    E = GraphEmitter()
    t = E.op("Sub", E.const(np.asarray(T - 1, dtype=np.int64)), "iter") if reverse else "iter"
    h = E.op("Add", E.op("Mul", E.op("Gather", a, t, axis=1), "h_in"), E.op("Gather", b, t, axis=1))
    E.nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    E.nodes.append(helper.make_node("Identity", [h], ["h_out"]))
    E.nodes.append(helper.make_node("Identity", [h], ["h_scan"]))
    return helper.make_graph(
        E.nodes, "scan_step",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", elem, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", elem, None),
         helper.make_tensor_value_info("h_scan", elem, None)],
        initializer=E.initializers)


def linear_scan_loop(E: GraphEmitter, a, b, h0, T: int, reverse: bool, dtype=np.float32, B: int = 1, C: int = 1):
    """ONNX Loop over T carrying h (B, C), scan output stacked on axis 0 then moved to axis 1."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if h0 is None:
        h0 = E.const(np.zeros((B, C), dtype=dtype))
    body = _loop_body(a, b, T, reverse, elem)
    last, stacked = E.op("Loop", E.const(np.asarray(T, dtype=np.int64)), E.const(np.asarray(True)), h0,
                         outputs=2, body=body)
    hs = E.op("Transpose", stacked, perm=[1, 0, 2])
    if reverse:
        # scan outputs come in iteration order, i.e. t = T-1 first.
        hs = _flip_time(E, hs)
    return hs, last


def _model(E: GraphEmitter, inputs, outputs, opset: int, custom: bool) -> onnx.ModelProto:
    graph = helper.make_graph(E.nodes, "edgeforge_op", inputs, outputs, initializer=E.initializers)
    imports = [helper.make_opsetid("", opset)]
    if custom:
        imports.append(helper.make_opsetid(schema.DOMAIN, schema.OPSET_VERSION))
    model = helper.make_model(graph, opset_imports=imports, producer_name="edgeforge")
    model.ir_version = min(model.ir_version, 9)   # readable by every onnxruntime >= 1.16
    return model


def linear_scan_model(B: int, T: int, C: int, form: str, has_h0: bool = False, reverse: bool = False,
                      dtype=np.float32, opset: int = 17) -> onnx.ModelProto:
    """A standalone ONNX model of one LinearScan: inputs a, b[, h0]; outputs h, h_last.

    form: "plugin" (one edgeforge::LinearScan node) or one of SCAN_FORMS.
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    E = GraphEmitter()
    ins = [helper.make_tensor_value_info(n, elem, [B, T, C]) for n in ("a", "b")]
    if has_h0:
        ins.append(helper.make_tensor_value_info("h0", elem, [B, C]))
    h0 = "h0" if has_h0 else None
    if form == "plugin":
        h, last = E.op(schema.LINEAR_SCAN, "a", "b", *(["h0"] if has_h0 else []), outputs=2,
                       domain=schema.DOMAIN, **schema.linear_scan_attrs(reverse))
    elif form == "unrolled":
        h, last = linear_scan_unrolled(E, "a", "b", h0, T, reverse, dtype)
    elif form == "parallel":
        h, last = linear_scan_parallel(E, "a", "b", h0, T, reverse, dtype)
    elif form == "loop":
        h, last = linear_scan_loop(E, "a", "b", h0, T, reverse, dtype, B, C)
    else:
        raise ValueError(f"LinearScan form must be 'plugin' or one of {SCAN_FORMS}; got {form!r}")
    E.nodes.append(helper.make_node("Identity", [h], ["h"]))
    E.nodes.append(helper.make_node("Identity", [last], ["h_last"]))
    outs = [helper.make_tensor_value_info("h", elem, [B, T, C]), helper.make_tensor_value_info("h_last", elem, [B, C])]
    return _model(E, ins, outs, opset, form == "plugin")


def gated_attention_model(B: int, H: int, N: int, M: int, D: int, Dv: int, form: str,
                          bias_shape: tuple[int, ...] | None = None, has_log_f: bool = False,
                          scale: float | None = None, causal: bool = False, dtype=np.float32,
                          opset: int = 17) -> onnx.ModelProto:
    """A standalone ONNX model of one GatedAttention: inputs q, k, v[, bias][, log_f]; output o.

    form: "plugin" (one edgeforge::GatedAttention node) or "decompose".
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    scale = 1.0 / float(np.sqrt(D)) if scale is None else float(scale)
    E = GraphEmitter()
    ins = [helper.make_tensor_value_info("q", elem, [B, H, N, D]), helper.make_tensor_value_info("k", elem, [B, H, M, D]),
           helper.make_tensor_value_info("v", elem, [B, H, M, Dv])]
    if bias_shape is not None:
        ins.append(helper.make_tensor_value_info("bias", elem, list(bias_shape)))
    if has_log_f:
        ins.append(helper.make_tensor_value_info("log_f", elem, [B, H, N]))
    bias = "bias" if bias_shape is not None else None
    log_f = "log_f" if has_log_f else None
    if form == "plugin":
        o = E.op(schema.GATED_ATTENTION, *[i.name for i in ins], domain=schema.DOMAIN,
                 **schema.gated_attention_attrs(scale, causal, bias is not None, has_log_f))
    elif form == "decompose":
        o = gated_attention(E, "q", "k", "v", bias, log_f, scale, causal, N, M, dtype)
    else:
        raise ValueError(f"GatedAttention form must be 'plugin' or 'decompose'; got {form!r}")
    E.nodes.append(helper.make_node("Identity", [o], ["o"]))
    return _model(E, ins, [helper.make_tensor_value_info("o", elem, [B, H, N, Dv])], opset, form == "plugin")
