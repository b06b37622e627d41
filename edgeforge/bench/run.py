"""`edgeforge bench`: measure an artifact's model on a target and write its report.

    ART/<precision>/model.onnx  --(target's runtime)-->  ART/reports/<target>-<precision>.{json,md,html}

The steps: resolve the model file for the target (a compiled artifact under ART/<target>/ when
`compile` made one, else the ONNX), check an INT8 model against the target's quantization
constraints, reach the target (or write a "not measured" report with the reason), load and time
the first inference with its peak memory, measure latency (alternating blocks with the FP32
model when an INT8 one is benched, so the speed-up is measured under the same conditions),
evaluate accuracy, check an INT8 model's kernels against the float emulation of its QDQ graph
(kernel fidelity), and relate the latency to the device's peak.

Accuracy: with `--eval` on that set (labels and agreement with FP32); without it an INT8 model
is still compared with FP32 (top-1 agreement, SQNR) on the inputs it was timed with: the timed
input and `CHECK_INPUTS - 1` more drawn the same way. On the same inputs its outputs are compared
with ONNX Runtime's float emulation of the QDQ graph (edgeforge.bench.fidelity); a drift is a
warning naming this CPU, and below `max_kernel_drift` dB a failure (`BenchResult.failures`,
exit 1 from the CLI, the report still written).

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
from edgeforge.artifacts import Manifest, sha256_file, sha256_json
from edgeforge.bench import accuracy as acc
from edgeforge.bench import fidelity
from edgeforge.bench import latency as lat
from edgeforge.bench.inputs import make_feed, recipe_input, specs_from_manifest
from edgeforge.bench.memory import PeakMemory
from edgeforge.errors import BadInput, EdgeforgeError
from edgeforge.runtimes import create_runner
from edgeforge.runtimes.base import Runner
from edgeforge.targets.host import _cpu_name, cpu_count, cpu_record

# Inputs an INT8 model is checked on without --eval (agreement/SQNR with FP32, kernel fidelity):
# the timed input and 15 more drawn the same way; a few inferences per model, small next to timing.
CHECK_INPUTS = 16


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
    others: list["BenchResult"] = field(default_factory=list)  # the --vs subjects' results
    failures: list[str] = field(default_factory=list)  # checks asked for that failed (max_kernel_drift)


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
    # A device behind an agent builds its own engine from the ONNX (engines are GPU-specific).
    if compiled and target.reach.kind == "local":
        path = art / target.name / precision / compiled
        step = Manifest(art).step(f"compile/{target.name}/{precision}")
        if path.is_file() and step and step.get("source_sha256") == sha256_file(onnx):
            return ModelFile(precision, path, onnx, f"compiled by `edgeforge compile` from {onnx_dir.name}/model.onnx")
    return ModelFile(precision, onnx, onnx)


def verify_model_files(art: Path, model: ModelFile) -> None:
    """Refuse (BadInput, exit 2, naming the file) a model whose file no longer has the sha256 the
    manifest recorded: a truncated ONNX would otherwise fail deep in the runtime's loader."""
    files = [model.path, model.onnx] + ([model.path.with_suffix(".bin")] if model.path.suffix == ".xml" else [])
    Manifest(art).verify(*dict.fromkeys(f for f in files if f is not None and not f.is_dir()))


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
    # The hash covers every file the runtime loads: an IR's weights live in its .bin, an
    # .mlpackage is a folder.
    if model.path.is_dir():
        digest = sha256_json({str(f.relative_to(model.path)): sha256_file(f)
                              for f in sorted(model.path.rglob("*")) if f.is_file()})
    elif model.path.suffix == ".xml":
        digest = sha256_json({"xml": sha256_file(model.path), "bin": sha256_file(model.path.with_suffix(".bin"))})
    else:
        digest = sha256_file(model.path)
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


