"""The bench report: a versioned, validated schema (what `bench` writes, what `report` reads).

A report states how each number was produced (runtime versions, threads, settings, the peak
figures' source) next to the number. A target that could not be reached has
`status: not_measured` and a reason, and the schema refuses any latency or accuracy figure
in it: never a number that was not measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeforge.errors import BadInput

SCHEMA_VERSION = 1
KIND = "edgeforge.bench"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorInfo(_Model):
    name: str
    shape: list[int | str | None]
    dtype: str


class ModelInfo(_Model):
    artifact: str
    recipe: str | None = None
    precision: str
    path: str
    sha256: str
    size_bytes: int
    params: int | None = None
    macs: int | None = None
    inputs: list[TensorInfo] = Field(default_factory=list)
    quant: dict[str, Any] | None = None


class TargetInfo(_Model):
    name: str
    device: str
    runtime: str
    reached: str  # "local", "agent at URL (...)" or why it was not reached
    peak: dict[str, Any] = Field(default_factory=dict)


class RuntimeInfo(_Model):
    runtime: str
    version: str
    device: str
    options: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)


class Latency(_Model):
    """Per-inference latency in milliseconds; percentiles over all timed calls."""

    measured_on: Literal["host", "device"] = "host"
    batch: int = 1
    warmup: int
    iterations: int
    block_size: int
    blocks: int
    interleaved_with: list[str] = Field(default_factory=list)
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    cv: float
    throughput_per_s: float
    noise_pct: float  # run-to-run noise of p50 stated by this run (see edgeforge.bench.latency)
    noisy: bool
    cold_load_ms: float | None = None
    first_inference_ms: float | None = None
    samples_ms: list[float] = Field(default_factory=list)
    block_medians_ms: list[float] = Field(default_factory=list)


class Memory(_Model):
    method: str
    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None
    peak_delta_mb: float | None = None


class Efficiency(_Model):
    """How close the measured latency is to the device's limit (from MACs and peak figures)."""

    macs: int | None = None
    ops_per_inference: float | None = None
    achieved_gops: float | None = None
    peak_gops: float | None = None
    peak_figure: str | None = None
    fraction_of_peak: float | None = None
    memory_bandwidth_gbs: float | None = None
    weight_read_fraction_of_bandwidth: float | None = None
    source: str = ""
    note: str = ""


class Accuracy(_Model):
    dataset: str
    dataset_sha256: str | None = None
    num_samples: int
    labels: bool
    top1: float | None = None
    top5: float | None = None
    reference: str | None = None  # what agreement/SQNR compare against
    agreement_top1: float | None = None
    sqnr_db: float | None = None


class KernelFidelity(_Model):
    """An INT8 model's integer kernels on the target against the float emulation of its QDQ graph
    (ONNX Runtime, graph optimisation disabled), on the same inputs (edgeforge.bench.fidelity).

    `sqnr_db` below `warn_below_db` is a drift (a warning); below `floor_db` (`bench
    --max-kernel-drift`) a failure. `not_measured` says why there are no figures."""

    runtime: str  # whose kernels: the target's runtime
    kernels: str  # what ran: the model file and runtime
    reference: str  # the float emulation
    inputs: str  # which inputs (the accuracy inputs)
    num_samples: int = 0
    agreement_top1: float | None = None  # % of inputs where both give the same top-1
    sqnr_db: float | None = None  # 999 = identical outputs
    cosine: float | None = None
    max_abs_error_rel: float | None = None  # max |kernels - emulation| / max |emulation|
    warn_below_db: float
    floor_db: float | None = None  # --max-kernel-drift
    drift: bool = False  # sqnr_db < warn_below_db
    passed: bool | None = None  # against floor_db; None without a floor
    isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA when OpenVINO ran under it
    not_measured: str | None = None


class Baseline(_Model):
    """A second model measured in the same run, alternating blocks of calls with this one."""

    precision: str
    path: str
    p50: float
    noise_pct: float
    speedup: float  # baseline p50 / this p50
    block_medians_ms: list[float] = Field(default_factory=list)


class Report(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["edgeforge.bench"] = KIND
    created_at: str
    edgeforge_version: str
    command: str | None = None
    status: Literal["measured", "not_measured"]
    reason: str | None = None
    model: ModelInfo
    target: TargetInfo
    runtime: RuntimeInfo | None = None
    host: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    latency: Latency | None = None
    memory: Memory | None = None
    efficiency: Efficiency | None = None
    accuracy: Accuracy | None = None
    kernel_fidelity: KernelFidelity | None = None
    baseline: Baseline | None = None
    # the CPU that ran `bench` (edgeforge.targets.host.cpu_record: model name and the flags that
    # decide int8 arithmetic); for an agent target, the host's, not the device's
    cpu: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _never_invent(self) -> "Report":
        if self.status == "not_measured":
            if not self.reason:
                raise ValueError("a not_measured report needs the reason")
            measured = [f for f in ("latency", "memory", "accuracy", "baseline", "kernel_fidelity") if getattr(self, f) is not None]
            if measured or (self.efficiency and self.efficiency.achieved_gops is not None):
                raise ValueError(f"a not_measured report cannot carry measured figures ({measured})")
        elif self.latency is None:
            raise ValueError("a measured report needs its latency")
        return self

    @property
    def label(self) -> str:
        name = self.model.recipe or Path(self.model.artifact).name
        return f"{name} {self.model.precision} @ {self.target.name}"


def load_report(path: str | os.PathLike) -> Report:
    """Read and validate a report JSON; BadInput names the file and the field at fault."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such report (expected ART/reports/<target>-<precision>.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not valid JSON: {e}") from e
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BadInput(f"{path}: report schema_version {data.get('schema_version')} is not supported "
                       f"(this edgeforge reads version {SCHEMA_VERSION})")
    try:
        return Report.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise BadInput(f"{path}: not a valid edgeforge report: {problems}") from e


def json_schema() -> dict:
    """The JSON Schema of a report (for consumers outside Python)."""
    return Report.model_json_schema()
