"""Torch entry points of the custom ops and the export-mode switch.

Eager calls run the torch reference (differentiable). While `torch.onnx.export` traces a model
(TorchScript exporter, `dynamo=False`, `custom_opsets=edgeforge.ops.CUSTOM_OPSETS`), the calls go
through an `autograd.Function` whose `symbolic` emits, depending on `export_mode`:
  "plugin":    one `edgeforge::LinearScan` / `edgeforge::GatedAttention` node with the attributes of
               `edgeforge.ops.schema` (TensorRT's parser finds the plugin by them);
  "decompose": standard ONNX ops only (`edgeforge.ops.decompose`, same code the benchmark times);
  "auto":      per call, the node where the native kernel was measured faster than the
               decomposition on this CPU class, the decomposition elsewhere (`edgeforge.ops.auto`);
               each choice and its reason goes to the `choices` list given to `export_mode`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch.onnx import symbolic_helper

from edgeforge.ops import auto, decompose, reference, schema
from edgeforge.ops.checks import OpInputError, check_gated_attention, check_linear_scan

_state = threading.local()
MODES = ("plugin", "decompose", "auto")


def current_mode() -> str:
    """The custom-op export mode in force ("decompose" unless inside `export_mode`)."""
    return getattr(_state, "mode", "decompose")


@contextlib.contextmanager
def export_mode(mode: str, choices: list | None = None) -> Iterator[None]:
    """Within this block, ONNX exports emit custom nodes ("plugin"), standard ops ("decompose"), or
    either per call ("auto"); `choices` (a list) receives an `auto.Choice` per call in auto mode."""
    if mode not in MODES:
        raise OpInputError(f"custom-op mode must be one of {MODES}, got {mode!r}")
    prev, prev_choices = current_mode(), getattr(_state, "choices", None)
    _state.mode = mode
    _state.choices = choices if choices is not None else []
    try:
        yield
    finally:
        _state.mode = prev
        _state.choices = prev_choices


def _call_mode(op: str, kind: str, size: int) -> str:
    """"plugin" or "decompose" for one call under the mode in force (auto decides per call)."""
    mode = current_mode()
    if mode != "auto":
        return mode
    choice = auto.choose(op, kind, size)
    choices = getattr(_state, "choices", None)
    if choices is not None:
        choices.append(choice)
    return choice.mode


# --------------------------------------------------------------------------- symbolic helpers
@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    # Shape checks read sizes as ints; under tracing that is intended (exports have static shapes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


_NP_DTYPES = {"Float": np.float32, "Half": np.float16, "Double": np.float64}


def _dtype(v) -> Any:
    st = v.type().scalarType()
    if st not in _NP_DTYPES:
        raise OpInputError(f"edgeforge custom ops export float32/float16 tensors; got {st}")
    return _NP_DTYPES[st]


def _static_sizes(v, op: str, what: str) -> list[int]:
    sizes = symbolic_helper._get_tensor_sizes(v)
    if sizes is None or any(s is None for s in sizes):
        raise OpInputError(f"{op}: exporting needs a static shape for {what}; got {sizes} "
                           "(export with a fixed input shape)")
    return [int(s) for s in sizes]


class _TorchEmitter:
    """decompose.Emitter over a TorchScript graph context (`g.op` wants typed attribute names)."""

    def __init__(self, g) -> None:
        self.g = g

    def op(self, op_type: str, *inputs: Any, outputs: int = 1, **attrs: Any):
        typed = {}
        for k, v in attrs.items():
            if isinstance(v, bool) or isinstance(v, int) or (isinstance(v, list) and all(isinstance(x, int) for x in v)):
                typed[f"{k}_i"] = v
            elif isinstance(v, float):
                typed[f"{k}_f"] = v
            elif isinstance(v, str):
                typed[f"{k}_s"] = v
            else:
                raise TypeError(f"attribute {k}={v!r} cannot be emitted by the torch exporter")
        return self.g.op(op_type, *inputs, outputs=outputs, **typed)

    def const(self, value: np.ndarray):
        return self.g.op("Constant", value_t=torch.from_numpy(np.ascontiguousarray(value)))


def _custom(g, op: str, inputs: list, outputs: int, attrs: dict):
    return _TorchEmitter(g).op(f"{schema.DOMAIN}::{op}", *inputs, outputs=outputs, **attrs)


# --------------------------------------------------------------------------- LinearScan
class LinearScanFn(torch.autograd.Function):
    """Export carrier of LinearScan: forward is the torch reference, symbolic per export mode."""

    @staticmethod
    def forward(ctx, a, b, h0, reverse: bool):
        with _quiet_tracer():
            return reference.linear_scan(a, b, h0, reverse)

    @staticmethod
    def symbolic(g, a, b, h0, reverse: bool):
        B, T, C = _static_sizes(a, "LinearScan", "a (B, T, C)")
        if _call_mode(schema.LINEAR_SCAN, "scan", T) == "plugin":
            ins = [a, b] + ([h0] if h0 is not None and not symbolic_helper._is_none(h0) else [])
            h, last = _custom(g, schema.LINEAR_SCAN, ins, 2, schema.linear_scan_attrs(reverse))
            h.setType(a.type())
            last.setType(a.type().with_sizes([B, C]))
            return h, last
        h0 = None if h0 is None or symbolic_helper._is_none(h0) else h0
        forms = {"unrolled": decompose.linear_scan_unrolled, "parallel": decompose.linear_scan_parallel}
        return forms[decompose.BEST_SCAN_FORM](_TorchEmitter(g), a, b, h0, T, bool(reverse), _dtype(a))


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False):
    """h_t = a_t * h_{t-1} + b_t over dim 1 of (B, T, C); returns (all states, last state (B, C))."""
    if isinstance(a, torch.fx.Proxy):
        # torch.fx capture (quantization simulation): one opaque call, as the scan is one node
        # (or an elementwise chain the quantizer leaves in float) in the exported graph.
        return a.tracer.create_proxy("call_function", _linear_scan_eager, (a, b, h0, bool(reverse)), {})
    with _quiet_tracer():
        check_linear_scan(a.shape, b.shape, None if h0 is None else h0.shape)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return LinearScanFn.apply(a, b, h0, bool(reverse))
    return reference.linear_scan(a, b, h0, reverse)


def _linear_scan_eager(a, b, h0, reverse):
    return reference.linear_scan(a, b, h0, reverse)


# --------------------------------------------------------------------------- GatedAttention
class GatedAttentionFn(torch.autograd.Function):
    """Export carrier of GatedAttention: forward is the torch reference, symbolic per export mode."""

    @staticmethod
    def forward(ctx, q, k, v, bias, log_f, scale: float, causal: bool):
        with _quiet_tracer():
            return reference.gated_attention(q, k, v, bias, log_f, scale, causal)

    @staticmethod
    def symbolic(g, q, k, v, bias, log_f, scale: float, causal: bool):
        bias = None if bias is None or symbolic_helper._is_none(bias) else bias
        log_f = None if log_f is None or symbolic_helper._is_none(log_f) else log_f
        B, H, N, D = _static_sizes(q, "GatedAttention", "q (B, H, N, D)")
        M = _static_sizes(k, "GatedAttention", "k (B, H, M, D)")[2]
        Dv = _static_sizes(v, "GatedAttention", "v (B, H, M, Dv)")[3]
        kind = "log_f" if log_f is not None else ("bias" if bias is not None else "plain")
        if _call_mode(schema.GATED_ATTENTION, kind, N) == "plugin":
            ins = [q, k, v] + [x for x in (bias, log_f) if x is not None]
            o = _custom(g, schema.GATED_ATTENTION, ins, 1,
                        schema.gated_attention_attrs(scale, causal, bias is not None, log_f is not None))
            o.setType(q.type().with_sizes([B, H, N, Dv]))
            return o
        return decompose.gated_attention(_TorchEmitter(g), q, k, v, bias, log_f, float(scale), bool(causal),
                                         N, M, _dtype(q))


def gated_attention(q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False):
    """softmax(scale * q k^T + bias [+ c_i - c_j, c = cumsum(log_f)]) v; see edgeforge.ops."""
    if isinstance(q, torch.fx.Proxy):  # torch.fx capture: op by op, as the decomposition exports it
        return reference.gated_attention_graph(q, k, v, bias, log_f, scale, causal)
    with _quiet_tracer():
        check_gated_attention(q.shape, k.shape, v.shape, None if bias is None else bias.shape,
                              None if log_f is None else log_f.shape, causal)
        scale = reference.default_scale(int(q.shape[-1])) if scale is None else float(scale)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return GatedAttentionFn.apply(q, k, v, bias, log_f, scale, bool(causal or log_f is not None))
    return reference.gated_attention(q, k, v, bias, log_f, scale, causal)