@dataclass
class _Subject:
    """One (target, precision) measured in a bench run."""

    target: targets.Target
    precision: str
    model: ModelFile
    quant: dict | None
    how: str
    reachable: bool
    reported: bool = True  # False: an FP32 baseline folded into another subject's report
    baseline: "_Subject | None" = None
    runner: Runner | None = None
    memory: dict | None = None
    cold_ms: float | None = None
    first_ms: float | None = None

    @property
    def key(self) -> str:
        return f"{self.target.name}/{self.precision}"


def _parse_vs(item: str, precision: str) -> tuple[str, str]:
    name, _, prec = item.partition(":")
    return name, prec or precision


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
    vs: list[str] | tuple[str, ...] = (),
    max_kernel_drift: float | None = None,
) -> BenchResult:
    """Bench `artifact` at `precision` on `target`; write ART/reports/<target>-<precision>.* when `write`.

    `vs` adds other "TARGET[:PRECISION]" subjects (e.g. the same model on another runtime): all
    local subjects are timed in alternating blocks in one run, and each gets its own report
    (`BenchResult.others`). An INT8 subject is also timed against its target's FP32 model.

    `max_kernel_drift`: a SQNR floor in dB for every INT8 subject's kernels against the float
    emulation of its QDQ graph; a subject below it (or whose fidelity could not be measured) gets
    a message in `BenchResult.failures` (the reports are written all the same).
    """
    art = Path(artifact)
    if not art.is_dir():
        raise BadInput(f"{art}: no such artifact directory (make one with `edgeforge export RECIPE --out {art}`)")
    settings = settings or lat.Settings()
    export = Manifest(art).step("export")
    common = dict(created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), edgeforge_version=__version__,
                  command=shlex.join(argv) if argv else None, host=_host(), settings=settings.to_dict(),
                  cpu=cpu_record())

    def subject(target_name: str, prec: str) -> _Subject:
        tgt = targets.load(target_name)
        model = resolve_model(art, tgt, prec)
        verify_model_files(art, model)
        quant = _quant_info(art, model, tgt)
        ok, how = targets.reachability(tgt, device_url)
        return _Subject(tgt, prec, model, quant, how, ok)

    subjects = [subject(target, precision)] + [subject(*_parse_vs(v, precision)) for v in vs]
    keys = [s.key for s in subjects]
    if len(set(keys)) != len(keys):
        raise BadInput(f"--vs repeats a subject: {keys}")
    for s in subjects:
        if s.reachable and baseline and s.precision != "fp32" and "fp32" in s.target.precisions \
                and s.target.compile != "mlpackage":
            try:
                s.baseline = _Subject(s.target, "fp32", resolve_model(art, s.target, "fp32"), None, s.how, True,
                                      reported=False)
            except BadInput:
                s.baseline = None
            if s.baseline is not None:
                verify_model_files(art, s.baseline.model)
    measured = [s for s in subjects if s.reachable]
    timed = [x for s in measured for x in (s, s.baseline) if x is not None]
    input_spec = recipe_input(export)
    results: dict[str, Any] = {}
    failures: dict[str, list[str]] = {}
    try:
        feed_specs = specs_from_manifest(export)
        feed = make_feed(feed_specs, input_spec, seed=seed) if feed_specs else None
        for s in timed:
            s.runner = make_runner(s.target, s.model, device_url, threads, name=s.key)
            if feed is None:
                s.memory, s.cold_ms, s.first_ms = _load_discovering(s.runner, input_spec, seed)
                feed_specs = s.runner.input_specs()
                feed = make_feed(feed_specs, input_spec, seed=seed)
            else:
                s.memory, s.cold_ms, s.first_ms = _load(s.runner, feed)
        samples, warnings = _time_subjects(timed, feed, settings, seed)
        evalset = None
        for s in measured:
            batch = s.runner.input_specs()[0].concrete_shape(1)[0] if s.runner.input_specs() else 1
            main = input_spec.get("name") or s.runner.input_specs()[0].name
            int8 = s.precision.startswith("int8")
            accuracy, kf, notes = None, None, []
            check = None
            if eval_dataset is not None:
                if evalset is None:
                    evalset = acc.load_eval_set(
                        eval_dataset, input_spec or {"shape": list(s.runner.input_specs()[0].shape[1:])}, eval_limit)
                check = evalset
            elif int8:
                check = check_inputs(feed_specs, input_spec, feed, main, seed)
            if check is not None:
                scores = acc.logits(s.runner, check.x, feed, main)
                ref_scores, ref_name = _fp32_reference(art, s, check, feed, main, threads)
                accuracy = acc.evaluate(s.runner, check, feed, main, scores=scores, ref_scores=ref_scores,
                                        reference_name=ref_name)
                if int8:
                    kf, notes = _kernel_fidelity(s, check, scores, feed, main, threads, max_kernel_drift,
                                                 ref_scores)
            if int8 and max_kernel_drift is not None and (kf is None or kf.get("passed") is not True):
                if kf is None or kf.get("not_measured"):
                    why = (kf or {}).get("not_measured") or "no QDQ ONNX graph to emulate"
                    failures.setdefault(s.key, []).append(
                        f"{s.key}: --max-kernel-drift {max_kernel_drift:g} dB cannot be checked: kernel fidelity "
                        f"not measured ({why})")
                else:
                    failures.setdefault(s.key, []).append(
                        f"{s.key}: kernel drift: SQNR of the INT8 kernels against the float emulation of the QDQ "
                        f"graph is {kf['sqnr_db']:.1f} dB, below --max-kernel-drift {max_kernel_drift:g} dB "
                        f"(top-1 agreement {kf['agreement_top1']:.1f}% on {kf['num_samples']} inputs): "
                        f"{fidelity.advice(s.target.runtime, common['cpu'], _cpu_kernels(s))}")
            results[s.key] = (batch, accuracy, s.runner.info(), kf, notes)
    finally:
        for s in timed:
            if s.runner is not None:
                s.runner.deactivate()

    out: list[BenchResult] = []
    for s in subjects:
        if not s.reachable:
            report = _not_measured(art, s, export, common)
            if max_kernel_drift is not None and s.precision.startswith("int8"):
                failures.setdefault(s.key, []).append(
                    f"{s.key}: --max-kernel-drift {max_kernel_drift:g} dB cannot be checked: not measured ({s.how})")
        else:
            batch, accuracy, info, kf, notes = results[s.key]
            report = _measured(art, s, export, common, samples, batch, accuracy, info,
                               warnings.get(s.key, []) + notes, settings, kf)
        paths = _write(art, s, report, common) if write else {}
        out.append(BenchResult(report, paths, failures=failures.get(s.key, [])))
    main = out[0]
    main.others = out[1:]
    return main


