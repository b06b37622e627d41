"""Find and load the built native custom-op libraries (torch-free).

- `ort_library_path()` / `register_ort(session_options)`: the ONNX Runtime CPU custom-op library;
  runtimes call `register_ort` when a model has `edgeforge`-domain nodes.
- `trt_plugin_library_path()`: the TensorRT plugin library (load it with
  `tensorrt.get_plugin_registry().load_library(path)` before parsing an ONNX with custom nodes).
- `cpu_core()`: the CPU math cores through their C ABI (ctypes), numpy in and out.
- `isa_info()` / `isa_path(name)`: which instruction-set path the kernels take on this CPU
  (avx512, avx2, generic; chosen when the library loads, capped by EDGEFORGE_MAX_ISA) and a
  context manager that switches both native libraries to another path (tests run every path).

Libraries are looked up in `$EDGEFORGE_PLUGIN_DIR`, then in the repository's plugins/build (where
`edgeforge plugins build` puts them).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path

import numpy as np

from edgeforge.ops import schema
from edgeforge.ops.checks import OpInputError, check_gated_attention, check_linear_scan

ORT_LIBRARY = "libedgeforge_ort.so"
TRT_LIBRARY = "libedgeforge_trt.so"
CPU_LIBRARY = "libedgeforge_ops_cpu.so"
# The portable library's instruction-set paths, best first ("native" only in an EDGEFORGE_NATIVE build).
ISA_PATHS = ("avx512", "avx2", "generic")
MAX_ISA_ENV = "EDGEFORGE_MAX_ISA"
_REPO_BUILD = Path(__file__).resolve().parents[2] / "plugins" / "build"


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEFORGE_PLUGIN_DIR", "").split(os.pathsep) if p]
    return dirs + [_REPO_BUILD]


def _find(name: str) -> Path | None:
    for d in search_dirs():
        if (d / name).is_file():
            return d / name
    return None


def ort_library_path() -> Path | None:
    """Path of the ONNX Runtime custom-op library, or None if it is not built."""
    return _find(ORT_LIBRARY)


def trt_plugin_library_path() -> Path | None:
    """Path of the TensorRT plugin library (IPluginV3 creators via getCreators), or None."""
    return _find(TRT_LIBRARY)


# The name edgeforge.runtimes.tensorrt looks up.
tensorrt_plugin_path = trt_plugin_library_path


def register_ort(session_options) -> bool:
    """Register the edgeforge ops with an onnxruntime.SessionOptions; False if the library is not built."""
    path = ort_library_path()
    if path is None:
        return False
    session_options.register_custom_ops_library(str(path))
    return True


def uses_custom_ops(model) -> bool:
    """Whether an onnx.ModelProto (or a path to one) has nodes in the edgeforge domain."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return any(n.domain == schema.DOMAIN for n in model.graph.node)


# --------------------------------------------------------------------------- CPU core via ctypes
_F32P = ctypes.POINTER(ctypes.c_float)
_I64P = ctypes.POINTER(ctypes.c_int64)


