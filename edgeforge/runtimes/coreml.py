"""CoreML backend: conversion with coremltools (any OS), prediction on macOS only.

Conversion starts from the recipe's torch model (the same weights the ONNX was exported from),
through `torch.export` (coremltools' TorchScript path breaks with numpy >= 2.4; the
torch.export path does not). Precisions:

- "fp32" / "fp16": the ML program's compute precision;
- "int8-weights": weight-only linear INT8 (symmetric, per-channel) with
  `coremltools.optimize.coreml.linear_quantize_weights`; runs on every Apple device;
- "w8a8": INT8 weights plus INT8 activations calibrated on the calibration set with
  `coremltools.optimize.coreml.experimental.linear_quantize_activations`. Calibration runs the
  model, so it needs macOS; newer Neural Engines (A17 Pro / M4) run it natively.

This module imports without torch; torch is imported only by `convert_torch`.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from edgeforge.errors import BadInput, NotAvailable
from edgeforge.runtimes.base import Runner, RunnerInfo, TensorSpec

PRECISIONS = ("fp32", "fp16", "int8-weights", "w8a8")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def import_coremltools():
    try:
        import coremltools as ct
    except ImportError as e:
        raise NotAvailable(f"coremltools is not installed ({e}); pip install 'edgeforge[coreml]'") from e
    return ct


def can_predict() -> tuple[bool, str]:
    """CoreML prediction needs macOS (the CoreML framework); say why not elsewhere."""
    if platform.system() != "Darwin":
        return False, f"CoreML prediction needs macOS (this is {platform.system()})"
    return True, "macOS"


def convert_torch(
    model: Any,
    example_inputs: Mapping[str, Any],
    precision: str = "fp32",
    deployment_target: str = "iOS17",
    calibration: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
    output_names: list[str] | None = None,
) -> Any:
    """Convert a torch module to a CoreML ML program at `precision` (see the module docstring).

    `example_inputs` maps the model's input names (those of the ONNX) to example tensors, in the
    order of `model.forward`'s arguments; `output_names` (the ONNX's) rename the outputs.
    `calibration` yields feeds for W8A8.
    Returns a `coremltools.models.MLModel`.
    """
    ct = import_coremltools()
    import torch

    if precision not in PRECISIONS:
        raise BadInput(f"CoreML precision {precision!r} is not one of {PRECISIONS}")
    names = list(example_inputs)
    args = tuple(example_inputs[n] for n in names)
    with torch.no_grad():
        exported = torch.export.export(model.eval(), args)
        exported = exported.run_decompositions({})
    compute_precision = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    mlmodel = ct.convert(
        exported,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, deployment_target),
        compute_precision=compute_precision,
    )
    mlmodel = _rename_features(ct, mlmodel, names, output_names or [])
    if precision in ("int8-weights", "w8a8"):
        mlmodel = quantize_weights_int8(mlmodel)
    if precision == "w8a8":
        ok, why = can_predict()
        if not ok:
            raise NotAvailable(f"W8A8 activation calibration runs the model: {why}")
        if calibration is None:
            raise BadInput("W8A8 needs a calibration set (the same one the ONNX INT8 model used)")
        mlmodel = quantize_activations_int8(mlmodel, list(calibration()))
    return mlmodel


def _rename_features(ct: Any, mlmodel: Any, inputs: list[str], outputs: list[str]) -> Any:
    """Give the CoreML inputs/outputs the ONNX names (torch.export names them after forward's
    arguments and the last op), so one feed dict serves every runtime."""
    spec = mlmodel.get_spec()
    renames = list(zip([i.name for i in spec.description.input], inputs))
    renames += list(zip([o.name for o in spec.description.output], outputs))
    renames = [(old, new) for old, new in renames if old != new]
    if not renames:
        return mlmodel
    for old, new in renames:
        ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=not can_predict()[0])


def quantize_weights_int8(mlmodel: Any) -> Any:
    """Weight-only INT8: symmetric, per-channel (what every Apple device runs)."""
    ct = import_coremltools()
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"))
    del ct
    return linear_quantize_weights(mlmodel, config)


def quantize_activations_int8(mlmodel: Any, sample_data: list[Mapping[str, np.ndarray]]) -> Any:
    """INT8 activations (symmetric, per-tensor) calibrated on `sample_data` (macOS only)."""
    from coremltools.optimize.coreml import OptimizationConfig
    from coremltools.optimize.coreml.experimental import (OpActivationLinearQuantizerConfig,
                                                          linear_quantize_activations)

    config = OptimizationConfig(global_config=OpActivationLinearQuantizerConfig(mode="linear_symmetric"))
    return linear_quantize_activations(mlmodel, config, sample_data=[dict(s) for s in sample_data])


def save_mlpackage(mlmodel: Any, path: str | os.PathLike) -> Path:
    """Save to `path` (an .mlpackage folder) through a temp folder, replacing it only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mlpackage.", dir=path.parent))
    try:
        staged = tmp / path.name
        mlmodel.save(str(staged))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class CoreMLRunner(Runner):
    """Runs an .mlpackage with CoreML (macOS only: activation raises NotAvailable elsewhere).

    Args:
        model_path: the .mlpackage folder.
        compute_units: "ALL", "CPU_ONLY", "CPU_AND_GPU" or "CPU_AND_NE".
    """

    runtime_name = "coreml"

    def __init__(self, model_path: str | os.PathLike, compute_units: str = "ALL", name: str | None = None):
        super().__init__(name or f"coreml-{compute_units.lower()}")
        if compute_units not in COMPUTE_UNITS:
            raise BadInput(f"compute_units {compute_units!r} is not one of {COMPUTE_UNITS}")
        self.model_path = Path(model_path)
        self.compute_units = compute_units
        self.model = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[str] = []

    def _activate(self) -> None:
        ct = import_coremltools()
        ok, why = can_predict()
        if not ok:
            raise NotAvailable(why)
        if not self.model_path.exists():
            raise BadInput(f"{self.model_path}: no such .mlpackage")
        self.model = ct.models.MLModel(str(self.model_path), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        spec = self.model.get_spec()
        self._inputs = [_feature_spec(f) for f in spec.description.input]
        self._outputs = [f.name for f in spec.description.output]

    def _deactivate(self) -> None:
        self.model = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict(dict(feed))
        return {name: np.asarray(out[name]) for name in self._outputs}

    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def info(self) -> RunnerInfo:
        ct = import_coremltools()
        return RunnerInfo(runtime="coreml", version=ct.__version__, device=platform.machine(),
                          options={"compute_units": self.compute_units},
                          versions={"coremltools": ct.__version__, "macos": platform.mac_ver()[0]})


def _feature_spec(feature: Any) -> TensorSpec:
    arr = feature.type.multiArrayType
    dtypes = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
    return TensorSpec(feature.name, tuple(int(d) for d in arr.shape), dtypes.get(arr.dataType, "float32"))
