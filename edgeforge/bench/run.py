"""`edgeforge bench`: measure an artifact's model on a target and write its report.

    ART/<precision>/model.onnx  --(target's runtime)-->  ART/reports/<target>-<precision>.{json,md,html}

The steps: resolve the model file for the target (a compiled artifact under ART/<target>/ when
`compile` made one, else the ONNX), check an INT8 model against the target's quantization
constraints, reach the target (or write a "not measured" report with the reason), load and time
the first inference with its peak memory, measure latency (alternating blocks with the FP32
model when an INT8 one is benched, so the speed-up is measured under the same conditions),
evaluate accuracy with `--eval`, and relate the latency to the device's peak.

Only the accuracy path needs numpy beyond the runtimes; nothing here imports torch.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeforge import __version__, targets
from edgeforge.artifacts import Manifest, sha256_file
from edgeforge.bench import accuracy as acc
from edgeforge.bench import latency as lat
from edgeforge.bench.inputs import make_feed, recipe_input, specs_from_manifest
from edgeforge.bench.memory import PeakMemory
from edgeforge.errors import BadInput
from edgeforge.runtimes import create_runner
from edgeforge.runtimes.base import Runner
from edgeforge.targets.host import _cpu_name, cpu_count


@dataclass
class ModelFile:
    precision: str
    path: Path  # what the runtime loads
    onnx: Path | None  # the ONNX it came from
    note: str = ""


@dataclass
class BenchResult:
    report: Any  # edgeforge.report.schema.Report
    paths: dict[str, Path] = field(default_factory=dict)


def _check_precision_name(precision: str) -> None:
    if precision in ("fp32", "fp16", "int8-weights", "w8a8"):
        return
    if precision.startswith("int8-") and len(precision) > 5 and "/" not in precision:
        return
    raise BadInput(f"--precision {precision!r}: use fp32, fp16 or int8-<method> (a folder ART/int8-<method>/)")


def resolve_model(art: Path, target: targets.Target, precision: str) -> ModelFile:
    """The file the target's runtime loads for `precision` (see the module docstring)."""
    _check_precision_name(precision)
    if target.compile == "mlpackage":
        pkg = art / target.name / f"{precision}.mlpackage"
        if not pkg.exists():
            raise BadInput(f"{pkg}: not compiled; run `edgeforge compile {art} --target {target.name} "
                           f"--precision {precision}` (on any OS; predicting needs macOS)")
        return ModelFile(precision, pkg, None, "mlpackage converted from the recipe's torch model")
    onnx_dir = art / ("fp32" if precision == "fp16" else precision)
    onnx = onnx_dir / "model.onnx"
    if not onnx.is_file():
        have = sorted(p.parent.name for p in art.glob("*/model.onnx"))
        raise BadInput(f"{onnx}: no such model; this artifact has {have or 'no models'} "
                       f"(export first; INT8 models come from `edgeforge quantize`)")
    compiled = {"openvino-ir": "model.xml", "tensorrt-engine": "model.engine"}.get(target.compile)
    if compiled:
        path = art / target.name / precision / compiled
        step = Manifest(art).step(f"compile/{target.name}/{precision}")
        if path.is_file() and step and step.get("source_sha256") == sha256_file(onnx):
            return ModelFile(precision, path, onnx, f"compiled by `edgeforge compile` from {onnx_dir.name}/model.onnx")
    return ModelFile(precision, onnx, onnx)


def make_runner(target: targets.Target, model: ModelFile, device_url: str | None = None,
                threads: int | None = None, name: str | None = None) -> Runner:
    """The target's runner for `model` (a remote one when the target is reached through an agent)."""
    options = target.runtime_options(model.precision)
    if threads is not None and "threads" in options:
        options["threads"] = threads
    if target.reach.kind == "agent":
        url = target.reach.agent_url(device_url)
        return _remote(url, model, target, options, name)
    return create_runner(target.runtime, model.path, name=name, **options)


def _remote(url: str, model: ModelFile, target: targets.Target, options: dict, name: str | None) -> Runner:
    from edgeforge.runtimes.remote import RemoteRunner

    return RemoteRunner(url, model.path, runtime=target.runtime, options=options, name=name)


def _host() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
            "usable_cores": cpu_count(), "python": sys.version.split()[0]}


def _model_info(art: Path, model: ModelFile, export: Mapping | None, quant: dict | None) -> dict:
    size = sum(f.stat().st_size for f in model.path.rglob("*") if f.is_file()) if model.path.is_dir() \
        else model.path.stat().st_size
    if model.path.suffix == ".xml":
        size += model.path.with_suffix(".bin").stat().st_size
    digest = sha256_file(model.path) if model.path.is_file() else \
        sha256_file(next(model.path.rglob("*.mlmodel"), model.path / "Manifest.json"))
    return {
        "artifact": str(art),
        "recipe": (export or {}).get("recipe") if isinstance((export or {}).get("recipe"), str) else None,
        "precision": model.precision,
        "path": str(model.path),
        "sha256": digest,
        "size_bytes": int(size),
        "params": ((export or {}).get("model") or {}).get("params"),
        "macs": ((export or {}).get("model") or {}).get("macs"),
        "inputs": list((export or {}).get("inputs") or []),
        "quant": quant,
    }


