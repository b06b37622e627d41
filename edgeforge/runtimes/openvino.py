"""OpenVINO backend (CPU). Reads ONNX or IR (.xml + .bin).

The inference precision is always set explicitly: OpenVINO's CPU plugin otherwise picks bf16 on
CPUs with AMX/AVX512-BF16, which changes the numbers a report claims are FP32. INT8 comes from
the model's QDQ (FakeQuantize) nodes, so an INT8 model runs with the f32 hint too; "f16"/"bf16"
are available on request and then stated in the report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes.base import Runner, RunnerInfo, TensorSpec

PRECISION_HINTS = ("f32", "f16", "bf16")


def _import_ov():
    try:
        import openvino as ov
    except ImportError as e:
        raise NotAvailable(f"OpenVINO is not installed ({e}); pip install 'edgeforge[openvino]'") from e
    return ov


def available_devices() -> list[str]:
    return list(_import_ov().Core().available_devices)


class OpenVINORunner(Runner):
    """Runs an ONNX or OpenVINO IR model with the OpenVINO runtime.

    Args:
        model_path: .onnx or .xml (IR).
        device: OpenVINO device name ("CPU").
        precision_hint: "f32" (default), "f16" or "bf16"; always passed explicitly.
        threads: INFERENCE_NUM_THREADS (0 = OpenVINO's default).
        num_streams: NUM_STREAMS (1 for latency).
        performance_mode: "LATENCY" or "THROUGHPUT".
    """

    runtime_name = "openvino"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "CPU",
        precision_hint: str = "f32",
        threads: int = 0,
        num_streams: int = 1,
        performance_mode: str = "LATENCY",
        name: str | None = None,
    ):
        super().__init__(name or f"openvino-{device.lower()}")
        self.model_path = Path(model_path)
        if precision_hint not in PRECISION_HINTS:
            raise BadInput(f"OpenVINO precision_hint {precision_hint!r} is not one of {PRECISION_HINTS}")
        self.device = device
        self.precision_hint = precision_hint
        self.threads = int(threads)
        self.num_streams = int(num_streams)
        self.performance_mode = performance_mode
        self.compiled = None
        self.request = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[str] = []
        self.effective: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precision_hint,
            "PERFORMANCE_HINT": self.performance_mode,
            "NUM_STREAMS": str(self.num_streams),
        }
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = self.threads
        return cfg

    def _activate(self) -> None:
        ov = _import_ov()
        if not self.model_path.is_file():
            raise BadInput(f"{self.model_path}: no such model file (.onnx or .xml)")
        core = ov.Core()
        if self.device not in core.available_devices:
            raise NotAvailable(f"OpenVINO device {self.device!r} is not available here ({core.available_devices})")
        try:
            model = core.read_model(str(self.model_path))
            self.compiled = core.compile_model(model, self.device, self.config())
        except Exception as e:
            raise BadInput(f"{self.model_path}: OpenVINO could not compile the model for {self.device}: {e}") from e
        self.request = self.compiled.create_infer_request()
        self._inputs = [
            TensorSpec(
                p.get_any_name(),
                tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape()),
                np.dtype(p.get_element_type().to_dtype()).name,
            )
            for p in self.compiled.inputs
        ]
        self._outputs = [p.get_any_name() for p in self.compiled.outputs]
        # What the plugin actually uses, read back: the report states this, not what we asked.
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
            try:
                value = self.compiled.get_property(key)
            except Exception:  # a plugin may not expose every property
                continue
            self.effective[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        got = self.effective.get("INFERENCE_PRECISION_HINT")
        if got is not None and got != self.precision_hint:
            raise NotAvailable(
                f"OpenVINO {self.device} runs at {got} although {self.precision_hint} was requested; "
                f"refusing to report numbers at a precision that was not asked for"
            )

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.request.infer(dict(feed))
        # Copy: the request's output buffers are reused by the next call.
        return {name: np.array(self.request.get_output_tensor(i).data, copy=True)
                for i, name in enumerate(self._outputs)}

    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def info(self) -> RunnerInfo:
        ov = _import_ov()
        version = ov.get_version()
        core = ov.Core()
        try:
            device_name = str(core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:
            device_name = self.device
        return RunnerInfo(
            runtime="openvino",
            version=version,
            device=device_name,
            options={"device": self.device, "requested": self.config(), "effective": dict(self.effective)},
            versions={"openvino": version},
        )


def compile_ir(onnx_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Convert ONNX to OpenVINO IR (`model.xml` + `model.bin`) in `out_dir`, weights kept in FP32.

    Written to a temporary folder and moved into place, so a failure leaves the old IR intact.
    """
    ov = _import_ov()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ir.", dir=out_dir))
    try:
        model = ov.convert_model(str(onnx_path))
        # compress_to_fp16 defaults to True: that would silently halve the weights' precision.
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        files = []
        for name in ("model.xml", "model.bin"):
            os.replace(tmp / name, out_dir / name)
            files.append(out_dir / name)
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
