"""Every implementation of the custom ops, by name, behind one numpy-in/numpy-out call.

The parity tests and the benchmark run the same case through each implementation that is present
here and skip the others with the reason (`unavailable(name)`):
  torch          the torch reference (edgeforge.ops.reference)
  numpy          the float64 numpy reference
  onnx-<form>    the standard-ONNX decompositions on ONNX Runtime CPU (LinearScan: unrolled,
                 parallel, loop; GatedAttention: decompose)
  cpu-core       the C++ math core through its C ABI (ctypes)
  ort-kernel     one edgeforge:: node on ONNX Runtime CPU through the custom-op library
  tensorrt       one edgeforge:: node through the TensorRT plugin (GPU)
  cpu-core@<isa>, ort-kernel@<isa>
                 the same on one instruction-set path of the portable library (avx512, avx2,
                 generic; `native.isa_path`): every path this CPU can execute is checked, not only
                 the one it picks
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeforge.ops import decompose, native, numpy_ref

NATIVE_ON_PATHS = tuple(f"{impl}@{isa}" for impl in ("cpu-core", "ort-kernel") for isa in native.ISA_PATHS)
SCAN_IMPLS = ("torch", "numpy", *(f"onnx-{f}" for f in decompose.SCAN_FORMS), "cpu-core", "ort-kernel", "tensorrt",
              *NATIVE_ON_PATHS)
ATTENTION_IMPLS = ("torch", "numpy", "onnx-decompose", "cpu-core", "ort-kernel", "tensorrt", *NATIVE_ON_PATHS)


def _on_path(name: str):
    """(implementation, context) for a name with an optional @<isa> instruction-set path."""
    impl, _, isa = name.partition("@")
    return impl, (native.isa_path(isa) if isa else contextlib.nullcontext())


def unavailable(name: str) -> str | None:
    """Why implementation `name` cannot run here, or None when it can."""
    name, _, isa = name.partition("@")
    if isa:
        return unavailable(name) or native.isa_unavailable(isa)
    if name == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed"
    elif name == "cpu-core" and native.cpu_core() is None:
        return "the CPU core library is not built (edgeforge plugins build)"
    elif name == "ort-kernel" and native.ort_library_path() is None:
        return ("the ONNX Runtime custom-op library is not built (edgeforge plugins build; it needs ONNX Runtime's "
                "C/C++ headers)")
    elif name == "tensorrt":
        from edgeforge.ops import tensorrt_check

        ok, why = tensorrt_check.available()
        return None if ok else why
    return None


def ort_session(model_bytes: bytes, custom_ops: bool, threads: int = 1):
    """An ONNX Runtime CPU session (with the edgeforge custom-op library when custom_ops)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if custom_ops and not native.register_ort(so):
        raise RuntimeError(unavailable("ort-kernel"))
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=64)
def _scan_session(form: str, B: int, T: int, C: int, has_h0: bool, reverse: bool, threads: int):
    model = decompose.linear_scan_model(B, T, C, form, has_h0=has_h0, reverse=reverse)
    return ort_session(model.SerializeToString(), custom_ops=form == "plugin", threads=threads), model


@functools.lru_cache(maxsize=64)
def _attention_session(form: str, shapes: tuple, bias_shape, has_log_f: bool, scale: float, causal: bool, threads: int):
    B, H, N, M, D, Dv = shapes
    model = decompose.gated_attention_model(B, H, N, M, D, Dv, form, bias_shape=bias_shape, has_log_f=has_log_f,
                                            scale=scale, causal=causal)
    return ort_session(model.SerializeToString(), custom_ops=form == "plugin", threads=threads), model


def _run_tensorrt(model, feeds: dict) -> list[np.ndarray]:
    from edgeforge.ops import tensorrt_check

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "op.onnx"
        path.write_bytes(model.SerializeToString())
        out = tensorrt_check.run_onnx(path, feeds)
    return [out[o.name] for o in model.graph.output]


def linear_scan(name: str, a, b, h0=None, reverse: bool = False, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Run LinearScan with implementation `name` on float32 numpy arrays; returns (h, h_last)."""
    if "@" in name:
        impl, path = _on_path(name)
        with path:
            return linear_scan(impl, a, b, h0, reverse, threads)
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    h0 = None if h0 is None else np.ascontiguousarray(h0, np.float32)
    if name == "torch":
        import torch

        from edgeforge.ops import reference

        h, last = reference.linear_scan(torch.from_numpy(a), torch.from_numpy(b),
                                        None if h0 is None else torch.from_numpy(h0), reverse)
        return h.numpy(), last.numpy()
    if name == "numpy":
        return numpy_ref.linear_scan(a, b, h0, reverse)
    if name == "cpu-core":
        return native.cpu_core().linear_scan(a, b, h0, reverse)
    feeds = {"a": a, "b": b, **({"h0": h0} if h0 is not None else {})}
    form = {"ort-kernel": "plugin", "tensorrt": "plugin"}.get(name, name.removeprefix("onnx-"))
    sess, model = _scan_session(form, *a.shape, h0 is not None, bool(reverse), threads)
    if name == "tensorrt":
        return tuple(_run_tensorrt(model, feeds))
    return tuple(sess.run(None, feeds))


def gated_attention(name: str, q, k, v, bias=None, log_f=None, scale: float | None = None, causal: bool = False,
                    threads: int = 1) -> np.ndarray:
    """Run GatedAttention with implementation `name` on float32 numpy arrays."""
    if "@" in name:
        impl, path = _on_path(name)
        with path:
            return gated_attention(impl, q, k, v, bias, log_f, scale, causal, threads)
    q, k, v = (np.ascontiguousarray(x, np.float32) for x in (q, k, v))
    bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
    log_f = None if log_f is None else np.ascontiguousarray(log_f, np.float32)
    scale = 1.0 / float(np.sqrt(q.shape[-1])) if scale is None else float(scale)
    if name == "torch":
        import torch

        from edgeforge.ops import reference

        t = (lambda x: None if x is None else torch.from_numpy(x))
        return reference.gated_attention(t(q), t(k), t(v), t(bias), t(log_f), scale, causal).numpy()
    if name == "numpy":
        return numpy_ref.gated_attention(q, k, v, bias, log_f, scale, causal)
    if name == "cpu-core":
        return native.cpu_core().gated_attention(q, k, v, bias, log_f, scale, causal)
    form = {"ort-kernel": "plugin", "tensorrt": "plugin", "onnx-decompose": "decompose"}[name]
    shapes = (*q.shape, k.shape[2], v.shape[3])
    shapes = (shapes[0], shapes[1], shapes[2], shapes[4], shapes[3], shapes[5])  # B, H, N, M, D, Dv
    sess, model = _attention_session(form, shapes, None if bias is None else tuple(bias.shape), log_f is not None,
                                     scale, bool(causal), threads)
    feeds = {"q": q, "k": k, "v": v, **({"bias": bias} if bias is not None else {}),
             **({"log_f": log_f} if log_f is not None else {})}
    if name == "tensorrt":
        return _run_tensorrt(model, feeds)[0]
    return sess.run(None, feeds)[0]


RUNNERS: dict[str, Callable] = {"LinearScan": linear_scan, "GatedAttention": gated_attention}
