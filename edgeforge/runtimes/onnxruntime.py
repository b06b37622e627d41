"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

When the model contains `edgeforge`-domain nodes (custom ops kept in plugin mode), the edgeforge
custom-op library is registered on the session options through `edgeforge.ops.native`; without
it such a model cannot run, and the error says how to get it (build the plugins, or export with
`--custom-ops decompose`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes.base import ONNX_TYPE_TO_NUMPY, Runner, RunnerInfo, TensorSpec

CUSTOM_DOMAIN = "edgeforge"

# Provider short names accepted in target profiles -> ONNX Runtime provider names.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise NotAvailable(f"onnxruntime is not installed ({e}); pip install onnxruntime") from e
    return ort


def custom_domains(model_path: str | os.PathLike) -> set[str]:
    """Non-standard op domains used by the model (reads the graph, not the weights)."""
    try:
        import onnx
    except ImportError:  # a device with only the runtime: custom ops are then found at load time
        return set()
    model = onnx.load(str(model_path), load_external_data=False)
    domains = {n.domain for n in model.graph.node}
    for fn in model.functions:
        domains |= {n.domain for n in fn.node}
    return {d for d in domains if d not in ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")}


def register_custom_ops(sess_options: Any, model_path: str | os.PathLike) -> str | None:
    """Register the edgeforge custom-op library when the model needs it; return its path or None."""
    if CUSTOM_DOMAIN not in custom_domains(model_path):
        return None
    try:
        from edgeforge.ops import native
    except ImportError as e:
        raise NotAvailable(
            f"{model_path} uses {CUSTOM_DOMAIN}:: custom ops, but edgeforge.ops.native is not available "
            f"({e}); export with `--custom-ops decompose` to run without the plugin library"
        ) from e
    hint = "Run `edgeforge plugins build` (or `make plugins`), or export with `--custom-ops decompose`."
    try:
        registered = native.register_ort(sess_options)  # False when the library is not built
    except Exception as e:  # built for another platform or ONNX Runtime version
        raise NotAvailable(
            f"{model_path} uses {CUSTOM_DOMAIN}:: custom ops and the edgeforge ONNX Runtime library could not "
            f"be registered: {e}. {hint}"
        ) from e
    if not registered:
        raise NotAvailable(f"{model_path} uses {CUSTOM_DOMAIN}:: custom ops and the edgeforge ONNX Runtime "
                           f"library is not built. {hint}")
    path = getattr(native, "ort_library_path", lambda: None)()
    return str(path) if path else "registered"


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        model_path: the .onnx file.
        provider: "cpu", "cuda" or "tensorrt" (the TensorRT EP falls back to CUDA, then CPU).
        threads: intra-op threads (0 = ONNX Runtime's default: one per physical core).
        inter_op_threads: inter-op threads (0 = default).
        graph_optimization: "disable" | "basic" | "extended" | "all".
        provider_options: passed to the provider (e.g. trt_fp16_enable for TensorRT).
        allow_spinning: keep intra-op threads spinning between calls (ONNX Runtime's default).
    """

    runtime_name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        provider: str = "cpu",
        threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
        provider_options: Mapping[str, Any] | None = None,
        allow_spinning: bool = True,
        name: str | None = None,
    ):
        super().__init__(name or f"onnxruntime-{provider}")
        self.model_path = Path(model_path)
        if provider not in PROVIDERS:
            raise BadInput(f"onnxruntime provider {provider!r} is not one of {sorted(PROVIDERS)}")
        self.provider = provider
        self.threads = int(threads)
        self.inter_op_threads = int(inter_op_threads)
        self.graph_optimization = graph_optimization
        self.provider_options = dict(provider_options or {})
        self.allow_spinning = allow_spinning
        self.session = None
        self.custom_op_library: str | None = None

    def _activate(self) -> None:
        ort = _import_ort()
        if not self.model_path.is_file():
            raise BadInput(f"{self.model_path}: no such ONNX file")
        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise NotAvailable(
                f"ONNX Runtime {ort.__version__} here has no {wanted} (available: {available}); "
                f"install onnxruntime-gpu for CUDA/TensorRT"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = self.inter_op_threads
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if self.graph_optimization not in levels:
            raise BadInput(f"graph_optimization {self.graph_optimization!r} is not one of {sorted(levels)}")
        so.graph_optimization_level = levels[self.graph_optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.log_severity_level = 3
        self.custom_op_library = register_custom_ops(so, self.model_path)
        providers: list[Any] = [(wanted, self.provider_options)] if self.provider_options else [wanted]
        if wanted == "TensorrtExecutionProvider":
            providers.append("CUDAExecutionProvider")
        if wanted != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as e:
            raise BadInput(f"{self.model_path}: ONNX Runtime could not load the model: {e}") from e

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names()
        return dict(zip(names, self.session.run(names, dict(feed))))

    def input_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                       ONNX_TYPE_TO_NUMPY.get(i.type, i.type))
            for i in self.session.get_inputs()
        ]

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def info(self) -> RunnerInfo:
        ort = _import_ort()
        opts: dict[str, Any] = {
            "provider": self.provider,
            "providers_active": self.session.get_providers() if self.session is not None else None,
            "intra_op_threads": self.threads or "default (one per physical core)",
            "inter_op_threads": self.inter_op_threads or "default",
            "graph_optimization": self.graph_optimization,
            "allow_spinning": self.allow_spinning,
        }
        if self.provider_options:
            opts["provider_options"] = dict(self.provider_options)
        if self.custom_op_library:
            opts["custom_op_library"] = self.custom_op_library
        return RunnerInfo(
            runtime="onnxruntime",
            version=ort.__version__,
            device=ort.get_device(),
            options=opts,
            versions={"onnxruntime": ort.__version__},
        )
