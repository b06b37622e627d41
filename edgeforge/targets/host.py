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
