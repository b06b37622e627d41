"""Parity between PyTorch and an ONNX model run by ONNX Runtime on the CPU.

Judged relative to the output's scale (design.md): a randomly initialised model can have logits
near 1e15, where an absolute tolerance means nothing. rel_err = max|ort - torch| / max(max|torch|,
floor); the floor keeps near-zero outputs from demanding impossible relative precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class ParityResult:
    max_abs_err: float
    max_abs_ref: float
    rel_err: float
    cosine: float
    num_inputs: int
    tol: float
    floor: float
    min_cosine: float
    passed: bool
    provider: str = "CPUExecutionProvider"

    def to_dict(self) -> dict:
        return asdict(self)


def compare_outputs(refs: list[np.ndarray], outs: list[np.ndarray]) -> tuple[float, float, float]:
    """(max abs err, max abs ref, cosine) over all outputs flattened together."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    out = np.concatenate([np.asarray(o, np.float64).ravel() for o in outs])
    if ref.shape != out.shape:
        raise ValueError(f"output sizes differ: reference {ref.shape}, onnx {out.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf"), float(np.abs(ref).max(initial=0.0)), float("nan")
    err = float(np.abs(out - ref).max(initial=0.0))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(ref @ out / denom) if denom > 0 else (1.0 if err == 0 else 0.0)
    return err, float(np.abs(ref).max(initial=0.0)), cosine


def has_custom_domain(onnx_path: str | Path, domain: str = "edgeforge") -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.domain == domain for n in model.graph.node)


def ort_cpu_session(onnx_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session, with the edgeforge custom-op library when the model needs it."""
    import onnxruntime as ort

    from edgeforge.errors import NotAvailable

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    if has_custom_domain(onnx_path):
        try:
            from edgeforge.ops.native import register_ort
        except ImportError as e:  # the native loader is part of edgeforge.ops
            raise NotAvailable(f"{onnx_path} has edgeforge custom ops but the native loader is missing ({e})") from e
        if not register_ort(so):
            raise NotAvailable(f"{onnx_path} has edgeforge:: custom ops; ONNX Runtime needs the edgeforge "
                               "kernel library: run `edgeforge plugins build`, or export with --custom-ops decompose")
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def check_parity(onnx_path: str | Path, feeds: list[dict[str, np.ndarray]], refs: list[list[np.ndarray]],
                 tol: float, floor: float, min_cosine: float) -> ParityResult:
    """Run each feed through ORT and compare with the torch reference outputs."""
    sess = ort_cpu_session(onnx_path)
    all_ref, all_out = [], []
    for feed, ref in zip(feeds, refs):
        outs = sess.run(None, feed)
        all_ref.extend(ref)
        all_out.extend(outs[: len(ref)])
    err, scale, cos = compare_outputs(all_ref, all_out)
    rel = err / max(scale, floor)
    passed = bool(rel <= tol and cos >= min_cosine)
    return ParityResult(err, scale, rel, cos, len(feeds), tol, floor, min_cosine, passed)