def _ptr(x: np.ndarray | None):
    return None if x is None else x.ctypes.data_as(_F32P)


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class CpuCore:
    """The CPU math cores (libedgeforge_ops_cpu.so) with numpy arrays; fp32, single-threaded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.ef_linear_scan_f32.restype = ctypes.c_int32
        lib.ef_linear_scan_f32.argtypes = [_F32P, _F32P, _F32P, _F32P, _F32P, ctypes.c_int64, ctypes.c_int64,
                                           ctypes.c_int64, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int64]
        lib.ef_gated_attention_f32.restype = ctypes.c_int32
        lib.ef_gated_attention_f32.argtypes = [_F32P, _F32P, _F32P, _F32P, _I64P, _F32P, _F32P] + [ctypes.c_int64] * 6 + [
            ctypes.c_float, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int64]
        self._lib = lib

    @staticmethod
    def _raise(status: int, err: ctypes.Array) -> None:
        if status != 0:
            raise OpInputError(err.value.decode(errors="replace") or f"native op failed with status {status}")

    def linear_scan(self, a, b, h0=None, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        a, b = _f32(a), _f32(b)
        h0 = None if h0 is None else _f32(h0)
        B, T, C = check_linear_scan(a.shape, b.shape, None if h0 is None else h0.shape)
        h, last = np.empty_like(b), np.empty((B, C), dtype=np.float32)
        err = ctypes.create_string_buffer(512)
        st = self._lib.ef_linear_scan_f32(_ptr(a), _ptr(b), _ptr(h0), _ptr(h), _ptr(last), B, T, C, int(bool(reverse)),
                                          err, len(err))
        self._raise(st, err)
        return h, last

    def gated_attention(self, q, k, v, bias=None, log_f=None, scale: float | None = None,
                        causal: bool = False) -> np.ndarray:
        q, k, v = _f32(q), _f32(k), _f32(v)
        bias = None if bias is None else _f32(bias)
        log_f = None if log_f is None else _f32(log_f)
        B, H, N, M, D, Dv = check_gated_attention(q.shape, k.shape, v.shape, None if bias is None else bias.shape,
                                                  None if log_f is None else log_f.shape, causal)
        scale = 1.0 / float(np.sqrt(D)) if scale is None else float(scale)
        shape4 = None
        if bias is not None:
            shape4 = np.asarray((1,) * (4 - bias.ndim) + bias.shape, dtype=np.int64)
        o = np.empty((B, H, N, Dv), dtype=np.float32)
        err = ctypes.create_string_buffer(512)
        st = self._lib.ef_gated_attention_f32(
            _ptr(q), _ptr(k), _ptr(v), _ptr(bias), None if shape4 is None else shape4.ctypes.data_as(_I64P),
            _ptr(log_f), _ptr(o), B, H, N, M, D, Dv, scale, int(bool(causal)), err, len(err))
        self._raise(st, err)
        return o


@functools.lru_cache(maxsize=None)
def _load_cpu_core(path: str) -> CpuCore:
    return CpuCore(Path(path))


def cpu_core() -> CpuCore | None:
    """The CPU math core library, or None if it is not built."""
    path = _find(CPU_LIBRARY)
    return None if path is None else _load_cpu_core(str(path))


# --------------------------------------------------------------------------- instruction-set paths
@functools.lru_cache(maxsize=None)
def _isa_lib(path: str) -> ctypes.CDLL | None:
    """A native library's path-selection ABI (ef_cpu_isa*), or None for a library built without it.

    ctypes opens the same file ONNX Runtime does (dlopen hands back the one loaded copy), so a
    switch made here holds for the kernels of every session in this process."""
    lib = ctypes.CDLL(path)
    try:
        for name in ("ef_cpu_isa", "ef_cpu_isa_paths", "ef_cpu_isa_built", "ef_cpu_isa_note"):
            getattr(lib, name).restype = ctypes.c_char_p
        lib.ef_cpu_set_isa.restype = ctypes.c_int32
        lib.ef_cpu_set_isa.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64]
    except AttributeError:
        return None
    return lib


def _isa_libs() -> dict[str, ctypes.CDLL]:
    libs = {}
    for which, name in (("cpu", CPU_LIBRARY), ("ort", ORT_LIBRARY)):
        path = _find(name)
        lib = None if path is None else _isa_lib(str(path))
        if lib is not None:
            libs[which] = lib
    return libs


def isa_info() -> dict | None:
    """The CPU kernels' instruction-set path here: {"path", "runs" (the built paths this CPU can
    run, best first), "built", "note" (how it was chosen)}, from the CPU core library (or the ONNX
    Runtime kernel library); None if neither is built."""
    libs = _isa_libs()
    lib = libs.get("cpu") or libs.get("ort")
    if lib is None:
        return None
    split = (lambda b: [p for p in b.decode().split(",") if p])
    return {"path": lib.ef_cpu_isa().decode(), "runs": split(lib.ef_cpu_isa_paths()),
            "built": split(lib.ef_cpu_isa_built()), "note": lib.ef_cpu_isa_note().decode()}


def isa_unavailable(path: str) -> str | None:
    """Why the kernels cannot take instruction-set path `path` here (not built, CPU lacks it), or None."""
    info = isa_info()
    if info is None:
        return "no native library is built (edgeforge plugins build)"
    if path not in info["built"]:
        return f"the {path} path is not in this build (built: {', '.join(info['built'])})"
    if path not in info["runs"]:
        return f"this CPU cannot run the {path} path (it runs: {', '.join(info['runs'])})"
    return None


@contextlib.contextmanager
def isa_path(path: str):
    """Run the native kernels (CPU core and ONNX Runtime kernels) on instruction-set path `path`
    inside the block; the previous path comes back afterwards. Raises OpInputError if it cannot."""
    why = isa_unavailable(path)
    if why:
        raise OpInputError(why)
    libs = _isa_libs()
    before = {which: lib.ef_cpu_isa() for which, lib in libs.items()}
    try:
        for lib in libs.values():
            err = ctypes.create_string_buffer(256)
            if lib.ef_cpu_set_isa(path.encode(), err, len(err)) != 0:
                raise OpInputError(err.value.decode(errors="replace"))
        yield
    finally:
        for which, lib in libs.items():
            lib.ef_cpu_set_isa(before[which], None, 0)
