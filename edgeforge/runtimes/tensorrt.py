"""TensorRT backend (native API, no ONNX Runtime in between).

The engine is built from the ONNX file with the edgeforge plugin library loaded (for
`edgeforge::` custom ops), at FP32, FP16, or INT8 from the model's QDQ nodes (explicit
quantization: FP16 is enabled beside INT8 so that layers left unquantized, such as LayerNorm
and softmax, run in FP16). Builds are slow, so two caches are kept:

- a timing cache (`timing.cache`) shared across builds on the same GPU, and
- an engine cache: `<key>.engine`, where the key hashes everything that changes the engine
  (ONNX sha256, plugin library sha256, precision, workspace, TensorRT version, GPU compute
  capability). A cached engine is only reused when every one of those is the same.

Memory and streams go through `edgeforge.runtimes._cuda` (ctypes on libcudart), keeping this
module free of torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from edgeforge.artifacts import atomic_path, sha256_file, sha256_json
from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes import _cuda
from edgeforge.runtimes.base import Runner, RunnerInfo, TensorSpec
from edgeforge.runtimes.onnxruntime import CUSTOM_DOMAIN, custom_domains

PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt():
    """Import TensorRT and check that a CUDA GPU is visible (NotAvailable with the reason otherwise)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NotAvailable(f"TensorRT is not installed ({e}); pip install 'edgeforge[tensorrt]' on a machine with an NVIDIA GPU") from e
    if _cuda.device_count() < 1:
        raise NotAvailable("no CUDA GPU is visible (cudaGetDeviceCount returned 0)")
    return trt


def plugin_library_path() -> Path | None:
    """The edgeforge TensorRT plugin library, if `edgeforge.ops.native` can locate a built one."""
    try:
        from edgeforge.ops import native
    except ImportError:
        return None
    finder = getattr(native, "trt_plugin_library_path", None) or getattr(native, "tensorrt_plugin_path", None)
    if finder is None:
        return None
    try:
        path = finder()
    except Exception:
        return None
    return Path(path) if path else None


def engine_cache_key(onnx_path: Path, precision: str, plugin_library: Path | None, workspace_mb: int,
                     trt_version: str, compute_capability: str) -> str:
    return sha256_json({
        "onnx": sha256_file(onnx_path),
        "plugin": sha256_file(plugin_library) if plugin_library else None,
        "precision": precision,
        "workspace_mb": workspace_mb,
        "tensorrt": trt_version,
        "sm": compute_capability,
    })[:32]


class _Logger:
    """One TensorRT logger per process (TensorRT warns when several are created)."""

    instance = None

    @classmethod
    def get(cls, trt):
        if cls.instance is None:
            cls.instance = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(cls.instance, "")
        return cls.instance


def _load_plugins(trt, plugin_library: Path | None) -> None:
    if plugin_library is not None:
        trt.get_plugin_registry().load_library(str(plugin_library))


