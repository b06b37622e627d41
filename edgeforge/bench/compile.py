"""`edgeforge compile ART --target T`: the target's deployable artifact under ART/<target>/.

- `openvino-ir`: ART/<target>/<precision>/model.xml + model.bin (FP32 weights kept);
- `tensorrt-engine`: ART/<target>/<precision>/model.engine (needs TensorRT and the GPU it is
  for; a Jetson engine is built on the Jetson);
- `mlpackage`: ART/<target>/<precision>.mlpackage converted from the recipe's torch model with
  the weights and seed recorded by `export` (so the same weights as the ONNX).

Each is recorded in the manifest as step `compile/<target>/<precision>` with the sha256 of the
source ONNX and of every file written; an up-to-date compile is skipped. A toolchain that is
absent raises NotAvailable (exit 2) saying what is missing.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from edgeforge import targets
from edgeforge.artifacts import Manifest, sha256_file, sha256_json
from edgeforge.errors import BadInput, NotAvailable
from edgeforge.targets import precision_family
from edgeforge.versions import toolchain_versions


@dataclass
class CompileResult:
    target: str
    precision: str
    path: Path
    files: list[Path] = field(default_factory=list)
    sha256: str = ""
    skipped: bool = False


def compile_artifact(artifact: str | os.PathLike, target: str, precision: str = "fp32", force: bool = False,
                     argv: list[str] | None = None) -> CompileResult:
    art = Path(artifact)
    tgt = targets.load(target)
    if tgt.compile == "none":
        raise BadInput(f"target {tgt.name} runs the ONNX as it is ({tgt.runtime}); there is nothing to compile. "
                       f"Targets with a compiled form: "
                       + ", ".join(t.name for t in targets.all_targets() if t.compile != "none"))
    tgt.runtime_options(precision)  # BadInput when the target does not offer this precision
    if tgt.compile == "tensorrt-engine" and tgt.reach.kind == "agent":
        raise NotAvailable(f"a TensorRT engine only runs on the GPU and TensorRT version it was built with; "
                           f"{tgt.name} builds its engine on the device (its agent builds it from the ONNX "
                           f"on first load and caches it by hash), not here")
    manifest = Manifest(art)
    step = f"compile/{tgt.name}/{precision}"
    if tgt.compile == "mlpackage":
        source = _export_entry(manifest, art)
        source_sha = sha256_json({k: source.get(k) for k in ("recipe_hash", "weights", "seed", "onnx")})
    else:
        onnx = art / ("fp32" if precision == "fp16" else precision) / "model.onnx"
        if not onnx.is_file():
            raise BadInput(f"{onnx}: no such model (export first; INT8 models come from `edgeforge quantize`)")
        source_sha = sha256_file(onnx)
    versions = toolchain_versions()
    inputs_hash = sha256_json({"source": source_sha, "target": tgt.model_dump(), "precision": precision,
                               "versions": versions})
    if not force and manifest.is_up_to_date(step, inputs_hash):
        entry = manifest.step(step)
        return CompileResult(tgt.name, precision, art / entry["path"], [art / f for f in entry["files"]],
                             entry["sha256"], skipped=True)

    if tgt.compile == "openvino-ir":
        from edgeforge.runtimes.openvino import compile_ir

        out = art / tgt.name / precision
        files = compile_ir(onnx, out)
        path = out / "model.xml"
    elif tgt.compile == "tensorrt-engine":
        from edgeforge.runtimes.tensorrt import compile_engine, import_tensorrt

        import_tensorrt()  # NotAvailable (exit 2) without TensorRT or a GPU
        out = art / tgt.name / precision
        files = compile_engine(onnx, out, precision_family(precision))
        path = files[0]
    else:
        path = _compile_mlpackage(art, tgt, precision, source)
        files = sorted(p for p in path.rglob("*") if p.is_file())
    digest = sha256_json({str(f.relative_to(art)): sha256_file(f) for f in files})
    Manifest(art).record(step, {
        "command": shlex.join(argv) if argv else None,
        "inputs_hash": inputs_hash,
        "target": tgt.name,
        "format": tgt.compile,
        "precision": precision,
        "path": str(path.relative_to(art)),
        "sha256": digest,
        "source_sha256": source_sha,
        "toolchain": versions,
    }, files=files)
    return CompileResult(tgt.name, precision, path, files, digest)


def _export_entry(manifest: Manifest, art: Path) -> dict:
    entry = manifest.step("export")
    if not entry:
        raise BadInput(f"{art}/manifest.json has no export step: run `edgeforge export RECIPE --out {art}` first")
    return entry


def _compile_mlpackage(art: Path, tgt: targets.Target, precision: str, export: dict) -> Path:
    """Convert the recipe's torch model (export's weights and seed) to an .mlpackage."""
    from edgeforge.runtimes.coreml import convert_torch, import_coremltools, save_mlpackage

    import_coremltools()  # NotAvailable before building the model
    from edgeforge.export.pipeline import prepare_model

    recipe = export.get("recipe")
    weights = (export.get("weights") or {}).get("path")
    prepared = prepare_model(recipe, weights=weights, seed=int(export.get("seed", 0)), batch=1)
    outputs = [o["name"] for o in export.get("outputs", [])] or None
    mlmodel = convert_torch(prepared.model, prepared.inputs, precision=precision, output_names=outputs)
    return save_mlpackage(mlmodel, art / tgt.name / f"{precision}.mlpackage")