def check_inputs(specs: list, input_spec: Mapping, feed: Mapping, main: str, seed: int,
                 n: int = CHECK_INPUTS) -> acc.EvalSet:
    """The timed input and `n - 1` more drawn the same way (seeds seed+1..), as an unlabelled set."""
    import hashlib

    import numpy as np

    x = np.concatenate([feed[main]] + [make_feed(specs, input_spec, seed=seed + i)[main] for i in range(1, n)])
    name = (f"bench inputs: the timed input and {n - 1} more drawn the same way (seeds {seed}..{seed + n - 1}; "
            f"uniform pixels normalised with the recipe's mean/std)")
    return acc.EvalSet(name, x, None, hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())


def _fp32_reference(art: Path, s: _Subject, check: acc.EvalSet, feed: Mapping, main: str,
                    threads: int | None) -> tuple[Any, str | None]:
    """FP32 outputs on `check.x`: the target's FP32 model timed alongside, or for an INT8 model
    without one (--no-baseline, a target without fp32) the FP32 ONNX in ONNX Runtime here."""
    if s.baseline is not None and s.baseline.runner is not None:
        return acc.logits(s.baseline.runner, check.x, feed, main), f"fp32 ({s.target.name})"
    fp32 = art / "fp32" / "model.onnx"
    if not s.precision.startswith("int8") or not fp32.is_file():
        return None, None
    with create_runner("onnxruntime", fp32, threads=threads or 0, name="fp32-reference") as r:
        return acc.logits(r, check.x, feed, main), "fp32 (onnxruntime on this host)"