def _target_info(target: targets.Target, reached: str) -> dict:
    peak = target.peak_figures()
    return {"name": target.name, "device": target.device or target.description, "runtime": target.runtime,
            "reached": reached, "peak": peak.model_dump(exclude_none=True)}


def _efficiency(target: targets.Target, precision: str, macs: int | None, batch: int, p50_ms: float,
                size_bytes: int) -> dict:
    peak = target.peak_figures()
    peak_gops, figure = peak.for_precision(precision)
    eff: dict[str, Any] = {"macs": macs, "source": peak.source, "memory_bandwidth_gbs": peak.memory_bandwidth_gbs}
    if macs:
        ops = 2.0 * macs * batch
        achieved = ops / (p50_ms / 1e3) / 1e9
        eff.update(ops_per_inference=ops, achieved_gops=achieved)
        if peak_gops:
            eff.update(peak_gops=peak_gops, peak_figure=figure, fraction_of_peak=achieved / peak_gops)
        else:
            eff["note"] = "no peak compute figure for this target"
    else:
        eff["note"] = "MACs unknown (manifest steps.export.model.macs): no fraction of peak"
    if peak.memory_bandwidth_gbs:
        # Reading the weights once per inference is the least traffic a call can make.
        eff["weight_read_fraction_of_bandwidth"] = size_bytes / (p50_ms / 1e3) / (peak.memory_bandwidth_gbs * 1e9)
    if precision.startswith("int8"):
        eff["note"] = (eff.get("note", "") + " INT8 is compared with the INT8 peak; layers left in float "
                       "(LayerNorm, softmax) run slower than that.").strip()
    return eff


def _load(runner: Runner, feed: Mapping) -> tuple[dict, float, float]:
    """Activate and run the first inference under a peak-memory probe."""
    with PeakMemory() as mem:
        runner.activate()
        feed = runner.check_feed(feed)
        t0 = time.perf_counter()
        runner.infer(feed, check_inputs=False)
        first_ms = (time.perf_counter() - t0) * 1e3
    load_s = runner.device_load_time_s if runner.device_load_time_s is not None else runner.load_time_s
    memory = {"method": mem.method, "rss_before_mb": mem.before_mb, "peak_rss_mb": mem.peak_mb,
              "peak_delta_mb": mem.delta_mb}
    return memory, load_s * 1e3, first_ms


