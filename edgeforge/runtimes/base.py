"""The Runner protocol every runtime implements (Polygraphy-style).

    with runner:                       # activate() ... deactivate()
        outputs = runner.infer(feed)   # feed: {input name: numpy array} -> {output name: array}

The base class owns what every backend would otherwise repeat: the activation state, the input
checks (names, shapes, dtypes, with errors that say what was expected), and the timing of the
load and of the last call. A backend implements `_activate`, `_infer` and `_deactivate` and
describes its inputs with `input_specs()`. Torch-free: devices run this with only a runtime.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgeforge.errors import BadInput


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. A dimension that is not fixed is None (or a symbolic name)."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str  # numpy dtype name: "float32", "int64", ...

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every free dimension set: batch for the first one, 1 elsewhere."""
        dims = []
        for i, d in enumerate(self.shape):
            dims.append(d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1))
        return tuple(dims)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunnerInfo:
    """What a report needs to state about how a number was produced."""

    runtime: str
    version: str
    device: str
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


class Runner(abc.ABC):
    """Base class of every runtime backend; see the module docstring for the protocol.

    Subclasses set `runtime_name` and implement `_activate`, `_deactivate`, `_infer`,
    `input_specs`, `output_names` and `info`.
    """

    runtime_name = "base"

    def __init__(self, name: str | None = None):
        self.name = name or self.runtime_name
        self.is_active = False
        self.load_time_s: float | None = None
        self.last_inference_time_s: float | None = None
        # Set by runners whose model loads elsewhere (an agent): the device's own load time.
        self.device_load_time_s: float | None = None

    # ---- protocol ---------------------------------------------------------------------------
    def activate(self) -> "Runner":
        """Load the model (build a session / compile / connect). Timed in `load_time_s`."""
        if self.is_active:
            return self
        t0 = time.perf_counter()
        self._activate()
        self.load_time_s = time.perf_counter() - t0
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the session and its memory; the runner can be activated again."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feed: Mapping[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Run one inference. `check_inputs=False` skips the checks inside timing loops."""
        if not self.is_active:
            raise RuntimeError(f"{self.name}: call activate() (or use `with runner:`) before infer()")
        if check_inputs:
            feed = self.check_feed(feed)
        t0 = time.perf_counter()
        out = self._infer(feed)
        self.last_inference_time_s = time.perf_counter() - t0
        return out

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def device_latency(self, feed: Mapping[str, np.ndarray], warmup: int, iterations: int,
                       min_time_s: float, seed: int = 0) -> dict | None:
        """Latency measured by the device itself (a remote agent); None means: time calls here."""
        return None

    # ---- what backends provide ----------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None:
        """Load the model / open the session."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release what `_activate` acquired."""

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one checked feed; return outputs by name."""

    @abc.abstractmethod
    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs (available once active)."""

    @abc.abstractmethod
    def output_names(self) -> list[str]:
        """The model's output names (available once active)."""

    @abc.abstractmethod
    def info(self) -> RunnerInfo:
        """Runtime name, version and options, for reports."""

    # ---- input checks -------------------------------------------------------------------------
    def check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, ranks, fixed dimensions and dtypes of `feed`; return it as a plain dict.

        Raises BadInput naming the input and what the model expects.
        """
        if not isinstance(feed, Mapping):
            raise BadInput(f"{self.name}: the feed must be a dict {{input name: array}}, got {type(feed).__name__}")
        specs = {s.name: s for s in self.input_specs()}
        missing = [n for n in specs if n not in feed]
        extra = [n for n in feed if n not in specs]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise BadInput(f"{self.name}: feed {', '.join(parts)}; the model's inputs are {list(specs)}")
        out: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            arr = feed[name]
            if not isinstance(arr, np.ndarray):
                raise BadInput(f"{self.name}: input {name!r} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != np.dtype(spec.dtype):
                raise BadInput(f"{self.name}: input {name!r} has dtype {arr.dtype}, the model expects {spec.dtype}")
            if arr.ndim != len(spec.shape):
                raise BadInput(
                    f"{self.name}: input {name!r} has shape {tuple(arr.shape)} (rank {arr.ndim}), "
                    f"the model expects rank {len(spec.shape)} {_fmt_shape(spec.shape)}"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise BadInput(
                        f"{self.name}: input {name!r} has shape {tuple(arr.shape)}, the model expects "
                        f"{_fmt_shape(spec.shape)} (axis {axis}: {got} != {want})"
                    )
            out[name] = arr
        return out


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if not isinstance(d, int) or d <= 0 else str(d) for d in shape) + ")"


# ONNX/OpenVINO element type names -> numpy dtype names, shared by the backends.
ONNX_TYPE_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