def _kernel_fidelity(s: _Subject, check: acc.EvalSet, scores: Any, feed: Mapping, main: str,
                     threads: int | None, floor_db: float | None, fp32_scores: Any = None) -> tuple[dict, list[str]]:
    """The subject's INT8 kernels (`scores`, its outputs on `check.x`) against ONNX Runtime's
    float emulation of its QDQ graph; and the warnings to add to its report."""
    local = s.target.reach.kind == "local"
    runtime = s.target.runtime
    kf: dict[str, Any] = {
        "runtime": runtime,
        "kernels": f"{s.model.path.name} on {runtime} ({s.target.name}, {'local' if local else s.how})",
        "reference": fidelity.EMULATION + (f" of {s.model.onnx.parent.name}/{s.model.onnx.name}" if s.model.onnx else ""),
        "inputs": check.name, "warn_below_db": fidelity.WARN_SQNR_DB, "floor_db": floor_db,
        "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA") if runtime == "openvino" and local else None}
    if s.model.onnx is None:
        kf["not_measured"] = f"{s.model.path.name} has no QDQ ONNX graph to emulate"
        return kf, []
    try:
        with create_runner("onnxruntime", s.model.onnx, graph_optimization="disable", threads=threads or 0,
                           name="float-emulation") as emu:
            ref = acc.logits(emu, check.x, feed, main)
        c = fidelity.compare(scores, ref)
    except (EdgeforgeError, ValueError) as e:
        kf["not_measured"] = f"the float emulation could not run: {e}"
        return kf, [f"kernel fidelity not measured: {kf['not_measured']}"]
    # how much kernel difference is noise depends on the graph's own error against FP32
    warn_db = fidelity.warn_floor(fidelity.compare(ref, fp32_scores)["sqnr_db"] if fp32_scores is not None else None,
                                  local and fidelity.can_saturate(s.model.onnx, runtime, kf["isa_cap"]))
    kf["warn_below_db"] = warn_db
    kf.update(num_samples=c["num_samples"], agreement_top1=round(100.0 * c["agreement"], 2), sqnr_db=c["sqnr_db"],
              cosine=c["cosine"], max_abs_error_rel=c["max_abs_error_rel"],
              drift=fidelity.is_drift(c["sqnr_db"], warn_db),
              passed=None if floor_db is None else not fidelity.is_drift(c["sqnr_db"], floor_db))
    notes = []
    if (w := fidelity.drift_warning(runtime, c, cpu_record(), _cpu_kernels(s), floor_db=warn_db)):
        notes.append(w)
    if kf["passed"] is False:
        notes.append(f"--max-kernel-drift {floor_db:g} dB: FAILED (kernel fidelity SQNR {c['sqnr_db']:.1f} dB)")
    return kf, notes


def _cpu_kernels(s: _Subject) -> bool:
    """Whether the subject's INT8 kernels run on this host's CPU (so its flags explain them)."""
    return s.target.reach.kind == "local" and s.target.runtime in ("onnxruntime", "openvino") and \
        s.target.runtime_options(s.precision).get("provider", "cpu") == "cpu"


