"""The TensorRT path of the custom ops: load the plugin library, parse an ONNX with edgeforge
nodes, build an engine, run it (numpy in and out). Torch-free; needs `tensorrt` and `cuda-python`
(the `tensorrt` extra) and an NVIDIA GPU. `available()` says whether this machine can run it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeforge.errors import CheckFailed, NotAvailable
from edgeforge.ops import native

_LOADED: dict[str, object] = {}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def available() -> tuple[bool, str]:
    """(True, "") when tensorrt, cuda-python, a GPU and the built plugin library are all present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return False, f"tensorrt is not installed ({e}); pip install 'edgeforge[tensorrt]'"
    try:
        cudart = _cudart()
    except ImportError as e:
        return False, f"cuda-python is not installed ({e})"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return False, "no CUDA GPU on this machine"
    if native.trt_plugin_library_path() is None:
        return False, "the TensorRT plugin library is not built (run `edgeforge plugins build`)"
    return True, ""


def _check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CheckFailed(f"CUDA call {what} failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


def load_plugins(trt) -> None:
    """Register the edgeforge IPluginV3 creators with TensorRT's plugin registry (once per process)."""
    path = native.trt_plugin_library_path()
    if path is None:
        raise NotAvailable("the TensorRT plugin library is not built; run `edgeforge plugins build`")
    if str(path) not in _LOADED:
        handle = trt.get_plugin_registry().load_library(str(path))
        if handle is None:
            raise CheckFailed(f"TensorRT could not load the plugin library {path}")
        _LOADED[str(path)] = handle


def build_engine(onnx_path: str | Path, fp16: bool = False, workspace_bytes: int = 1 << 30) -> bytes:
    """Parse the ONNX (custom nodes resolve to the edgeforge plugins) and build a serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    load_plugins(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise CheckFailed(f"TensorRT could not build an engine from {onnx_path}")
    return bytes(engine)


def run_engine(engine_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a serialized engine once on the given inputs; returns every output by name."""
    import tensorrt as trt

    cudart = _cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugins(trt)
    runtime = trt.Runtime(logger)  # must outlive the engine
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise CheckFailed("TensorRT could not deserialize the engine")
    context = engine.create_execution_context()
    stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
    buffers, outputs = [], {}
    try:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = np.ascontiguousarray(feeds[name], dtype=dtype)
                context.set_input_shape(name, host.shape)
                ptr = _check(cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc")
                buffers.append(ptr)
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy H2D")
                context.set_tensor_address(name, int(ptr))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                host = np.empty(tuple(context.get_tensor_shape(name)), dtype=dtype)
                ptr = _check(cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc")
                buffers.append(ptr)
                context.set_tensor_address(name, int(ptr))
                outputs[name] = (host, ptr)
        if not context.execute_async_v3(int(stream)):
            raise CheckFailed("TensorRT execution failed")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        for name, (host, ptr) in outputs.items():
            _check(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy D2H")
        return {name: host for name, (host, _) in outputs.items()}
    finally:
        for ptr in buffers:
            cudart.cudaFree(ptr)
        cudart.cudaStreamDestroy(stream)


def run_onnx(onnx_path: str | Path, feeds: dict[str, np.ndarray], fp16: bool = False) -> dict[str, np.ndarray]:
    """Build an engine from the ONNX (with the edgeforge plugins) and run it once."""
    return run_engine(build_engine(onnx_path, fp16=fp16), feeds)
