"""onnxslim simplification, kept or not by a rule read from the two graphs (never by timing).

Whether the artifact is onnxslim's graph is part of the artifact's identity, so it must not depend
on how loaded the machine was when the export ran: two exports of the same recipe and weights
give the same bytes. The decision is made from what onnxslim did to the graph:

- onnxslim folds constants, removes dead and redundant nodes (Identity, Shape chains, Constant
  subgraphs) and fuses a few patterns. Folding and removal only leave ONNX Runtime less to do.
- Its MatMul+Add -> Gemm fusion (with a Reshape either side for rank-3 activations) is the rewrite
  ONNX Runtime's own MatMulAddFusion makes: the same kernels either way (measured on rmt_tiny and
  trecvit_tiny, one thread: 0.987 vs 0.985 ms and 1.310 vs 1.288 ms, alternating blocks).
- Any other rewrite into new or extra operators can break a pattern that ONNX Runtime fuses
  (attention, GELU, LayerNorm) or add copies.

So the slimmed graph is kept when it has no more nodes in all and no operator type grows in
count, except Gemm by at most the MatMul nodes that went away and Reshape by at most two per such
Gemm; otherwise the plain export is kept and the record names the operators that grew. The same
two graphs always give the same answer. A measured speed belongs in a report (`edgeforge bench`),
not in the artifact's identity; `measure_latency` times both graphs for information only.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

RULE = ("kept when no operator type grows in count (onnxslim folded and removed nodes), MatMul+Add -> "
        "Gemm (+ Reshapes) aside")


@dataclass
class SimplifyResult:
    applied: bool
    nodes_before: int
    nodes_after: int
    ort_ms_before: float | None = None  # informational (measure_latency), never decides
    ort_ms_after: float | None = None
    reason: str = ""
    rule: str = RULE
    grown_ops: dict[str, list[int]] = field(default_factory=dict)  # op -> [raw count, slim count]

    def to_dict(self) -> dict:
        return asdict(self)


def grown_operators(raw: onnx.ModelProto, slim: onnx.ModelProto) -> dict[str, list[int]]:
    """Operator types (domain-qualified when not standard) with more nodes in `slim` than in `raw`."""
    def hist(m: onnx.ModelProto) -> Counter:
        return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                       for n in m.graph.node)

    a, b = hist(raw), hist(slim)
    return {op: [a.get(op, 0), n] for op, n in sorted(b.items()) if n > a.get(op, 0)}


def _gemm_fusion_only(grown: dict[str, list[int]], raw: onnx.ModelProto, slim: onnx.ModelProto) -> bool:
    """Whether what grew is explained by MatMul+Add -> Gemm (Reshape either side on N-D inputs)."""
    if not grown or set(grown) - {"Gemm", "Reshape"}:
        return False
    count = lambda m, op: sum(n.op_type == op and n.domain in ("", "ai.onnx") for n in m.graph.node)  # noqa: E731
    gemms = count(slim, "Gemm") - count(raw, "Gemm")
    fused = count(raw, "MatMul") - count(slim, "MatMul")
    reshapes = count(slim, "Reshape") - count(raw, "Reshape")
    return 0 <= gemms <= fused and reshapes <= 2 * max(gemms, 0)


def decide(raw: onnx.ModelProto, slim: onnx.ModelProto) -> SimplifyResult:
    """Keep `slim` or not, from the two graphs alone (see the module docstring)."""
    before, after = len(raw.graph.node), len(slim.graph.node)
    grown = grown_operators(raw, slim)
    if grown and not _gemm_fusion_only(grown, raw, slim):
        what = ", ".join(f"{op} {a}->{b}" for op, (a, b) in grown.items())
        return SimplifyResult(False, before, after, reason=f"discarded: onnxslim rewrote patterns into other "
                              f"operators ({what}), which can break ONNX Runtime's own fusions", grown_ops=grown)
    if after > before:
        return SimplifyResult(False, before, after, reason=f"discarded: {after} nodes after onnxslim vs {before}")
    how = "folded, removed and fused MatMul+Add into Gemm" if grown else "only folded and removed"
    return SimplifyResult(True, before, after, reason=f"kept: {before} -> {after} nodes, {how}", grown_ops=grown)


def _median_block_latency(sessions: list, feed: dict, blocks: int, calls: int) -> list[float]:
    """Alternate the sessions in blocks of `calls` runs; return each session's median ms per call."""
    samples: list[list[float]] = [[] for _ in sessions]
    for s in sessions:  # warm-up
        for _ in range(2):
            s.run(None, feed)
    for b in range(blocks):
        order = range(len(sessions)) if b % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                sessions[i].run(None, feed)
            samples[i].append((time.perf_counter() - t0) * 1e3 / calls)
    return [statistics.median(s) for s in samples]


def simplify(model: onnx.ModelProto, feed: dict[str, np.ndarray] | None = None, session_factory=None, *,
             measure_latency: bool = False, time_budget_s: float = 4.0) -> tuple[onnx.ModelProto, SimplifyResult]:
    """Return (model to keep, record). The choice is `decide(raw, slim)`; with `measure_latency`
    (and `session_factory(model_proto) -> ort session`, `feed`) both graphs are also timed in
    alternating blocks and the medians recorded, for information."""
    import onnxslim

    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # noqa: BLE001 - onnxslim failing is not fatal; we keep the plain export
        return model, SimplifyResult(False, before, before, reason=f"onnxslim failed: {type(e).__name__}: {e}")
    result = decide(model, slim)
    if measure_latency and session_factory is not None and feed is not None:
        s_before, s_after = session_factory(model), session_factory(slim)
        t0 = time.perf_counter()
        s_before.run(None, feed)
        per_call = max(time.perf_counter() - t0, 1e-4)
        calls = max(1, min(20, int(0.1 / per_call)))
        blocks = max(3, min(15, int(time_budget_s / (2 * calls * per_call))))
        result.ort_ms_before, result.ort_ms_after = _median_block_latency([s_before, s_after], feed, blocks, calls)
    return (slim if result.applied else model), result


def save_single_file(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file; external data only when the protobuf limit (2 GB) forces it."""
    if model.ByteSize() < 2_000_000_000:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
