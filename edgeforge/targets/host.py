"""Peak compute of this machine's CPU, estimated from its ISA and clock (for local CPU targets).

A CPU's peak is cores x clock x FLOPs per cycle. The FLOPs per cycle follow from the widest FMA
the ISA flags advertise, assuming two FMA pipes of 256 bits (AVX2, and AVX-512 on cores that
split 512-bit ops, such as AMD Zen 4) or two 128-bit NEON pipes (Arm Cortex-A76 class). INT8
dot-product instructions (VNNI, Arm dotprod) do 4 MACs where an FP32 FMA does one. The result is
labelled an estimate with its inputs; it bounds, it does not predict.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", text, re.M)
    return set(m.group(2).split()) if m else set()


def _max_ghz() -> float | None:
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(p.read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)]
    except OSError:
        return None
    return max(mhz) / 1e3 if mhz else None


def _cpu_name() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        m = None
    return m.group(1).strip() if m else platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def host_peak():
    """A `Peak` for this host's CPU (memory bandwidth unknown: not estimated)."""
    from edgeforge.targets import Peak

    flags = _cpu_flags()
    ghz = _max_ghz()
    cores = cpu_count()
    if ("avx2" in flags and "fma" in flags) or "avx512f" in flags:
        fp32_per_cycle, isa = 32, "2x256-bit FMA"
    elif "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        fp32_per_cycle, isa = 16, "2x128-bit NEON FMA"
    else:
        fp32_per_cycle, isa = 8, "SSE"
    int8_factor, int8_isa = 1, "no int8 dot product"
    if flags & {"avx512_vnni", "avx_vnni", "asimddp"}:
        int8_factor, int8_isa = 4, "int8 dot product (VNNI/dotprod)"
    elif "avx2" in flags:
        int8_factor, int8_isa = 2, "AVX2 int8 multiply-add"
    if ghz is None:
        return Peak(source=f"not estimated: the clock of {_cpu_name()} is unknown here", estimate="host")
    fp32 = cores * ghz * fp32_per_cycle
    return Peak(
        fp32_gflops=round(fp32, 1),
        int8_gops=round(fp32 * int8_factor, 1),
        source=(f"estimate for this host: {_cpu_name()}, {cores} usable cores x {ghz:.2f} GHz x "
                f"{fp32_per_cycle} FP32 FLOP/cycle ({isa}); INT8 x{int8_factor} ({int8_isa})"),
        estimate="host",
    )


# ----------------------------------------------------------------------------- int8 arithmetic
# Flags under which x86 int8 kernels accumulate byte products in 32 bits (no 16-bit pair step).
DOT32_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# oneDNN (OpenVINO's CPU plugin) honours this cap; an ISA named here has no VNNI.
_ONEDNN_NO_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def cpu_record() -> dict:
    """The CPU that measured or decided something: model name and the flags that decide int8."""
    flags = _cpu_flags()
    return {"model": _cpu_name(), "machine": platform.machine(),
            "int8_flags": sorted(f for f in INT8_FLAGS if f in flags)}


def int8_accumulation(runtime: str = "onnxruntime") -> tuple[str, str]:
    """How this host's int8 kernels add products: ("int32" | "int16-pairs", why).

    x86 without VNNI/AMX multiplies u8 x s8 byte pairs into saturating 16-bit lanes (vpmaddubsw);
    VNNI, AMX and Arm's dot product accumulate in 32 bits. For OpenVINO, a ONEDNN_MAX_CPU_ISA cap
    below VNNI makes oneDNN take the pair path on any CPU."""
    flags = _cpu_flags()
    name = _cpu_name()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if runtime == "openvino" and cap in _ONEDNN_NO_VNNI:
        return "int16-pairs", f"ONEDNN_MAX_CPU_ISA={cap} caps OpenVINO's kernels below VNNI on {name}"
    x86 = platform.machine() in ("x86_64", "AMD64", "i686", "i386")
    if not x86:
        return "int32", f"{name} ({platform.machine()}): int8 dot products accumulate in 32 bits"
    dot = [f for f in DOT32_FLAGS if f in flags]
    if dot:
        return "int32", f"{name} has {', '.join(dot)}: 32-bit int8 dot products"
    if not flags:
        return "int16-pairs", "CPU flags unreadable here: assuming the saturating 16-bit pair path (safe)"
    return "int16-pairs", f"{name} has no VNNI/AMX: u8 x s8 pairs add in saturating 16-bit lanes"
