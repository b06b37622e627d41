"""Quantization scheme: bits, and what the target decides (symmetric? activation dtype? per-channel?).

The target's profile (`edgeforge/targets/<name>.yaml`, `quantization:`) says what its runtime can
run. A requested scheme the target cannot run is converted exactly or refused: a symmetric
uint8 quantizer (zero-point 128) is the same numbers as an int8 one with zero-point 0, so it is
converted; an asymmetric quantizer for a symmetric-only target is refused with a clear message,
never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeforge.errors import BadInput
from edgeforge.quant.quantizers import QParams

BITS = {"w8a8": (8, 8), "w6a6": (6, 6), "w4a8": (4, 8), "w4a4": (4, 4)}
DEFAULT_TARGET = "cpu-ort"


@dataclass(frozen=True)
class Scheme:
    """The resolved scheme for one quantize run."""

    target: str
    weight_bits: int
    act_bits: int
    act_symmetric: bool
    act_signed: bool  # int8 (True) or uint8 (False) activation containers
    weight_per_channel: bool
    constraints: dict
    runtime: str = "onnxruntime"
    # "int32" or "int16-pairs" (saturating x86 kernels without VNNI), and why
    int8_accumulation: str = "int32"
    accumulation_reason: str = ""
    # how weights are kept from saturating 16-bit pairs: "pairs" (per-channel scale search with
    # only the offending pairs pulled in, `overflow.py`), "reduce-range" (7-bit weights, ORT's and
    # NNCF's answer) or "none" (32-bit accumulation: nothing to fix)
    overflow_fix: str = "none"

    @property
    def stored_weight_bits(self) -> int:
        """Weight bits after the overflow fix: `reduce-range` keeps 8-bit weights in 7 bits."""
        return min(self.weight_bits, 7) if self.overflow_fix == "reduce-range" else self.weight_bits

    def to_json(self) -> dict:
        return {"target": self.target, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "int8_accumulation": self.int8_accumulation, "accumulation_reason": self.accumulation_reason,
                "overflow_fix": self.overflow_fix,
                "activations": ("int8" if self.act_signed else "uint8") + (
                    " symmetric" if self.act_symmetric else " asymmetric") + " per-tensor",
                "weights": "int8 symmetric " + ("per-channel" if self.weight_per_channel else "per-tensor"),
                "target_constraints": self.constraints}


def target_constraints(target: str | None) -> tuple[str, dict]:
    """(target name, its `quantization` constraints) from the target profile YAML."""
    from edgeforge import targets

    name = target or DEFAULT_TARGET
    t = targets.load(name)
    return t.name, {**t.quantization.model_dump(mode="json"), "runtime": t.runtime}


ACCUMULATIONS = ("host", "int32", "int16-pairs")
OVERFLOW_FIXES = ("auto", "pairs", "reduce-range", "none")


def accumulation_for(constraint: str, runtime: str, override: str | None = None) -> tuple[str, str]:
    """Resolve a profile's (or the user's) int8 accumulation to "int32" / "int16-pairs" and why."""
    want = override or constraint or "int32"
    if want not in ACCUMULATIONS:
        raise BadInput(f"--int8-accumulation {want!r}: accepted {', '.join(ACCUMULATIONS)}")
    if want == "host":
        from edgeforge.targets.host import int8_accumulation

        acc, why = int8_accumulation(runtime)
        return acc, ("this host: " + why)
    src = "--int8-accumulation" if override else "the target profile"
    return want, f"{src} says {want}"


def resolve(bits: str = "w8a8", target: str | None = None, method: str = "minmax",
            act_scheme: str = "auto", int8_accumulation: str | None = None,
            overflow_fix: str = "auto") -> Scheme:
    """Decide the scheme for `method` at `bits` on `target`; refuse what the target cannot run.

    `int8_accumulation` overrides the target's (e.g. quantize on an AVX-512 VNNI build server for
    an AVX2 edge box: "int16-pairs"); `overflow_fix` picks how weights avoid 16-bit saturation."""
    if bits not in BITS:
        raise BadInput(f"--bits {bits!r}: accepted {', '.join(BITS)}")
    wb, ab = BITS[bits]
    name, c = target_constraints(target)
    from edgeforge.quant.methods import profile_name

    allowed = c.get("quantizers") or []
    if allowed and profile_name(method) not in allowed and method not in allowed:
        raise BadInput(f"target {name} cannot run {method!r} quantization; it accepts: {', '.join(allowed)}")
    sym_only = bool(c.get("symmetric_only"))
    dtype = c.get("activation_dtype", "any")
    if act_scheme not in ("auto", "symmetric", "asymmetric"):
        raise BadInput(f"activation scheme {act_scheme!r}: accepted auto, symmetric, asymmetric")
    if act_scheme == "asymmetric" and sym_only:
        raise BadInput(f"target {name} runs symmetric quantization only (zero-point 0); an asymmetric "
                       "activation scheme cannot be converted exactly. Use --act-scheme symmetric or "
                       "another target.")
    symmetric = sym_only or act_scheme == "symmetric"
    # uint8 activations are ORT's fast x86 path (U8S8); int8 where the target requires it
    signed = dtype == "int8" or (dtype == "any" and symmetric)
    if dtype == "uint8" and symmetric:
        signed = False  # symmetric in uint8: zero-point 128
    runtime = c.get("runtime", "onnxruntime")
    acc, why = accumulation_for(c.get("int8_accumulation", "int32"), runtime, int8_accumulation)
    if overflow_fix not in OVERFLOW_FIXES:
        raise BadInput(f"--overflow-fix {overflow_fix!r}: accepted {', '.join(OVERFLOW_FIXES)}")
    if overflow_fix == "auto":
        overflow_fix = "pairs" if acc == "int16-pairs" else "none"
    return Scheme(name, wb, ab, symmetric, signed, bool(c.get("per_channel_weights", True)), c,
                  runtime, acc, why, overflow_fix)


def convert_for_target(qp: QParams, scheme: Scheme, what: str) -> QParams:
    """Make an activation quantizer deployable on the scheme's target, exactly, or refuse.

    - symmetric uint8 (zero-point 2^(b-1)) <-> int8 (zero-point 0): same scale, same values.
    - asymmetric on a symmetric-only target: refused (BadInput names the tensor).
    """
    if qp.kind != "uniform":
        raise BadInput(f"{what}: a {qp.kind} quantizer has no QuantizeLinear form on {scheme.target}")
    if scheme.constraints.get("symmetric_only"):
        half = 2 ** (qp.bits - 1)
        exact_sym = (qp.signed and np.all(qp.zero_point == 0)) or (not qp.signed and np.all(qp.zero_point == half))
        if not exact_sym:
            raise BadInput(f"{what}: asymmetric quantizer (zero-point {qp.zero_point.tolist()}) cannot run on "
                           f"{scheme.target} (symmetric only) and has no exact symmetric form; "
                           "recalibrate with a symmetric scheme")
    if qp.signed != scheme.act_signed:
        half = 2 ** (qp.bits - 1)
        if not qp.signed and np.all(qp.zero_point == half):
            return QParams(qp.scale, np.zeros_like(qp.zero_point), qp.bits, True, True, qp.axis, qp.observer,
                           extra={**qp.extra, "converted": "uint8 zp=128 -> int8 zp=0 (exact)"})
        if qp.signed and np.all(qp.zero_point == 0) and scheme.act_symmetric is False:
            return QParams(qp.scale, np.full(np.shape(qp.zero_point), half), qp.bits, True, False, qp.axis,
                           qp.observer, extra={**qp.extra, "converted": "int8 zp=0 -> uint8 zp=128 (exact)"})
        if scheme.constraints.get("activation_dtype") in ("int8", "uint8"):
            raise BadInput(f"{what}: {qp.dtype} activations with zero-point {qp.zero_point.tolist()} cannot be "
                           f"converted exactly to {scheme.constraints['activation_dtype']} for {scheme.target}")
    return qp
