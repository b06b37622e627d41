"""`edgeforge quantize ARTIFACT`: FP32 ONNX + calibration set -> ARTIFACT/int8-<method>/.

Writes `model.onnx` (QDQ) and `quant.json` (every quantizer, the scheme, the calibration set's
hash, the error analysis, accuracy and agreement on the eval split), records the step in
`manifest.json`, and skips the work when nothing it depends on changed.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeforge.artifacts import Manifest, atomic_path, sha256_file, sha256_json, write_json_atomic
from edgeforge.errors import BadInput
from edgeforge.quant import methods as qmethods
from edgeforge.quant.scheme import BITS, resolve

QUANT_VERSION = 8  # bump when the placement/calibration/simulation changes what a run produces


def quant_source_hash() -> str:
    """sha256 over the quantizer's own source files (edgeforge/quant/**.py): a step made by other
    quantization code is redone, even where nobody bumped QUANT_VERSION (a method's search changed)."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@dataclass
class QuantResult:
    out_dir: Path
    onnx_path: Path
    quant_json: Path
    entry: dict
    report: dict = field(default_factory=dict)
    skipped: bool = False


def step_name(method: str, bits: str, target: str = "cpu-ort", arithmetic: str = "") -> str:
    """int8-<method>[-<bits>][-<target>][-<arithmetic>]: bits and target only when not the defaults
    (w8a8, cpu-ort), since a target's constraints change the model (e.g. symmetric int8 for
    TensorRT); `arithmetic` only when the user chose the int8 accumulation or overflow fix
    (e.g. `int16-pairs` quantized on a VNNI server for an AVX2 box), so it does not overwrite the
    model made for this host."""
    from edgeforge.quant.scheme import DEFAULT_TARGET

    return (f"int8-{method}" + ("" if bits == "w8a8" else f"-{bits}")
            + ("" if target == DEFAULT_TARGET else f"-{target}") + (f"-{arithmetic}" if arithmetic else ""))


def _input_spec(entry: dict):
    from edgeforge.recipes import InputSpec

    rec = entry.get("resolved_recipe") or entry.get("recipe")
    if not isinstance(rec, dict) or "input" not in rec:
        raise BadInput("manifest.json: the export step has no resolved recipe input spec; export again")
    return InputSpec(**rec["input"]), rec


def eval_split(calib, pre, count: int = 32):
    """The held-out data for accuracy/agreement: digits' eval split, or the same source drawn
    with a different seed (natural crops, clips, a user folder)."""
    from edgeforge.data.calib import CalibDef, Source, load_definition, materialize

    d = load_definition(calib)
    if d.source.kind == "digits":
        ev = CalibDef(name="digits-eval", source=Source(kind="digits", split="eval"), count=500, seed=0)
    else:
        ev = d.model_copy(update={"name": f"{d.name}-eval", "seed": d.seed + 1000, "count": count})
        ev.base_dir = d.base_dir
    return materialize(ev, pre)


def top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(-1)


def evaluate(fp32: onnx.ModelProto | str, qmodel: onnx.ModelProto | str, ev, scheme=None) -> dict:
    """FP32 vs INT8 (both in ONNX Runtime, full optimisation) on the eval split, and the INT8
    model's kernel fidelity there: each runtime's integer kernels (ONNX Runtime with full
    optimisation; OpenVINO when installed) against the float emulation of the same QDQ graph
    (ONNX Runtime, optimisation disabled), as `kernel_fidelity` entries (edgeforge.bench.fidelity).
    A model quantized for 16-bit pair accumulation (`scheme.int8_accumulation`) on a CPU with
    VNNI also gets an entry for OpenVINO's AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, in a
    subprocess): the arithmetic it was made for."""
    import os

    from edgeforge.bench import fidelity
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.quantizers import cosine, sqnr_db
    from edgeforge.targets.host import cpu_record

    m32 = onnx.load(fp32) if isinstance(fp32, str) else fp32
    out = m32.graph.output[0].name
    a = run_outputs(m32, ev.x, [out], optimize="all")[out]
    qm = onnx.load(qmodel) if isinstance(qmodel, str) else qmodel
    qout = qm.graph.output[0].name
    b = run_outputs(qm, ev.x, [qout], optimize="all")[qout]
    pa, pb = top1(a), top1(b)
    res = {"eval_set": ev.definition.name, "eval_count": int(len(ev.x)), "eval_hash": ev.hash,
           "agreement_fp32_int8": round(float((pa == pb).mean()), 4),
           "output_cosine": round(cosine(a, b), 6), "output_sqnr_db": round(sqnr_db(a, b), 2)}
    if ev.labels is not None:
        res["fp32_top1"] = round(float((pa == ev.labels).mean()), 4)
        res["int8_top1"] = round(float((pb == ev.labels).mean()), 4)
        res["drop"] = round(res["fp32_top1"] - res["int8_top1"], 4)
    emu = run_outputs(qm, ev.x, [qout], optimize="disable")[qout]
    cpu = cpu_record()
    import onnxruntime

    entries = [{"runtime": "onnxruntime", "version": onnxruntime.__version__,
                "kernels": "ONNX Runtime CPU, graph optimisation all (QLinearConv, QGemm, ...)",
                **fidelity.compare(b, emu)}]
    try:
        import openvino  # noqa: F401

        ov_version = openvino.get_version()
    except ImportError as e:
        entries.append({"runtime": "openvino", "not_run": f"OpenVINO is not installed ({e})"})
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgeforge-fidelity-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(qm, str(path))
            try:
                ov_out = fidelity.openvino_outputs(path, ev.x)
            except Exception as e:  # a model OpenVINO cannot compile: say so, keep the quantization
                entries.append({"runtime": "openvino", "version": ov_version, "not_run": f"{type(e).__name__}: {e}"})
            else:
                entries.append({"runtime": "openvino", "version": ov_version,
                                "kernels": "OpenVINO CPU plugin (oneDNN), f32 precision hint",
                                **fidelity.compare(ov_out, emu)})
            from edgeforge.runtimes import isa

            if getattr(scheme, "int8_accumulation", None) == "int16-pairs" and isa._host_has_vnni() \
                    and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
                pairs = {"runtime": "openvino", "version": ov_version, "isa": "avx2",
                         "kernels": "OpenVINO CPU plugin, AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, subprocess): "
                                    "the u8 x s8 16-bit pair arithmetic this model is quantized for"}
                try:
                    pairs.update(fidelity.compare(isa.run(path, ev.x, "openvino", "avx2"), emu))
                except Exception as e:  # e.g. an attention MatMul oneDNN cannot compile under the cap
                    pairs["not_run"] = f"{type(e).__name__}: {e}"
                entries.append(pairs)
    # the graph's own error against FP32 sets how much kernel difference is noise (fidelity.warn_floor)
    graph_sqnr = fidelity.compare(emu, a)["sqnr_db"]
    for e in entries:
        if "sqnr_db" in e:
            e["reference"] = fidelity.EMULATION
            e["isa_cap"] = ("AVX2" if e.pop("isa", None) == "avx2" else os.environ.get("ONEDNN_MAX_CPU_ISA")) \
                if e["runtime"] == "openvino" else None
            fix = None
            if e["isa_cap"] == "AVX2" and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
                fix = ("the weights saturate OpenVINO's AVX2 kernels, which this model is quantized for: "
                       + ("quantize without --overflow-fix none" if getattr(scheme, "overflow_fix", None) == "none"
                          else "try --overflow-fix reduce-range (7-bit weights) and report the model"))
            floor = fidelity.warn_floor(graph_sqnr, fidelity.can_saturate(qm, e["runtime"], e["isa_cap"]))
            e["warn_below_db"] = floor
            if (w := fidelity.drift_warning(e["runtime"], e, cpu, advice_text=fix, floor_db=floor)):
                e["warning"] = w
    res["kernel_fidelity"] = entries
    return res


def int8_kernel_check(qmodel: onnx.ModelProto, scheme) -> dict:
    """The saturation bound of the QDQ model's integer layers and what it means for the target."""
    from edgeforge.quant.overflow import saturation_check

    chk = {"accumulation": scheme.int8_accumulation, "reason": scheme.accumulation_reason,
           "overflow_fix": scheme.overflow_fix, **saturation_check(qmodel)}
    if chk["layers_that_can_saturate"]:
        where = ("on this target" if scheme.int8_accumulation == "int16-pairs" else
                 "on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)")
        chk["warning"] = (f"{chk['layers_that_can_saturate']} layers can saturate int16 pair sums {where}: there the "
                          "integer kernels do not compute what the QDQ graph says. Quantize for such CPUs with "
                          "--int8-accumulation int16-pairs.")
    return chk


def torch_model_for(exp: dict):
    """The artifact's torch model (recipe + weights from the export step), deploy transforms applied."""
    from edgeforge import recipes
    from edgeforge.export.pipeline import prepare_model

    rr = exp.get("resolved_recipe") or {}
    src, var = rr.get("source_file"), rr.get("variant")
    name = f"{src}:{var}" if src and var and Path(src).is_file() else exp.get("recipe")
    recipe = recipes.load(name)
    weights = (exp.get("weights") or {}).get("path")
    return prepare_model(recipe, weights, exp.get("seed", 0), 1).model


def sim_agreement(exp: dict, qmodel: onnx.ModelProto, data, ev, method: str, bits: str, target: str,
                  keep_fp: list[str], norm_inputs: bool, act_scheme: str, int8_accumulation: str | None = None,
                  overflow_fix: str = "auto", bias_correction: bool = True, method_params=None) -> dict:
    """Top-1 agreement between the torch simulation (`torch_sim.quantize`, same calibration
    samples, method and scheme) and ONNX Runtime running the QDQ model, on the eval split."""
    import torch

    from edgeforge.errors import EdgeforgeError
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.torch_sim import quantize as torch_quantize

    # An optional check: whatever stops it is reported in quant.json (exception type and message)
    # and the quantization still finishes.
    if exp.get("imported_from"):
        return {"torch_sim": "not run: no torch model for an imported artifact"}
    try:
        model = torch_model_for(exp)
    except (EdgeforgeError, ValueError, KeyError, OSError) as e:
        return {"torch_sim": f"not run: the artifact's torch model cannot be rebuilt here ({e})"}
    except Exception as e:  # noqa: BLE001
        return {"torch_sim": f"not run: rebuilding the torch model raised {type(e).__name__}: {e}"}
    try:
        sim = torch_quantize(model, data.x, method, bits, target, keep_fp=keep_fp, norm_inputs=norm_inputs,
                             act_scheme=act_scheme,
                             int8_accumulation=int8_accumulation, overflow_fix=overflow_fix,
                             bias_correction=bias_correction, method_params=method_params)
    except EdgeforgeError as e:
        return {"torch_sim": f"not run: {e}"}
    except Exception as e:  # noqa: BLE001
        return {"torch_sim": f"not run: the torch simulation raised {type(e).__name__}: {e}"}
    try:
        with torch.no_grad():
            outs = [sim(torch.from_numpy(ev.x[i:i + 16])) for i in range(0, len(ev.x), 16)]
        s = torch.cat([o if isinstance(o, torch.Tensor) else o[0] for o in outs]).numpy()
    except Exception as e:  # noqa: BLE001
        return {"torch_sim": f"not run: running the torch simulation raised {type(e).__name__}: {e}"}
    name = qmodel.graph.output[0].name
    o = run_outputs(qmodel, ev.x, [name], optimize="all")[name]
    from edgeforge.quant.quantizers import cosine

    res = {"agreement_torch_sim_ort": round(float((top1(s) == top1(o)).mean()), 4),
           # continuous companion of the top-1 agreement: top-1 flips on low-margin samples
           "torch_sim_ort_output_cosine": round(cosine(s, o), 6)}
    if ev.labels is not None:
        res["torch_sim_top1"] = round(float((top1(s) == ev.labels).mean()), 4)
    if not (exp.get("weights") or {}).get("path"):
        res["agreement_note"] = ("random weights: near-uniform logits make top-1 agreement (sim vs ORT, "
                                 "FP32 vs INT8) flip on noise; judge accuracy on trained weights")
    return res


def quantize_artifact(artifact: str | Path, calib: str | None = None, method: str | None = None,
                      bits: str | None = None, target: str | None = None, num_samples: int | None = None,
                      keep_fp: list[str] = (), norm_inputs: bool = False, act_scheme: str = "auto",
                      analyze: bool = True, simulate: bool = True, force: bool = False,
                      int8_accumulation: str | None = None, overflow_fix: str = "auto",
                      bias_correction: bool = True, weight_rounding: str | None = None,
                      max_drop: float | None = None, max_drop_metric: str = "auto",
                      argv: list[str] | None = None, console=None, show_progress: bool = True) -> QuantResult:
    """Quantize ARTIFACT/fp32/model.onnx; see the module docstring.

    `max_drop`: accuracy-budgeted mixed precision (`edgeforge.quant.mixed_precision`): the fewest
    most sensitive layers are left in float until the budget metric (`max_drop_metric`, auto:
    top-1 drop on a labelled eval split, else top-1 agreement loss or embedding cosine loss, in
    points) is at most `max_drop`; written to its own step, `<step>-maxdrop<X>`."""
    from edgeforge.data.calib import load_calib
    from edgeforge.quant import mixed_precision as mp

    art = Path(artifact)
    manifest = Manifest(art)
    exp = manifest.step("export")
    fp32 = art / "fp32" / "model.onnx"
    if exp is None or not fp32.is_file():
        raise BadInput(f"{art}: no exported model ({fp32} / manifest export step missing); "
                       f"run `edgeforge export RECIPE --out {art}` first")
    manifest.verify(fp32)  # a truncated/edited model: a clear error naming it, before anything is written
    spec, rec = _input_spec(exp)
    qdef = rec.get("quant", {}) if isinstance(rec, dict) else {}
    method = method or qdef.get("method", "minmax")
    if method not in qmethods.names():
        raise BadInput(f"--method {method!r}: accepted {', '.join(qmethods.names())}")
    bits = bits or qdef.get("bits", "w8a8")
    if bits not in BITS:
        raise BadInput(f"--bits {bits!r}: accepted {', '.join(BITS)}")
    calib = calib or qdef.get("calib", "natural")
    num_samples = num_samples or qdef.get("num_samples", 32)
    mp.check_max_drop(max_drop, max_drop_metric)
    scheme = resolve(bits, target, method, act_scheme, int8_accumulation, overflow_fix)
    t0 = time.perf_counter()
    data = load_calib(calib, spec, num_samples)
    t_data = time.perf_counter() - t0
    if weight_rounding not in (None, "nearest", "gptq"):
        raise BadInput(f"--weight-rounding {weight_rounding!r}: accepted nearest, gptq")
    if weight_rounding and qmethods.get(method).engine == "ort":
        raise BadInput("--weight-rounding applies to edgeforge's methods, not --method ort (ONNX Runtime rounds)")
    own_rounding = qmethods.get(method).weight_rounding
    chosen = [v for v in ((int8_accumulation if int8_accumulation not in (None, "host") else None),
                          (overflow_fix if overflow_fix != "auto" else None),
                          (weight_rounding if weight_rounding not in (None, own_rounding) else None)) if v]
    name = step_name(method, bits, scheme.target, "-".join(chosen))
    if max_drop is not None:
        name += mp.step_suffix(max_drop, max_drop_metric)
    out_dir = art / name
    onnx_path, qjson = out_dir / "model.onnx", out_dir / "quant.json"
    # the reason names this CPU: the model depends only on the accumulation it led to
    scheme_key = {k: v for k, v in scheme.to_json().items() if k != "accumulation_reason"}
    settings = {"method": method, "bits": bits, "scheme": scheme_key, "calib_hash": data.hash,
                "fp32_sha256": sha256_file(fp32), "keep_fp": sorted(keep_fp), "norm_inputs": norm_inputs,
                "analyze": analyze, "simulate": simulate, "bias_correction": bias_correction,
                "weight_rounding": weight_rounding or own_rounding,
                "version": QUANT_VERSION, "source": quant_source_hash()}
    if max_drop is not None:  # only then: the inputs of existing steps keep their hash
        settings["mixed_precision"] = {"max_drop": max_drop, "metric": max_drop_metric,
                                       "version": mp.MIXED_PRECISION_VERSION}
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    inputs_hash = sha256_json({"settings": settings, "versions": versions})
    if not force and manifest.is_up_to_date(name, inputs_hash):
        return QuantResult(out_dir, onnx_path, qjson, manifest.step(name), skipped=True)

    model = onnx.load(str(fp32))
    from edgeforge.targets.host import cpu_record

    report: dict = {"method": method, "bits": bits, "scheme": scheme.to_json(), "cpu": cpu_record(),
                    "calibration": data.summary(), "keep_fp": list(keep_fp)}
    ev = eval_split(calib, data.preprocess)
    if max_drop is not None and max_drop_metric == "top1" and ev.labels is None:
        raise BadInput(f"--max-drop-metric top1 needs a labelled eval split ({ev.definition.name} has no labels; "
                       "e.g. --calib digits); use agreement (classifiers) or cosine (embeddings)")

    def mixed(rebuilder):
        res = mp.choose(rebuilder, model, ev, max_drop, max_drop_metric, scheme.runtime, exp, keep_fp,
                        console=console, show_progress=show_progress)
        report["mixed_precision"] = res.report
        report["timings_s"]["mixed_precision_s"] = res.report["timings_s"]["total_s"]
        return res

    sim_params = None
    if qmethods.get(method).engine == "ort":
        from edgeforge.quant.ort_baseline import ort_quantize, qdq_params

        t1 = time.perf_counter()
        qmodel, ort_settings = ort_quantize(fp32, data.x, scheme, "minmax", keep_fp)
        report["timings_s"] = {"quantize_s": round(time.perf_counter() - t1, 3)}
        if max_drop is not None:
            qmodel = mixed(mp.ort_rebuilder(qmodel, model)).model
        report["ort_settings"] = ort_settings
        report["quantizers"] = qdq_params(qmodel)
        prepared = None
    else:
        from edgeforge.quant.engine import quantize_onnx

        q = quantize_onnx(model, data.x, method, scheme, keep_fp=list(keep_fp), norm_inputs=norm_inputs,
                          console=console, show_progress=show_progress, bias_correction=bias_correction,
                          torch_model=None if exp.get("imported_from") else (lambda: torch_model_for(exp)),
                          weight_rounding=weight_rounding,
                          output_kind="embedding" if mp.recipe_is_embedding(exp) else "auto")
        report["timings_s"] = {k: round(v, 3) for k, v in q.timings.items()}
        if max_drop is not None:
            q = mixed(mp.edgeforge_rebuilder(q, list(keep_fp), norm_inputs)).built
        report["bias_correction"] = {"layers": len(q.bias_shift), "mean_abs_shift": round(float(np.mean(
            [np.abs(v).mean() for v in q.bias_shift.values()])), 6) if q.bias_shift else None}
        qmodel, prepared, sim_params = q.model, q.prepared, q.sim_params
        if q.method_info:
            report["method_info"] = q.method_info
        report["graph_passes"] = q.graph_passes
        report["placement"] = q.plan.summary()
        report["quantizers"] = q.quantizers_json()
        if analyze:
            from edgeforge.quant.analysis import analyze as run_analysis

            t1 = time.perf_counter()
            n = min(4, len(data.x))
            report["analysis"] = run_analysis(prepared, qmodel, q.plan, q.act_q, q.weight_q, data.x[:n])
            report["timings_s"]["analysis_s"] = round(time.perf_counter() - t1, 3)
    report["timings_s"]["calib_data_s"] = round(t_data, 3)
    report["int8_kernels"] = int8_kernel_check(qmodel, scheme)
    report["accuracy"] = evaluate(model, qmodel, ev, scheme)
    if simulate and qmethods.get(method).engine != "ort":
        t1 = time.perf_counter()
        sim_keep = list(keep_fp)
        if max_drop is not None:  # the torch simulation addresses layers by module path
            from edgeforge.quant.placement import module_path

            sim_keep += sorted({module_path(k["layer"]) for k in report["mixed_precision"]["kept_fp"]})
        report["accuracy"].update(sim_agreement(exp, qmodel, data, ev, method, bits, scheme.target,
                                                sim_keep, norm_inputs, act_scheme,
                                                scheme.int8_accumulation, scheme.overflow_fix, bias_correction,
                                                sim_params))
        report["timings_s"]["torch_sim_s"] = round(time.perf_counter() - t1, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(onnx_path) as tmp:
        onnx.save(qmodel, str(tmp))
        onnx.checker.check_model(str(tmp))
    report["onnx"] = {"path": str(onnx_path.relative_to(art)), "sha256": sha256_file(onnx_path),
                      "size_bytes": onnx_path.stat().st_size, "fp32_size_bytes": fp32.stat().st_size}
    write_json_atomic(qjson, report)
    entry = {"inputs_hash": inputs_hash, "command": shlex.join(argv) if argv else None,
             "method": method, "bits": bits, "target": scheme.target, "scheme": scheme.to_json(),
             "cpu": report["cpu"],
             "calibration": {"name": data.definition.name, "hash": data.hash, "count": len(data.x),
                             "skipped": len(data.skipped)},
             "accuracy": report["accuracy"], "onnx": report["onnx"], "quant_json": str(qjson.relative_to(art)),
             "toolchain": versions, "timings_s": report["timings_s"]}
    if "analysis" in report:
        entry["analysis_outputs"] = report["analysis"]["outputs"]
    if "mixed_precision" in report:
        entry["mixed_precision"] = mp.summary(report["mixed_precision"])
    manifest.record(name, entry, files=[onnx_path, qjson])
    return QuantResult(out_dir, onnx_path, qjson, manifest.step(name), report)