def build_engine(
    onnx_path: str | os.PathLike,
    precision: str = "fp16",
    cache_dir: str | os.PathLike | None = None,
    plugin_library: str | os.PathLike | None = None,
    workspace_mb: int = 2048,
    batch: int = 1,
) -> tuple[Path, bool]:
    """Build (or reuse from the cache) a serialized engine for `onnx_path`; return (path, from_cache)."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if precision not in PRECISIONS:
        raise BadInput(f"TensorRT precision {precision!r} is not one of {PRECISIONS}")
    plugin = Path(plugin_library) if plugin_library else plugin_library_path()
    if plugin is None and CUSTOM_DOMAIN in custom_domains(onnx_path):
        raise NotAvailable(
            f"{onnx_path} uses {CUSTOM_DOMAIN}:: custom ops and no TensorRT plugin library was found; "
            f"run `edgeforge plugins build` or export with `--custom-ops decompose`"
        )
    logger = _Logger.get(trt)
    _load_plugins(trt, plugin)
    cache_dir = Path(cache_dir) if cache_dir else onnx_path.parent / "trt-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = engine_cache_key(onnx_path, precision, plugin, workspace_mb, trt.__version__, _cuda.compute_capability())
    engine_path = cache_dir / f"{key}.engine"
    if engine_path.is_file():
        return engine_path, True

    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BadInput(f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        # Explicit quantization: scales come from the QDQ nodes, no calibrator is used.
        config.set_flag(trt.BuilderFlag.INT8)
    # Dynamic dimensions get one optimization profile at the benchmarked shape.
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            shape = tuple(batch if (i == 0 and d == -1) else (1 if d == -1 else d) for i, d in enumerate(t.shape))
            profile.set_shape(t.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    timing_path = cache_dir / "timing.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BadInput(f"{onnx_path}: TensorRT could not build a {precision} engine (see the TensorRT log above)")
    with atomic_path(timing_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return engine_path, False


class TensorRTRunner(Runner):
    """Runs a TensorRT engine, built from ONNX on first activation (cached, see module docstring).

    Args:
        model_path: an .onnx file (built into an engine) or a serialized .engine/.plan.
        precision: "fp32", "fp16" or "int8" (INT8 needs a QDQ model).
        cache_dir: engine and timing cache folder (default: beside the ONNX file).
        plugin_library: the edgeforge TensorRT plugin library (default: found by edgeforge.ops.native).
    """

    runtime_name = "tensorrt"

    def __init__(self, model_path: str | os.PathLike, precision: str = "fp16",
                 cache_dir: str | os.PathLike | None = None, plugin_library: str | os.PathLike | None = None,
                 workspace_mb: int = 2048, batch: int = 1, name: str | None = None):
        super().__init__(name or f"tensorrt-{precision}")
        self.model_path = Path(model_path)
        self.precision = precision
        self.cache_dir = cache_dir
        self.plugin_library = plugin_library
        self.workspace_mb = workspace_mb
        self.batch = batch
        self.engine_path: Path | None = None
        self.engine_from_cache = False
        self._runtime = self._engine = self._context = self._stream = None
        self._buffers: dict[str, _cuda.DeviceBuffer] = {}
        self._host_out: dict[str, np.ndarray] = {}
        self._inputs: list[TensorSpec] = []
        self._outputs: list[str] = []

    def _activate(self) -> None:
        trt = import_tensorrt()
        if self.model_path.suffix == ".onnx":
            self.engine_path, self.engine_from_cache = build_engine(
                self.model_path, self.precision, self.cache_dir, self.plugin_library, self.workspace_mb, self.batch)
        else:
            self.engine_path = self.model_path
        # The plugin library must be loaded before deserializing an engine that uses its plugins.
        plugin = Path(self.plugin_library) if self.plugin_library else plugin_library_path()
        logger = _Logger.get(trt)
        _load_plugins(trt, plugin)
        # The runtime must outlive the engine it deserializes: keep a reference.
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise BadInput(f"{self.engine_path}: TensorRT could not deserialize the engine (built by another version or GPU?)")
        self._context = self._engine.create_execution_context()
        self._stream = _cuda.Stream()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                spec = TensorSpec(name, tuple(d if d >= 0 else None for d in shape), dtype.name)
                self._inputs.append(spec)
                self._context.set_input_shape(name, spec.concrete_shape(self.batch))
            else:
                self._outputs.append(name)
        # Allocate once, at the (now fully known) shapes; infer() only copies.
        for name in [s.name for s in self._inputs] + self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            buf = _cuda.DeviceBuffer(int(np.prod(shape)) * dtype.itemsize)
            self._buffers[name] = buf
            self._context.set_tensor_address(name, buf.ptr.value)
            if name in self._outputs:
                self._host_out[name] = np.empty(shape, dtype=dtype)

    def _deactivate(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        self._host_out.clear()
        if self._stream is not None:
            self._stream.destroy()
        # Context before engine before runtime: TensorRT objects are released in that order.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._inputs, self._outputs = [], []

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        held = []
        for spec in self._inputs:
            arr = np.ascontiguousarray(feed[spec.name])
            held.append(arr)  # keep the host array alive until the stream has copied it
            _cuda.memcpy_async(self._buffers[spec.name].ptr.value, arr.ctypes.data, arr.nbytes,
                               _cuda.MEMCPY_HOST_TO_DEVICE, self._stream)
        if not self._context.execute_async_v3(self._stream.handle.value):
            raise RuntimeError(f"{self.engine_path}: TensorRT execution failed")
        for name in self._outputs:
            out = self._host_out[name]
            _cuda.memcpy_async(out.ctypes.data, self._buffers[name].ptr.value, out.nbytes,
                               _cuda.MEMCPY_DEVICE_TO_HOST, self._stream)
        self._stream.synchronize()
        return {name: self._host_out[name].copy() for name in self._outputs}

    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def info(self) -> RunnerInfo:
        import tensorrt as trt

        return RunnerInfo(
            runtime="tensorrt",
            version=trt.__version__,
            device=f"CUDA sm_{_cuda.compute_capability().replace('.', '')}",
            options={"precision": self.precision, "workspace_mb": self.workspace_mb,
                     "engine": str(self.engine_path), "engine_from_cache": self.engine_from_cache},
            versions={"tensorrt": trt.__version__, "cudart": _cuda.runtime_version()},
        )


def compile_engine(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, precision: str,
                   plugin_library: str | os.PathLike | None = None) -> list[Path]:
    """Build the engine for `onnx_path` and place it at `out_dir/model.engine`."""
    out_dir = Path(out_dir)
    engine, _ = build_engine(onnx_path, precision, cache_dir=out_dir / "cache", plugin_library=plugin_library)
    final = out_dir / "model.engine"
    with atomic_path(final) as tmp:
        tmp.write_bytes(engine.read_bytes())
    return [final]

