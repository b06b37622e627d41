"""`auto` custom-op mode: per call site, the native kernel where it was measured faster than the
best standard-ONNX decomposition on this CPU class, the decomposition elsewhere (torch-free).

The CPU class is the instruction-set path the portable kernel library takes on this machine
(`edgeforge.ops.native.isa_info()`: avx512, avx2, generic). The table below holds the kernel's
speedup over the best decomposition from `benchmarks/ops.py` (benchmarks/results/ops.json: ONNX
Runtime CPU, 2 threads, paired medians of alternating blocks, and the 1-thread CPU-time ratio;
the lower of the two counts). A call takes the kernel when the nearest measured case of the same
op and kind shows a speedup of at least WIN (a tie is not a win: the decomposition is standard
ONNX, which every runtime runs and every tool reads); `choose` says which case and number decided.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

WIN = 1.05

# (op, kind) -> {size: speedup} per CPU class; size: T for LinearScan (C 768), N = M for
# GatedAttention (H 4, D 32). Measured on an AMD EPYC (Zen 4): the avx2 path with EDGEFORGE_MAX_ISA
# capping the kernel (ONNX Runtime's MLAS decompositions still ran their AVX-512 code, a harder
# bar than an AVX2 CPU sets). See benchmarks/results/ops.json and the README.
MEASURED: dict[str, dict[tuple[str, str], dict[int, float]]] = {
    "avx512": {
        ("LinearScan", "scan"): {8: 2.25, 16: 3.41, 32: 5.31, 64: 5.72},
        ("GatedAttention", "bias"): {49: 1.02, 196: 1.05, 784: 1.21},
        ("GatedAttention", "log_f"): {49: 1.43, 196: 1.83, 784: 2.84},
    },
    "avx2": {
        ("LinearScan", "scan"): {8: 2.28, 16: 3.56, 32: 4.7, 64: 6.19},
        ("GatedAttention", "bias"): {49: 0.99, 196: 1.0, 784: 1.11},
        ("GatedAttention", "log_f"): {49: 1.44, 196: 1.76, 784: 2.54},
    },
}


@dataclass
class Choice:
    op: str
    kind: str
    size: int
    mode: str  # "plugin" or "decompose"
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_class() -> tuple[str | None, str]:
    """(class, how it was found): the path the native kernels take here, or None with the reason."""
    from edgeforge.ops import native

    if native.ort_library_path() is None:
        return None, "the ONNX Runtime kernel library is not built (edgeforge plugins build)"
    try:
        info = native.isa_info()
    except OSError as e:
        return None, f"the native library does not load here: {e}"
    if info is None:
        return None, "no native library is built"
    return info["path"], f"the kernels take the {info['path']} path on this CPU ({info['note']})"


def choose(op: str, kind: str, size: int, cls: str | None = None) -> Choice:
    """Plugin or decomposition for one call: op "LinearScan" (kind "scan", size T) or
    "GatedAttention" (kind "bias", "log_f" or "plain", size N)."""
    how = "given"
    if cls is None:
        cls, how = cpu_class()
        if cls is None:
            return Choice(op, kind, size, "decompose", f"decomposition: {how}")
    table = MEASURED.get(cls)
    if table is None:
        return Choice(op, kind, size, "decompose",
                      f"decomposition: no measurement of the kernel on the {cls} path (measured: {', '.join(MEASURED)})")
    points = table.get((op, kind)) or table.get((op, "bias" if kind == "plain" else kind))
    if not points:
        return Choice(op, kind, size, "decompose", f"decomposition: {op} ({kind}) not measured on {cls}")
    near = min(points, key=lambda s: abs(math.log(max(size, 1)) - math.log(s)))
    speedup = points[near]
    where = f"{op} {kind} at size {near} (nearest measured to {size}) on the {cls} path"
    if speedup >= WIN:
        return Choice(op, kind, size, "plugin", f"kernel: {speedup:.2f}x the best decomposition for {where}")
    return Choice(op, kind, size, "decompose",
                  f"decomposition: the kernel is not faster ({speedup:.2f}x, a win needs {WIN:.2f}x) for {where}")
