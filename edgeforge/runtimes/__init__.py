"""Runtimes behind one Runner protocol (see `edgeforge.runtimes.base`).

Backends: `onnxruntime` (CPU, CUDA, TensorRT EPs), `openvino` (CPU), `tensorrt` (native
engines), `coreml` (conversion anywhere, prediction on macOS) and `remote` (an edgeforge agent on
a device). Each backend module is imported only when used, so this package imports without
torch and without any optional runtime installed.

    from edgeforge.runtimes import create_runner
    with create_runner("onnxruntime", "art/fp32/model.onnx", provider="cpu") as r:
        out = r.infer({"input": x})
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes.base import Runner, RunnerInfo, TensorSpec

__all__ = ["Runner", "RunnerInfo", "TensorSpec", "RUNNERS", "create_runner", "probe_runtime"]

# runtime name -> (module, Runner class)
RUNNERS = {
    "onnxruntime": ("edgeforge.runtimes.onnxruntime", "OnnxRuntimeRunner"),
    "openvino": ("edgeforge.runtimes.openvino", "OpenVINORunner"),
    "tensorrt": ("edgeforge.runtimes.tensorrt", "TensorRTRunner"),
    "coreml": ("edgeforge.runtimes.coreml", "CoreMLRunner"),
    "remote": ("edgeforge.runtimes.remote", "RemoteRunner"),
}


def runner_class(runtime: str) -> type[Runner]:
    if runtime not in RUNNERS:
        raise BadInput(f"runtime {runtime!r} is not one of {sorted(RUNNERS)}")
    module, cls = RUNNERS[runtime]
    return getattr(importlib.import_module(module), cls)


def create_runner(runtime: str, model_path: str | os.PathLike, **options: Any) -> Runner:
    """A (not yet active) Runner for `model_path` with the runtime's options."""
    return runner_class(runtime)(model_path, **options)


def probe_runtime(runtime: str, options: dict | None = None) -> str | None:
    """None when `runtime` (with `options`) can run here; otherwise the reason it cannot."""
    options = options or {}
    try:
        if runtime == "onnxruntime":
            from edgeforge.runtimes.onnxruntime import PROVIDERS, _import_ort

            ort = _import_ort()
            wanted = PROVIDERS.get(options.get("provider", "cpu"))
            if wanted not in ort.get_available_providers():
                return f"ONNX Runtime {ort.__version__} has no {wanted} here (has {ort.get_available_providers()})"
        elif runtime == "openvino":
            from edgeforge.runtimes.openvino import available_devices

            device = options.get("device", "CPU")
            if device not in available_devices():
                return f"OpenVINO device {device} is not available here ({available_devices()})"
        elif runtime == "tensorrt":
            from edgeforge.runtimes.tensorrt import import_tensorrt

            import_tensorrt()
        elif runtime == "coreml":
            from edgeforge.runtimes.coreml import can_predict, import_coremltools

            ok, why = can_predict()  # before importing coremltools, which imports torch when present
            if not ok:
                return why
            import_coremltools()
        else:
            return f"runtime {runtime!r} cannot run locally"
    except NotAvailable as e:
        return str(e)
    return None