def _time_subjects(timed: list[_Subject], feed: Mapping, settings: lat.Settings,
                   seed: int) -> tuple[dict[str, lat.Samples], dict[str, list[str]]]:
    """Device-measured subjects (agents) each on their device; local ones in alternating blocks."""
    samples: dict[str, lat.Samples] = {}
    warnings: dict[str, list[str]] = {}
    local = {}
    for s in timed:
        device = s.runner.device_latency(feed, settings.warmup, settings.iterations, settings.min_time_s, seed)
        if device is not None:
            samples[s.key] = lat.samples_from_device(device, settings)
            if len(timed) > 1:
                warnings.setdefault(s.key, []).append(
                    "measured on its device, not interleaved with the other subjects of this run")
        else:
            local[s.key] = s.runner
    if local:
        samples.update(lat.measure(local, {k: feed for k in local}, settings))
    return samples, warnings


def _not_measured(art: Path, s: _Subject, export: Mapping | None, common: dict):
    from edgeforge.report.schema import Report

    return Report(status="not_measured", reason=s.how, model=_model_info(art, s.model, export, s.quant),
                  target=_target_info(s.target, f"not reached: {s.how}"), **common)


def _measured(art: Path, s: _Subject, export: Mapping | None, common: dict, samples: dict, batch: int,
              accuracy: dict | None, info: Any, warnings: list[str], settings: lat.Settings,
              kernel_fidelity: dict | None = None):
    from edgeforge.report.schema import Report

    latency = lat.summarize(samples[s.key], batch=batch)
    latency.update(warmup=settings.warmup, cold_load_ms=s.cold_ms, first_inference_ms=s.first_ms)
    warnings = list(warnings)
    if (w := lat.noise_warning(latency)):
        warnings.append(w)
    base = None
    if s.baseline is not None and s.baseline.key in samples:
        b = lat.summarize(samples[s.baseline.key], batch=batch)
        base = {"precision": "fp32", "path": str(s.baseline.model.path), "p50": b["p50"], "noise_pct": b["noise_pct"],
                "speedup": b["p50"] / latency["p50"], "block_medians_ms": b["block_medians_ms"]}
        if samples[s.baseline.key].measured_on != samples[s.key].measured_on or \
                s.baseline.key not in latency["interleaved_with"]:
            base = None
            warnings.append("the FP32 baseline was not interleaved with this model; speed-up not stated")
    mi = _model_info(art, s.model, export, s.quant)
    return Report(
        status="measured", model=mi, target=_target_info(s.target, s.how),
        runtime={"runtime": info.runtime, "version": info.version, "device": info.device,
                 "options": info.options, "versions": info.versions},
        latency=latency, memory=s.memory,
        efficiency=_efficiency(s.target, s.precision, mi["macs"], batch, latency["p50"], mi["size_bytes"]),
        accuracy=accuracy, kernel_fidelity=kernel_fidelity, baseline=base, warnings=warnings, **common,
    )


def _write(art: Path, s: _Subject, report: Any, common: dict) -> dict[str, Path]:
    from edgeforge.report.io import write_index, write_report

    paths = write_report(report, art / "reports")
    paths["index"] = write_index(art / "reports")
    if report.status == "measured":
        Manifest(art).record(f"bench/{s.target.name}/{s.precision}",
                             {"command": common["command"], "p50_ms": report.latency.p50, "status": "measured"},
                             files=[paths["json"]])
    return paths


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
        # The highlights a report reader needs; quant.json itself keeps everything.
        for key in ("method", "bits", "num_samples"):
            if key in q:
                info[key] = q[key]
        calib = q.get("calibration") or q.get("calib")
        if isinstance(calib, dict):
            info["calibration"] = {k: (v[:16] if k == "hash" and isinstance(v, str) else v)
                                   for k, v in calib.items() if k in ("name", "count", "hash")}
        elif calib is not None:
            info["calibration"] = calib
        scheme = q.get("scheme")
        if isinstance(scheme, dict):
            info["scheme"] = {k: scheme[k] for k in ("target", "activations", "weights") if k in scheme}
        elif scheme is not None:
            info["scheme"] = scheme
    return info
