"""onnxslim simplification, kept only if it does not cost ONNX Runtime speed.

onnxslim folds constants and removes redundant nodes, but a rewrite can break a pattern that
ONNX Runtime's own optimizer would have fused (e.g. attention or GELU fusions). So both graphs
are timed in ORT, alternating blocks of calls (a runtime's spinning threads slow whatever runs
right after it), and the simplified graph is kept unless its median is worse beyond noise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass
class SimplifyResult:
    applied: bool
    nodes_before: int
    nodes_after: int
    ort_ms_before: float | None = None
    ort_ms_after: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


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


def simplify(model: onnx.ModelProto, feed: dict[str, np.ndarray], session_factory, *,
             time_budget_s: float = 4.0, slack: float = 1.05) -> tuple[onnx.ModelProto, SimplifyResult]:
    """Return (model to keep, record). `session_factory(model_proto) -> ort session`."""
    import onnxslim

    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # noqa: BLE001 - onnxslim failing is not fatal; we keep the plain export
        return model, SimplifyResult(False, before, before, reason=f"onnxslim failed: {e}")
    after = len(slim.graph.node)
    if time_budget_s <= 0:
        return slim, SimplifyResult(True, before, after, reason="kept: latency check skipped")
    s_before, s_after = session_factory(model), session_factory(slim)
    t0 = time.perf_counter()
    s_before.run(None, feed)
    per_call = max(time.perf_counter() - t0, 1e-4)
    calls = max(1, min(20, int(0.1 / per_call)))
    blocks = max(3, min(15, int(time_budget_s / (2 * calls * per_call))))
    ms_before, ms_after = _median_block_latency([s_before, s_after], feed, blocks, calls)
    if ms_after <= ms_before * slack:
        return slim, SimplifyResult(True, before, after, ms_before, ms_after, "kept: not slower in ORT")
    return model, SimplifyResult(False, before, after, ms_before, ms_after,
                                 f"discarded: ORT median {ms_after:.3f} ms vs {ms_before:.3f} ms unsimplified")


def save_single_file(model: onnx.ModelProto, path: Path) -> None:
    """Save as one file; external data only when the protobuf limit (2 GB) forces it."""
    if model.ByteSize() < 2_000_000_000:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
