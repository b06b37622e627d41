"""`edgeforge import MODEL.onnx --out ART`: an artifact from an ONNX file another tool wrote.

The door that ONNX Runtime's quantizer, NNCF and TensorRT Model Optimizer offer: a model no
recipe built (torch's dynamo exporter, tf2onnx, a vendor's file) gets the same artifact as
`edgeforge export` leaves, so `quantize`, `compile` and `bench` work on it:
- ART/fp32/model.onnx, written atomically, after ONNX Runtime has loaded it and run it once;
- the manifest's `export` step (the step the other commands read), recording the source file's
  path and sha256 and the input spec (`resolved_recipe.input`: shape read from the model's input,
  mean/std and layout from the options).

One float32 image input of rank 4 is accepted (the calibration sets and bench inputs are
images). A dynamic batch dimension is fixed to 1 (calibration and bench run one sample at a
time, and static shapes let the graph passes and runtimes do more), and said so. For `--layout
NHWC` a Transpose is put in front so that the artifact takes NCHW, as every edgeforge artifact
does (the data pipeline produces NCHW); runtimes fold it into the model's own first Transpose.
There is no torch model behind an imported artifact: the quantizer's torch-simulation check
says "not run" and CoreML conversion (which starts from torch) is not possible.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeforge.artifacts import Manifest, atomic_path, sha256_file, sha256_json
from edgeforge.errors import BadInput

STEP = "export"  # quantize, compile and bench read the input spec and the model from this step
LAYOUTS = ("NCHW", "NHWC")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class ImportResult:
    out_dir: Path
    onnx_path: Path
    entry: dict
    skipped: bool = False
    notes: list[str] = field(default_factory=list)


def _load(src: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(src))  # external data, if any, is read from beside the file
    except Exception as e:  # noqa: BLE001 - protobuf/IO errors: say which file and what it should be
        raise BadInput(f"{src}: not a readable ONNX model ({type(e).__name__}: {e}); "
                       "accepted: an .onnx file (with its external data beside it)") from None


def _external_data(src: Path) -> dict[str, str]:
    """sha256 of each external-data file the model reads (torch's dynamo exporter writes one):
    the source's hash must cover its weights too."""
    try:
        m = onnx.load(str(src), load_external_data=False)
    except Exception:  # noqa: BLE001 - _load reports it
        return {}
    locs = {e.value for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}
    return {loc: sha256_file(src.parent / loc) for loc in sorted(locs) if (src.parent / loc).is_file()}


def _image_input(src: Path, model: onnx.ModelProto, layout: str) -> tuple[onnx.ValueInfoProto, list, list[str]]:
    """The model's one float image input, its static shape (batch 1) and what was changed."""
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise BadInput(f"{src}: the model has {len(ins)} inputs ({', '.join(i.name for i in ins) or 'none'}); "
                       "edgeforge import accepts a model with exactly one image input")
    vi = ins[0]
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or tt.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type) if vi.type.HasField("tensor_type") else "not a tensor"
        raise BadInput(f"{src}: input {vi.name!r} is {dtype}; edgeforge import accepts a float32 image input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tt.shape.dim]
    if len(dims) != 4:
        raise BadInput(f"{src}: input {vi.name!r} has shape {dims}; edgeforge import accepts an image batch "
                       f"of rank 4 ({' or '.join(LAYOUTS)})")
    notes = []
    if not isinstance(dims[0], int):
        notes.append(f"input {vi.name!r}: dynamic batch dimension {dims[0]!r} fixed to 1 "
                     "(calibration and bench run one sample at a time)")
        dims[0] = 1
    if dims[0] != 1:
        notes.append(f"input {vi.name!r}: batch {dims[0]} kept as the model declares it")
    if any(not isinstance(d, int) for d in dims[1:]):
        raise BadInput(f"{src}: input {vi.name!r} has dynamic dimensions {dims[1:]} ({layout} without batch); "
                       "edgeforge import needs a static image size: export the model with a fixed input size")
    return vi, dims, notes


def _fix_batch(model: onnx.ModelProto, vi: onnx.ValueInfoProto) -> None:
    """Input batch dim -> 1, and the same symbolic dim in outputs/value_info (same symbol, same size)."""
    d0 = vi.type.tensor_type.shape.dim[0]
    sym = d0.dim_param
    d0.Clear()
    d0.dim_value = 1
    if not sym:
        return
    for v in list(model.graph.output) + list(model.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param == sym:
                d.Clear()
                d.dim_value = 1


def _nchw_front(model: onnx.ModelProto, vi: onnx.ValueInfoProto, nhwc: list[int]) -> None:
    """Make the model take NCHW: a new input feeds Transpose(perm 0,2,3,1) into the NHWC input."""
    g = model.graph
    taken = {n.name for n in g.node} | {t for n in g.node for t in (*n.input, *n.output)} | \
        {i.name for i in g.input} | {i.name for i in g.initializer}
    old = vi.name
    new = f"{old}_nchw"
    while new in taken:
        new += "_"
    n, h, w, c = nhwc
    vi.name = new
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for v in (n, c, h, w):
        shape.dim.add().dim_value = v
    g.node.insert(0, onnx.helper.make_node("Transpose", [new], [old], perm=[0, 2, 3, 1],
                                           name=f"{new}_to_NHWC"))


def _run_once(path: Path, shape: list[int], mean, std) -> dict:
    """Load in ONNX Runtime (CPU) and run one normalised random image: the model works here."""
    import onnxruntime as ort

    from edgeforge.bench.inputs import normalised_pixels

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = normalised_pixels(np.random.default_rng(0), tuple(shape), {"mean": mean, "std": std})
        t0 = time.perf_counter()
        outs = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
        ms = (time.perf_counter() - t0) * 1e3
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise BadInput(f"ONNX Runtime cannot run this model ({type(e).__name__}: {e}); nothing was imported") from None
    finite = all(np.isfinite(o).all() for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f")
    return {"onnxruntime": ort.__version__, "first_run_ms": round(ms, 3), "outputs_finite": bool(finite),
            "output_shapes": [list(np.shape(o)) for o in outs]}


def import_onnx(source: str | os.PathLike, out_dir: str | os.PathLike, mean: list[float] | None = None,
                std: list[float] | None = None, layout: str = "NCHW", name: str | None = None,
                force: bool = False, argv: list[str] | None = None) -> ImportResult:
    """Make an artifact at `out_dir` from the ONNX file `source` (see the module docstring)."""
    from edgeforge.export import graph_checks
    from edgeforge.export.simplify import save_single_file
    from edgeforge.recipes import InputSpec
    from edgeforge.versions import toolchain_versions

    src = Path(source)
    if not src.is_file():
        raise BadInput(f"{src}: no such file (accepted: an .onnx file)")
    if layout not in LAYOUTS:
        raise BadInput(f"--layout {layout!r}: accepted {', '.join(LAYOUTS)}")
    out = Path(out_dir)
    onnx_path = out / "fp32" / "model.onnx"
    name = name or src.stem
    src_sha = sha256_file(src)
    ext = _external_data(src)
    settings = {"source_sha256": src_sha, "external_data": ext, "mean": mean, "std": std, "layout": layout, "name": name}
    versions = toolchain_versions()
    inputs_hash = sha256_json({"settings": settings, "versions": versions})
    manifest = Manifest(out)
    if not force and manifest.is_up_to_date(STEP, inputs_hash):
        return ImportResult(out, onnx_path, manifest.step(STEP), skipped=True)

    model = _load(src)
    vi, dims, notes = _image_input(src, model, layout)
    c = dims[1] if layout == "NCHW" else dims[3]
    if not mean or not std:
        notes.append("--mean/--std not given: " + ("ImageNet's" if c == 3 else "0.5 per channel") + " assumed")
    mean = list(mean) if mean else (IMAGENET_MEAN if c == 3 else [0.5] * c)
    std = list(std) if std else (IMAGENET_STD if c == 3 else [0.5] * c)
    if len(mean) != c or len(std) != c:
        raise BadInput(f"--mean/--std: the model's input has {c} channels ({layout} {dims}); give {c} values each "
                       f"(got mean {mean}, std {std})")
    input_name = vi.name
    if vi.type.tensor_type.shape.dim[0].dim_value != dims[0]:
        _fix_batch(model, vi)
    chw = [dims[1], dims[2], dims[3]] if layout == "NCHW" else [dims[3], dims[1], dims[2]]
    if layout == "NHWC":
        _nchw_front(model, vi, dims)
        input_name = vi.name
        notes.append(f"NHWC input {dims}: a Transpose in front makes the artifact take NCHW "
                     f"{[dims[0], *chw]} (input {input_name!r})")
    try:
        spec = InputSpec(shape=chw, layout="NCHW", mean=mean, std=std, name=input_name)
    except ValueError as e:
        raise BadInput(f"--mean/--std/--layout: {e}") from None
    try:
        onnx.checker.check_model(model)
        checker = "passed"
    except Exception as e:  # noqa: BLE001 - recorded: ONNX Runtime loading it is what matters
        checker = f"failed: {type(e).__name__}: {e}"
        notes.append(f"onnx.checker: {checker}")

    with atomic_path(onnx_path) as tmp:
        save_single_file(model, tmp)
        check = _run_once(tmp, [dims[0], *chw], mean, std)
    final = onnx.load(str(onnx_path), load_external_data=False)
    ins, outs = graph_checks.io_spec(final)
    params = int(sum(np.prod(i.dims) for i in final.graph.initializer
                     if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)))
    opset = next((o.version for o in final.opset_import if o.domain in ("", "ai.onnx")), None)
    entry = {
        "recipe": name,
        "imported_from": {"path": str(src.resolve()), "sha256": src_sha, "size_bytes": src.stat().st_size,
                          **({"external_data_sha256": ext} if ext else {}),
                          "producer": f"{model.producer_name} {model.producer_version}".strip() or None},
        "resolved_recipe": {"name": name, "input": spec.model_dump(mode="json"),
                            "quant": {"method": "minmax", "calib": "natural", "bits": "w8a8"}},
        "inputs_hash": inputs_hash,
        "command": shlex.join(argv) if argv else None,
        "seed": 0,
        "weights": {"path": None, "note": f"imported ONNX file {src.name} (weights inside it)"},
        "inputs": ins,
        "outputs": outs,
        "model": {"params": params, "macs": None, "builder": None},
        "onnx": {"path": str(onnx_path.relative_to(out)), "opset": opset, "sha256": sha256_file(onnx_path),
                 "batch": dims[0], "size_bytes": onnx_path.stat().st_size, "nodes": len(final.graph.node),
                 "ops": graph_checks.op_histogram(final), "checker": checker},
        "check": check,
        "notes": notes,
        "toolchain": versions,
    }
    manifest.set("recipe", name)
    manifest.record(STEP, entry, files=[onnx_path])
    return ImportResult(out, onnx_path, manifest.step(STEP), notes=notes)
