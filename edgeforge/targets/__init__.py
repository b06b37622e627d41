"""Device targets: one YAML profile per device (`edgeforge/targets/*.yaml`), validated on load.

A profile says which runtime runs the model and with which options (per precision too), the
precisions it offers, what INT8 models it accepts (symmetric only? per-channel weights?
activation dtype? which quantizers), how it is reached (here, or an agent URL), what `compile`
produces for it, and the device's peak compute and memory bandwidth with their source.

Torch-free: the agent reads these on devices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeforge.errors import BadInput

TARGETS_DIR = Path(__file__).parent
DEFAULT_TARGET = "cpu-ort"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantConstraints(_Strict):
    """What INT8 models the target's runtime accepts (reference/quantization.md, last section)."""

    symmetric_only: bool = False
    per_channel_weights: bool = True
    activation_granularity: Literal["per_tensor", "per_channel"] = "per_tensor"
    activation_dtype: Literal["int8", "uint8", "any"] = "any"
    weight_dtype: Literal["int8"] = "int8"
    # How the INT8 kernels add byte products: 32-bit dot products (VNNI, AMX, Arm dotprod, GPUs),
    # or u8 x s8 pairs in saturating 16-bit lanes (x86 without VNNI); `host`: from this CPU's flags.
    int8_accumulation: Literal["int32", "int16-pairs", "host"] = "int32"
    quantizers: list[str] = Field(default_factory=list)
    note: str = ""


class Reach(_Strict):
    """`local`: runs in this process. `agent`: an edgeforge agent; URL from `url`, the env var
    `url_env`, or `--device URL`."""

    kind: Literal["local", "agent"] = "local"
    url: str | None = None
    url_env: str | None = None

    def agent_url(self, override: str | None = None) -> str | None:
        if override:
            return override
        if self.url_env and os.environ.get(self.url_env):
            return os.environ[self.url_env]
        return self.url


class Peak(_Strict):
    """Peak compute (dense, no sparsity) and memory bandwidth, with where the figures come from.

    `estimate: host` computes the figures for this machine's CPU at load (see `host_peak`)."""

    fp32_gflops: float | None = None
    fp16_gflops: float | None = None
    int8_gops: float | None = None
    memory_bandwidth_gbs: float | None = None
    source: str = ""
    estimate: Literal["host"] | None = None

    @model_validator(mode="after")
    def _sourced(self) -> "Peak":
        has_figures = any(v is not None for v in (self.fp32_gflops, self.fp16_gflops, self.int8_gops,
                                                  self.memory_bandwidth_gbs))
        if has_figures and not self.source:
            raise ValueError("peak figures need a `source` saying where they come from")
        return self

    def for_precision(self, precision: str) -> tuple[float | None, str]:
        """The peak that bounds `precision` (GOPS) and which figure it is."""
        family = precision_family(precision)
        order = {"int8": ["int8_gops", "fp16_gflops", "fp32_gflops"],
                 "fp16": ["fp16_gflops", "fp32_gflops"],
                 "fp32": ["fp32_gflops"]}[family]
        for field in order:
            value = getattr(self, field)
            if value is not None:
                return value, field
        return None, ""


class Target(_Strict):
    name: str
    description: str
    runtime: Literal["onnxruntime", "openvino", "tensorrt", "coreml"]
    options: dict[str, Any] = Field(default_factory=dict)
    precision_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    precisions: list[str]
    quantization: QuantConstraints = Field(default_factory=QuantConstraints)
    reach: Reach = Field(default_factory=Reach)
    compile: Literal["openvino-ir", "tensorrt-engine", "mlpackage", "none"] = "none"
    peak: Peak = Field(default_factory=Peak)
    device: str = ""

    @model_validator(mode="after")
    def _precision_options_known(self) -> "Target":
        unknown = set(self.precision_options) - set(self.precisions)
        if unknown:
            raise ValueError(f"precision_options for {sorted(unknown)} not in precisions {self.precisions}")
        return self

    def runtime_options(self, precision: str) -> dict[str, Any]:
        """The runtime's options for `precision` ("fp32", "fp16", "int8-<method>", ...)."""
        family = precision_family(precision)
        if family not in self.precisions and precision not in self.precisions:
            raise BadInput(f"target {self.name} offers precisions {self.precisions}, not {precision!r}")
        opts = dict(self.options)
        opts.update(self.precision_options.get(precision, self.precision_options.get(family, {})))
        return opts

    def peak_figures(self) -> Peak:
        """The peak figures, estimated for this host when the profile says `estimate: host`."""
        if self.peak.estimate == "host":
            from edgeforge.targets.host import host_peak

            return host_peak()
        return self.peak


def precision_family(precision: str) -> str:
    """'int8-qhyvit' -> 'int8'; 'fp32'/'fp16' unchanged; CoreML's int8-weights/w8a8 -> 'int8'."""
    if precision.startswith("int8") or precision == "w8a8":
        return "int8"
    if precision in ("fp32", "fp16"):
        return precision
    raise BadInput(f"precision {precision!r} is not fp32, fp16 or int8-<method>")


def profile_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TARGETS_DIR.glob("*.yaml"))}


def load(name_or_path: str | os.PathLike) -> Target:
    """Load a target by name (`cpu-ort`) or by the path of a YAML profile; BadInput names the problem."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        known = profile_paths()
        if str(name_or_path) not in known:
            raise BadInput(f"unknown target {str(name_or_path)!r}; known targets: {', '.join(known)}")
        path = known[str(name_or_path)]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a target profile is a mapping of fields")
    data.setdefault("name", path.stem)
    try:
        return Target.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise BadInput(f"{path}: {problems}") from e


def all_targets() -> list[Target]:
    return [load(p) for p in profile_paths().values()]


def reachability(target: Target, device_url: str | None = None) -> tuple[bool, str]:
    """(True, how) when the target can be measured from here, else (False, why not)."""
    if target.reach.kind == "agent":
        url = target.reach.agent_url(device_url)
        if not url:
            hint = f"set {target.reach.url_env} or " if target.reach.url_env else ""
            return False, f"no agent URL for {target.name}: {hint}pass --device http://HOST:PORT"
        from edgeforge.errors import NotAvailable
        from edgeforge.runtimes.remote import probe

        try:
            info = probe(url)
        except NotAvailable as e:
            return False, str(e)
        return True, f"agent at {url} ({info.get('device', 'unknown device')})"
    from edgeforge.runtimes import probe_runtime

    reason = probe_runtime(target.runtime, target.options)
    return (False, reason) if reason else (True, "local")
