"""The few CUDA runtime calls the TensorRT runner needs, through ctypes on libcudart.

Using ctypes keeps the TensorRT path free of torch and of extra Python packages: a Jetson image
ships libcudart and TensorRT, and that is all this needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from pathlib import Path

from edgeforge.errors import NotAvailable

MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76

_CANDIDATES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def _pip_cudart() -> list[str]:
    """libcudart from the nvidia-cuda-runtime wheel that pip-installed TensorRT brings along."""
    try:
        import nvidia.cuda_runtime as pkg
    except ImportError:
        return []
    found = []
    for root in getattr(pkg, "__path__", []):
        found += sorted(str(p) for p in Path(root, "lib").glob("libcudart.so*"))
    return found


@lru_cache(maxsize=1)
def cudart() -> ctypes.CDLL:
    """Load libcudart (raises NotAvailable saying what was tried)."""
    names = [n for n in (ctypes.util.find_library("cudart"),) if n] + list(_CANDIDATES) + _pip_cudart()
    errors = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
            continue
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NotAvailable("the CUDA runtime (libcudart) was not found: " + "; ".join(errors))


def check(status: int, what: str) -> None:
    if status != 0:
        msg = cudart().cudaGetErrorString(status).decode()
        raise RuntimeError(f"CUDA {what} failed: {msg} ({status})")


def device_count() -> int:
    n = ctypes.c_int(0)
    status = cudart().cudaGetDeviceCount(ctypes.byref(n))
    return n.value if status == 0 else 0


def compute_capability(device: int = 0) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(cudart().cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
    check(cudart().cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


def runtime_version() -> str:
    v = ctypes.c_int()
    check(cudart().cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


class DeviceBuffer:
    """A device allocation of `nbytes`, freed by `free()`."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = ctypes.c_void_p()
        check(cudart().cudaMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(self.nbytes)), "cudaMalloc")

    def free(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr = ctypes.c_void_p()


class Stream:
    def __init__(self):
        self.handle = ctypes.c_void_p()
        check(cudart().cudaStreamCreate(ctypes.byref(self.handle)), "cudaStreamCreate")

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle:
            cudart().cudaStreamDestroy(self.handle)
            self.handle = ctypes.c_void_p()


def memcpy_async(dst: int, src: int, nbytes: int, kind: int, stream: Stream) -> None:
    check(
        cudart().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                 kind, stream.handle),
        "cudaMemcpyAsync",
    )
