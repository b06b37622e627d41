"""Run the FP32 ONNX model in ONNX Runtime over a calibration set and observe chosen tensors.

The model is augmented with the tensors as extra graph outputs (ORT keeps graph outputs intact
through its optimisations), run one sample at a time (exported models often have a fixed batch
of 1), and every observed tensor streams into its `Observer`. A rich progress bar shows progress.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import numpy as np
import onnx

from edgeforge.quant.observers import Observer


def with_outputs(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (float, shape left to the runtime)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
            have.add(t)
    return m


def session(model: onnx.ModelProto | str, threads: int = 0, optimize: str = "basic", quiet: bool = False):
    """An ORT CPU session; `optimize` 'basic' keeps intermediate tensors as named in the graph;
    `quiet`: not even errors logged (a run that is allowed to fail, e.g. probing a batch size)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimize]
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 4 if quiet else 3
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model, load_external_data=False)
    if any(n.domain == "edgeforge" for n in proto.graph.node):
        # plugin-mode exports hold edgeforge:: nodes: ORT runs them through our kernel library
        from edgeforge.errors import NotAvailable
        from edgeforge.ops.native import register_ort

        if not register_ort(so):
            raise NotAvailable("this model has edgeforge:: custom ops and their ONNX Runtime library is not "
                               "built: run `edgeforge plugins build`, or export with --custom-ops decompose")
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def input_name(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        from edgeforge.errors import BadInput

        raise BadInput(f"quantization needs a model with one input; this one has {names}")
    return names[0]


@contextlib.contextmanager
def progress(description: str, total: int, console=None, enabled: bool = True):
    """Yield an `advance()` callable backed by a rich progress bar (or a no-op)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)


def observe(model: onnx.ModelProto, x: np.ndarray, observers: dict[str, Observer],
            console=None, show_progress: bool = True, desc: str = "calibrating",
            keep: Callable[[str], bool] | None = None,
            means: dict[str, np.ndarray | None] | None = None) -> dict[str, list[np.ndarray]]:
    """Run every sample of `x` (N, ...) through `model`, updating `observers[tensor]`, and (where
    `means` names tensors) their mean over the samples (float64, in place, for bias correction).

    Returns the values of tensors for which `keep(tensor)` is true (for analysis), per sample.
    """
    names = list(dict.fromkeys([*observers, *(means or {})]))
    aug = with_outputs(model, names)
    sess = session(aug)
    inp = input_name(model)
    out_names = [o.name for o in sess.get_outputs()]
    kept: dict[str, list[np.ndarray]] = {}
    with progress(desc, len(x), console, show_progress) as advance:
        for i in range(len(x)):
            outs = sess.run(None, {inp: x[i:i + 1]})
            for name, val in zip(out_names, outs):
                if name in observers:
                    observers[name].update(val)
                if means is not None and name in means:
                    v = np.asarray(val, np.float64) / len(x)
                    means[name] = v if means[name] is None else means[name] + v
                if keep is not None and keep(name):
                    kept.setdefault(name, []).append(val)
            advance()
    return kept


def run_outputs(model: onnx.ModelProto | str, x: np.ndarray, tensors: list[str] | None = None,
                optimize: str = "basic") -> dict[str, np.ndarray]:
    """Run each sample and stack the requested tensors (default: the graph outputs) over samples."""
    if isinstance(model, str):
        model = onnx.load(model)
    m = with_outputs(model, tensors) if tensors else model
    sess = session(m, optimize=optimize)
    inp = input_name(model)
    names = tensors or [o.name for o in model.graph.output]
    acc: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(x)):
        outs = sess.run(names, {inp: x[i:i + 1]})
        for n, v in zip(names, outs):
            acc[n].append(v)
    return {n: np.concatenate(v) if v and v[0].ndim else np.stack(v) for n, v in acc.items()}