def bench_artifact(
    artifact: str | os.PathLike,
    target: str = targets.DEFAULT_TARGET,
    precision: str = "fp32",
    eval_dataset: str | os.PathLike | None = None,
    eval_limit: int | None = None,
    device_url: str | None = None,
    settings: lat.Settings | None = None,
    threads: int | None = None,
    baseline: bool = True,
    seed: int = 0,
    argv: list[str] | None = None,
    write: bool = True,
) -> BenchResult:
    """Bench `artifact` at `precision` on `target`; write ART/reports/<target>-<precision>.* when `write`."""
    from edgeforge.report.io import write_index, write_report
    from edgeforge.report.schema import Report

    art = Path(artifact)
    if not art.is_dir():
        raise BadInput(f"{art}: no such artifact directory (make one with `edgeforge export RECIPE --out {art}`)")
    tgt = targets.load(target)
    settings = settings or lat.Settings()
    manifest = Manifest(art)
    export = manifest.step("export")
    model = resolve_model(art, tgt, precision)
    quant = _quant_info(art, model, tgt)
    common = dict(created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), edgeforge_version=__version__,
                  command=shlex.join(argv) if argv else None, host=_host(), settings=settings.to_dict())
    reachable, how = targets.reachability(tgt, device_url)
    if not reachable:
        report = Report(status="not_measured", reason=how, model=_model_info(art, model, export, quant),
                        target=_target_info(tgt, f"not reached: {how}"), **common)
        paths = write_report(report, art / "reports") if write else {}
        if write:
            paths["index"] = write_index(art / "reports")
        return BenchResult(report, paths)

    input_spec = recipe_input(export)
    runner = make_runner(tgt, model, device_url, threads, name=precision)
    base_model = None
    if baseline and precision != "fp32" and "fp32" in tgt.precisions and tgt.compile != "mlpackage":
        try:
            base_model = resolve_model(art, tgt, "fp32")
        except BadInput:
            base_model = None
    base_runner = make_runner(tgt, base_model, device_url, threads, name="fp32") if base_model else None
    warnings: list[str] = []
    try:
        specs = specs_from_manifest(export)
        feed = None
        if specs:
            feed = make_feed(specs, input_spec, batch=1, seed=seed)
        memory, cold_ms, first_ms = _load(runner, feed) if feed else _load_discovering(runner, input_spec, seed)
        if feed is None:
            feed = make_feed(runner.input_specs(), input_spec, seed=seed)
        batch = runner.input_specs()[0].concrete_shape(1)[0] if runner.input_specs() else 1
        if base_runner is not None:
            base_runner.activate()
        device = runner.device_latency(feed, settings.warmup, settings.iterations, settings.min_time_s, seed)
        if device is not None:
            samples = {precision: lat.samples_from_device(device, settings)}
            if base_runner is not None:
                warnings.append("on-device runs are not interleaved with the FP32 baseline; speed-up not stated")
        else:
            runners = {precision: runner, **({"fp32": base_runner} if base_runner else {})}
            feeds = {name: feed for name in runners}
            samples = lat.measure(runners, feeds, settings)
        latency = lat.summarize(samples[precision], batch=batch)
        latency.update(warmup=settings.warmup, cold_load_ms=cold_ms, first_inference_ms=first_ms)
        if (w := lat.noise_warning(latency)):
            warnings.append(w)
        base = None
        if base_runner is not None and "fp32" in samples:
            b = lat.summarize(samples["fp32"], batch=batch)
            base = {"precision": "fp32", "path": str(base_model.path), "p50": b["p50"], "noise_pct": b["noise_pct"],
                    "speedup": b["p50"] / latency["p50"]}
        accuracy = None
        if eval_dataset is not None:
            main = input_spec.get("name") or runner.input_specs()[0].name
            evalset = acc.load_eval_set(eval_dataset, input_spec or {"shape": list(runner.input_specs()[0].shape[1:])},
                                        eval_limit)
            accuracy = acc.evaluate(runner, evalset, feed, main, reference=base_runner,
                                    reference_name=f"fp32 ({tgt.name})" if base_runner else None)
        info = runner.info()
    finally:
        runner.deactivate()
        if base_runner is not None:
            base_runner.deactivate()
    mi = _model_info(art, model, export, quant)
    report = Report(
        status="measured", model=mi, target=_target_info(tgt, how),
        runtime={"runtime": info.runtime, "version": info.version, "device": info.device,
                 "options": info.options, "versions": info.versions},
        latency=latency, memory=memory,
        efficiency=_efficiency(tgt, precision, mi["macs"], batch, latency["p50"], mi["size_bytes"]),
        accuracy=accuracy, baseline=base, warnings=warnings, **common,
    )
    paths = write_report(report, art / "reports") if write else {}
    if write:
        paths["index"] = write_index(art / "reports")
        Manifest(art).record(f"bench/{tgt.name}/{precision}",
                             {"command": common["command"], "p50_ms": latency["p50"], "status": "measured"},
                             files=[paths["json"]])
    return BenchResult(report, paths)


def _load_discovering(runner: Runner, input_spec: Mapping, seed: int) -> tuple[dict, float, float]:
    """`_load` for an artifact without a manifest input list: the inputs come from the model."""
    with PeakMemory() as mem:
        runner.activate()
        feed = make_feed(runner.input_specs(), input_spec, seed=seed)
        t0 = time.perf_counter()
        runner.infer(feed)
        first_ms = (time.perf_counter() - t0) * 1e3
    load_s = runner.device_load_time_s if runner.device_load_time_s is not None else runner.load_time_s
    return ({"method": mem.method, "rss_before_mb": mem.before_mb, "peak_rss_mb": mem.peak_mb,
             "peak_delta_mb": mem.delta_mb}, load_s * 1e3, first_ms)


def _quant_info(art: Path, model: ModelFile, target: targets.Target) -> dict | None:
    """For an INT8 QDQ model: its QDQ summary, quant.json highlights, and a refusal when the
    target cannot run its scheme."""
    if not model.precision.startswith("int8-") or model.onnx is None:
        return None
    from edgeforge.targets.constraints import summarize_qdq, violations

    summary = summarize_qdq(model.onnx)
    problems = violations(summary, target.quantization)
    if problems:
        raise BadInput(f"{model.onnx} cannot run as quantized on {target.name}: " + "; ".join(problems))
    info: dict[str, Any] = {"method": model.precision[len("int8-"):], "qdq": summary.to_dict()}
    qjson = model.onnx.parent / "quant.json"
    if qjson.is_file():
        import json

        try:
            q = json.loads(qjson.read_text())
        except json.JSONDecodeError as e:
            raise BadInput(f"{qjson}: not valid JSON: {e}") from e
        for key in ("method", "bits", "calib", "calibration", "scheme", "num_samples"):
            if key in q:
                info[key] = q[key]
    return info
