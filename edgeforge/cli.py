"""The `edgeforge` command line: thin click commands that parse, call the library, and print.

Exit codes (design.md): 0 success, 1 a check failed (parity, accuracy, latency budget),
2 bad input (or a command/toolchain not available here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from edgeforge import __version__
from edgeforge.errors import EdgeforgeError


def _quant_methods() -> list[str]:
    # the registry (edgeforge/quant/methods/, one file per method) decides the choices; it imports
    # no torch, so --help stays fast
    from edgeforge.quant.methods import names

    return list(names())

# Rich wraps at 80 columns when stdout is not a terminal; tables of recipes need more.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, prog_name="edgeforge")
def cli() -> None:
    """edgeforge: recipes -> ONNX -> INT8 -> compiled artifact -> latency/accuracy report.

    \b
    Typical path:
      edgeforge recipes                               # what can be built
      edgeforge export efficientformer_l1 --out artifacts/l1
      edgeforge quantize artifacts/l1 --calib natural
      edgeforge bench artifacts/l1 --target cpu-ort

    Exit codes: 0 success, 1 a check failed (parity, accuracy, latency), 2 bad input.
    """


# --------------------------------------------------------------------------- recipes
@cli.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List every recipe variant (params, MACs, input shape); `recipes show NAME` for one."""
    if ctx.invoked_subcommand is None:
        from edgeforge.export.model_card import recipes_table

        console.print(recipes_table())


@recipes.command("show")
@click.argument("name")
@click.option("--no-measure", is_flag=True, help="Skip building the model to measure params/MACs.")
def recipes_show(name: str, no_measure: bool) -> None:
    """Print the resolved recipe NAME (`<family>_<variant>` or a YAML path) and its model card."""
    from edgeforge.export.model_card import show_recipe

    show_recipe(name, measure=not no_measure, console=console)


# --------------------------------------------------------------------------- export
@cli.command()
@click.argument("recipe")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact directory (default: artifacts/<recipe>).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="State dict (.pt/.pth/.safetensors) loaded strictly; default: random init, fixed seed.")
@click.option("--batch", default=None, help="Batch size N, or 'dynamic' (default: the recipe's).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the recipe's).")
@click.option("--custom-ops", type=click.Choice(["auto", "plugin", "decompose"]), default=None,
              help="Keep edgeforge:: custom nodes (plugin) or emit standard ops only (decompose).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init and parity inputs.")
@click.option("--force", is_flag=True, help="Export even if the inputs have not changed.")
def export(recipe, out_dir, weights, batch, opset, custom_ops, seed, force) -> None:
    """Export RECIPE to ONNX with deploy transforms, onnxslim and a parity check.

    Writes OUT/fp32/model.onnx and OUT/manifest.json. Exits 1 if ONNX Runtime disagrees with
    PyTorch beyond the recipe's tolerance (the previous model, if any, is left in place).
    """
    from edgeforge.export import export_recipe
    from edgeforge.export.report import print_export_summary

    if batch is not None and batch != "dynamic":
        try:
            batch = int(batch)
            if batch <= 0:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{batch!r}: use a positive integer or 'dynamic'", param_hint="--batch")
    result = export_recipe(recipe, out_dir=out_dir, weights=weights, batch=batch, opset=opset,
                           custom_ops=custom_ops, seed=seed, force=force, argv=_command_line(), console=console)
    print_export_summary(result, console)


# --------------------------------------------------------------------------- import
def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: use numbers, one per channel, e.g. 0.485,0.456,0.406",
                                 param_hint=option) from None


@cli.command(name="import")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Artifact directory.")
@click.option("--mean", default=None, help="Per-channel mean of the normalisation, e.g. 0.485,0.456,0.406 "
                                           "(default: ImageNet's for 3 channels).")
@click.option("--std", default=None, help="Per-channel std, e.g. 0.229,0.224,0.225 (default: ImageNet's).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
              help="The model input's layout (NHWC: a Transpose in front makes the artifact take NCHW).")
@click.option("--name", default=None, help="Name recorded in the manifest and reports (default: the file's stem).")
@click.option("--force", is_flag=True, help="Import even if the file has not changed.")
def import_(model, out_dir, mean, std, layout, name, force) -> None:
    """Make an artifact from MODEL, an ONNX file written by any tool, for quantize/compile/bench.

    Writes OUT/fp32/model.onnx (after ONNX Runtime has loaded and run it) and OUT/manifest.json
    with the source file's path and sha256 and the input spec. One float32 image input.
    """
    from edgeforge.export.importer import import_onnx

    r = import_onnx(model, out_dir, mean=_floats(mean, "--mean"), std=_floats(std, "--std"), layout=layout,
                    name=name, force=force, argv=_command_line())
    for note in r.notes:
        console.print(f"note: {note}")
    spec = r.entry["resolved_recipe"]["input"]
    state = "up to date" if r.skipped else "imported"
    console.print(f"{state}: [bold]{r.onnx_path}[/] (input {spec['name']} {spec['shape']} {spec['layout']}, "
                  f"source sha256 {r.entry['imported_from']['sha256'][:16]})")


# --------------------------------------------------------------------------- not yet built
@cli.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--calib", "calib_set", default=None,
              help="Calibration set: NAME (calib/NAME.yaml), a YAML path, or digits|natural|clips "
                   "(default: the recipe's).")
@click.option("--method", type=click.Choice(_quant_methods()), default=None,
              help="Quantization method (default: the recipe's): minmax/percentile/mse/entropy calibrate ranges; "
                   "qhyvit (hybrid conv+attention ViTs) and repquant (plain ViTs) are the ViT PTQ methods; "
                   "ort is ONNX Runtime's own quantize_static.")
@click.option("--bits", type=click.Choice(["w8a8", "w6a6", "w4a8", "w4a4"]), default=None,
              help="Weight/activation bits (below 8: 8-bit containers with the narrower range).")
@click.option("--target", default=None, help="Target profile whose constraints apply (default: cpu-ort).")
@click.option("--num-samples", type=int, default=None, help="Calibration samples (default: the recipe's, 32).")
@click.option("--keep-fp", "keep_fp", multiple=True,
              help="Leave a layer in float (ONNX node name or module path, e.g. stages.3.blocks.1); repeatable.")
@click.option("--act-scheme", type=click.Choice(["auto", "symmetric", "asymmetric"]), default="auto",
              help="Activation scheme (auto: what the target runs fastest).")
@click.option("--norm-inputs", is_flag=True, help="Also quantize LayerNorm inputs (FQ-ViT-style simulation).")
@click.option("--int8-accumulation", type=click.Choice(["host", "int32", "int16-pairs"]), default=None,
              help="How the deployment CPU's int8 kernels add products (default: the target's; cpu-ort and "
                   "cpu-openvino read this host's flags). int16-pairs: x86 without VNNI (AVX2, AVX-512 without "
                   "VNNI), whose pair sums saturate; int32: VNNI, AMX, Arm dotprod, GPUs. Set it when quantizing "
                   "on one machine for another (e.g. on an AVX-512 VNNI server for an AVX2 edge box).")
@click.option("--overflow-fix", type=click.Choice(["auto", "pairs", "reduce-range", "none"]), default="auto",
              show_default=True,
              help="How weights avoid saturating int16 pairs: pairs (per-channel scale search, only offending "
                   "pairs pulled in), reduce-range (7-bit weights, as ORT/NNCF), none. auto: pairs where the "
                   "accumulation is int16-pairs, else none.")
@click.option("--no-bias-correction", is_flag=True,
              help="Keep the float biases as they are (default: each Conv/Gemm bias absorbs the mean output "
                   "shift its weight rounding causes, from the calibration samples).")
@click.option("--weight-rounding", type=click.Choice(["nearest", "gptq"]), default=None,
              help="Integer codes of the weights: nearest level, or gptq (each linear / 1x1 conv layer's codes "
                   "chosen to minimise its output error on the calibration inputs; scales unchanged). Default: the "
                   "method's (gptq for repquant, nearest otherwise).")
@click.option("--no-analysis", is_flag=True, help="Skip the per-layer error analysis.")
@click.option("--no-sim", is_flag=True, help="Skip the torch-simulation vs ONNX Runtime agreement check.")
@click.option("--max-drop", "max_drop", type=float, default=None,
              help="Accuracy budget in points: leave the fewest most sensitive layers in float (ranked by "
                   "the output SQNR with each quantized alone, measured with the target's own kernels on the eval "
                   "split; no recalibration) until the loss is at most X. The loss (--max-drop-metric auto): top-1 drop on a "
                   "labelled eval split (digits); else 100 x (1 - top-1 agreement with FP32) for classifiers, "
                   "100 x (1 - mean output cosine with FP32) for embedding models (0.5: cosine >= 0.995). "
                   "Writes int8-<method>...-maxdrop<X>; exit 1 when even every layer in float misses it.")
@click.option("--max-drop-metric", type=click.Choice(["auto", "top1", "agreement", "cosine"]), default="auto",
              show_default=True, help="The loss --max-drop budgets (see --max-drop).")
@click.option("--force", is_flag=True, help="Quantize even if the inputs have not changed.")
def quantize(artifact, calib_set, method, bits, target, num_samples, keep_fp, act_scheme, norm_inputs,
             int8_accumulation, overflow_fix, no_bias_correction, weight_rounding, no_analysis, no_sim, max_drop,
             max_drop_metric, force) -> None:
    """Post-training INT8 quantization of an exported artifact with a calibration set.

    Writes ARTIFACT/int8-<method>/model.onnx (QDQ) and quant.json (every quantizer, the
    calibration hash, per-layer SQNR/cosine, accuracy and agreement on the eval split).
    With --max-drop X: ARTIFACT/int8-<method>[...]-maxdrop<X>/, the layers left in float, each
    step of the search and their latency cost in quant.json's `mixed_precision`.
    """
    from edgeforge.quant.pipeline import quantize_artifact
    from edgeforge.quant.report import print_quant_summary

    if num_samples is not None and num_samples <= 0:
        raise click.BadParameter("must be positive", param_hint="--num-samples")
    if max_drop is not None and not max_drop >= 0:
        raise click.BadParameter(f"{max_drop}: a budget in points, >= 0 (e.g. 0.5)", param_hint="--max-drop")
    result = quantize_artifact(artifact, calib=calib_set, method=method, bits=bits, target=target,
                               num_samples=num_samples, keep_fp=list(keep_fp), norm_inputs=norm_inputs,
                               act_scheme=act_scheme, analyze=not no_analysis, simulate=not no_sim, force=force,
                               int8_accumulation=int8_accumulation, overflow_fix=overflow_fix,
                               bias_correction=not no_bias_correction, weight_rounding=weight_rounding,
                               max_drop=max_drop,
                               max_drop_metric=max_drop_metric, argv=sys.argv, console=console)
    print_quant_summary(result, console)
    mp = (result.report or {}).get("mixed_precision") or result.entry.get("mixed_precision")
    if mp and mp.get("met") is False:
        from edgeforge.errors import CheckFailed

        raise CheckFailed(mp.get("warning") or "the --max-drop budget was not met")


@cli.command(name="compile")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--target", "target", required=True, help="Target name (see `edgeforge targets`).")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32, fp16, int8-<method> (ART/int8-<method>/), or CoreML's int8-weights / w8a8.")
@click.option("--force", is_flag=True, help="Compile even if the inputs have not changed.")
def compile_(artifact, target, precision, force) -> None:
    """Compile ARTIFACT for a target (TensorRT engine, OpenVINO IR, CoreML package).

    Writes ARTIFACT/<target>/... and records its sha256 in the manifest. Exits 2 when the
    target's toolchain is absent here.
    """
    from edgeforge.bench.compile import compile_artifact

    r = compile_artifact(artifact, target, precision, force=force, argv=_command_line())
    state = "up to date" if r.skipped else "compiled"
    console.print(f"{state}: [bold]{r.path}[/] ({r.target}, {r.precision}, sha256 {r.sha256[:16]})")


@cli.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--target", default="cpu-ort", show_default=True, help="Target name (see `edgeforge targets`).")
@click.option("--precision", default="fp32", show_default=True, help="fp32 or int8-<method> (ART/int8-<method>/).")
@click.option("--eval", "eval_dataset", type=click.Path(exists=True), default=None,
              help="Accuracy set: .npz (x, optional y) or an image folder root/<class>/<image>.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Evaluate at most N samples.")
@click.option("--device", "device_url", default=None, help="Agent URL for a device target (http://HOST:PORT).")
@click.option("--iterations", type=click.IntRange(min=1), default=200, show_default=True, help="Timed calls (at least).")
@click.option("--min-time", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Time the calls for at least this many seconds.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Warm-up calls.")
@click.option("--block-size", type=click.IntRange(min=1), default=10, show_default=True,
              help="Calls per block; compared models alternate by block.")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="Runtime threads (default: the target's).")
@click.option("--no-baseline", is_flag=True, help="Do not measure FP32 alongside an INT8 model.")
@click.option("--vs", "vs", multiple=True, metavar="TARGET[:PRECISION]",
              help="Also bench this subject in the same run, alternating blocks (e.g. --vs cpu-openvino).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--max-kernel-drift", type=float, default=None, metavar="DB",
              help="Fail (exit 1) when an INT8 model's integer kernels on the target drift from the float "
                   "emulation of its QDQ graph (ONNX Runtime, optimisation off) on the same inputs: their output "
                   "SQNR against the emulation below DB dB (a SQNR floor: higher is stricter). Correct kernels "
                   "give about 40 dB or more, saturating ones (x86 without VNNI) 10-20 dB; the report warns "
                   "below 30. The report is written either way.")
def bench(artifact, target, precision, eval_dataset, eval_limit, device_url, iterations, min_time, warmup,
          block_size, threads, no_baseline, vs, seed, max_kernel_drift) -> None:
    """Measure latency and accuracy of ARTIFACT on a target; write a report.

    Writes ARTIFACT/reports/<target>-<precision>.{json,md,html}. An INT8 model is compared with
    FP32 (on --eval, else on the timed inputs) and its kernels with the float emulation of its
    QDQ graph (kernel fidelity). A target that cannot be reached gets a "not measured" report
    with the reason.
    """
    from edgeforge.bench.latency import Settings
    from edgeforge.bench.run import bench_artifact
    from edgeforge.report.console import print_report

    settings = Settings(warmup=warmup, iterations=iterations, min_time_s=min_time, block_size=block_size)
    result = bench_artifact(artifact, target, precision, eval_dataset=eval_dataset, eval_limit=eval_limit,
                            device_url=device_url, settings=settings, threads=threads, baseline=not no_baseline,
                            seed=seed, argv=_command_line(), vs=vs, max_kernel_drift=max_kernel_drift)
    for r in [result, *result.others]:
        print_report(r.report, console)
        for kind, path in r.paths.items():
            console.print(f"{kind}: {path}")
    failures = [f for r in [result, *result.others] for f in r.failures]
    if failures:
        from edgeforge.errors import CheckFailed

        raise CheckFailed("; ".join(failures))


@cli.group()
def report() -> None:
    """Show, compare (CI budgets) and render reports to HTML."""


@report.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
def report_show(file) -> None:
    """Print a report JSON (validated against the report schema)."""
    from edgeforge.report.console import print_report
    from edgeforge.report.schema import load_report

    print_report(load_report(file), console)


@report.command("compare")
@click.argument("base", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--max-latency-regression", type=float, default=None, metavar="PCT",
              help="Fail (exit 1) when NEW's p50 is more than PCT % slower than BASE's.")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="PTS",
              help="Fail (exit 1) when NEW's top-1 is more than PTS points below BASE's.")
def report_compare(base, new, max_latency_regression, max_accuracy_drop) -> None:
    """Compare two reports; exit 1 when a budget is broken."""
    from edgeforge.errors import CheckFailed
    from edgeforge.report.compare import compare
    from edgeforge.report.console import print_comparison
    from edgeforge.report.schema import load_report

    b, n = load_report(base), load_report(new)
    c = compare(b, n, max_latency_regression, max_accuracy_drop)
    print_comparison(b, n, c, console)
    if not c.ok:
        raise CheckFailed("; ".join(c.failures))


@report.command("html")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@click.option("--title", default=None, help="Page title.")
def report_html(reports, out, title) -> None:
    """Merge several report JSONs into one self-contained HTML page with plots."""
    from edgeforge.report.io import merge_html

    console.print(f"html: {merge_html(reports, out, title)}")


@cli.command()
@click.option("--device", "device_url", default=None, help="Probe agent targets at this URL.")
def targets(device_url) -> None:
    """List device targets and whether each is reachable from here (and why not)."""
    from edgeforge import targets as tg
    from edgeforge.report.console import print_targets

    print_targets([(t, *tg.reachability(t, device_url)) for t in tg.all_targets()], console)


class _BuildGroup(click.Group):
    """`edgeforge build BUILD.yaml ...` runs the build; `edgeforge build merge DIR...` merges."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("edgeforge build", "BUILD.yaml [OPTIONS] | merge DIR... [OPTIONS]")


@cli.group(cls=_BuildGroup)
def build() -> None:
    """Build a matrix of recipes x targets x precisions from BUILD.yaml (for CI).

    \b
      edgeforge build BUILD.yaml -j 2                 # every cell; summary.md, report.html, dist/
      edgeforge build BUILD.yaml --check              # rebuild; report any file whose bytes changed
      edgeforge build BUILD.yaml --list-jobs --format github|gitlab
      edgeforge build BUILD.yaml --job ID --out out/ID   # one cell (a CI job)
      edgeforge build merge out/* --out merged        # join CI jobs' outputs into one summary

    Exit codes: 0 every cell passed; 1 a cell failed, broke a budget, or (--check) drifted;
    2 a bad build file. Every option: `edgeforge build BUILD.yaml --help`.
    """


@build.command("run", hidden=True)
@click.argument("build_file", metavar="BUILD.yaml", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default="build-out", show_default=True,
              help="Output folder (artifacts/, cells/, cache/, summary.md, report.html, dist/).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run at once (each in its own process; benches still run one at a time).")
@click.option("--force", is_flag=True, help="Run every cell and step even if its inputs have not changed.")
@click.option("--no-cache", is_flag=True, help="Do not skip cells found in the content-addressed cache.")
@click.option("--check", is_flag=True, help="Rebuild every artifact from scratch in OUT/check/ and report any "
                                            "file whose sha256 differs from the build's, with its step (exit 1).")
@click.option("--list-jobs", is_flag=True, help="Print the cells as a CI job matrix (see --format) and exit.")
@click.option("--format", "fmt", type=click.Choice(["github", "gitlab"]), default="github", show_default=True,
              help="--list-jobs: GitHub Actions matrix JSON, or a GitLab child-pipeline YAML.")
@click.option("--job", "job", default=None, metavar="ID", help="Run only this cell (a CI job); see --list-jobs.")
@click.option("--no-summary", is_flag=True, help="With --job: do not write summary.md/report.html/dist/.")
@click.option("--no-bench", is_flag=True, hidden=True, help="Build artifacts only (what --check rebuilds).")
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True,
              help="Seconds a cell may run before it is stopped and failed.")
def build_run(build_file, out, jobs, force, no_cache, check, list_jobs, fmt, job, no_summary, no_bench,
              timeout_s) -> None:
    from edgeforge.build.run import exit_code, list_jobs as jobs_of, run_build, run_job, write_summary
    from edgeforge.build.spec import Build
    from edgeforge.errors import CheckFailed

    b = Build(build_file)
    if list_jobs:
        click.echo(jobs_of(b, fmt))
        return
    if check:
        from edgeforge.build.run import check as check_build

        drifts, failed = check_build(b, out, jobs, console=console)
        for d in drifts:
            err_console.print(f"[red]drift[/] {d['file']} (step {d['step']}): recorded "
                              f"{d['recorded'][:16]}, rebuilt {d['rebuilt'][:16]}", highlight=False)
        for f in failed:
            err_console.print(f"[red]rebuild failed[/] {f['id']}: {f['error']}", highlight=False)
        if drifts or failed:
            raise CheckFailed(f"{len(drifts)} file(s) differ when rebuilt from unchanged inputs, {len(failed)} cell(s) "
                              f"could not be rebuilt; see {out}/check.json")
        console.print(f"check: every artifact of {len(b.cells)} cells rebuilt with identical bytes")
        return
    if job is not None:
        res = run_job(b, job, out, force=force, bench=not no_bench, use_cache=not no_cache)
        if not no_summary:
            write_summary(Path(out), [res], b.spec.name)
        state = "cached" if res.get("cached") else res["status"]
        console.print(f"{res['id']}: {state}" + (f" - {res['error']}" if res.get("error") else ""), highlight=False)
        if exit_code([res]):
            raise CheckFailed(f"{res['id']}: {res['status']}: "
                              + ("; ".join(res.get("budget_failures") or []) or str(res.get("error"))))
        return
    import time as _time

    t0 = _time.perf_counter()
    results = run_build(b, out, jobs=jobs, force=force, use_cache=not no_cache, console=console,
                        timeout_s=timeout_s, bench=not no_bench)
    console.print((Path(out) / "summary.md").read_text(), markup=False, highlight=False)
    console.print(f"summary: {Path(out) / 'summary.md'}\nhtml: {Path(out) / 'report.html'}\n"
                  f"dist: {Path(out) / 'dist'} (index.json, SHA256SUMS)\n"
                  f"{len(results)} cells in {_time.perf_counter() - t0:.1f} s", highlight=False)
    if exit_code(results):
        bad = [r["id"] for r in results if r["status"] in ("failed", "over_budget")]
        raise CheckFailed(f"{len(bad)} cell(s) failed or broke a budget: {', '.join(bad)}")


@build.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Merged output folder.")
@click.option("--title", default="edgeforge build", show_default=True, help="Summary title.")
def build_merge(dirs, out, title) -> None:
    """Join the OUT folders of CI jobs (`--job ID --out DIR`) into one summary, report and dist/."""
    from edgeforge.build.run import exit_code, merge

    results = merge(dirs, out, title)
    console.print((Path(out) / "summary.md").read_text(), markup=False, highlight=False)
    data = __import__("json").loads((Path(out) / "build.json").read_text())
    if exit_code(results) or data["conflicts"]:
        from edgeforge.errors import CheckFailed

        raise CheckFailed(f"merged {len(results)} cells: {len(data['failing'])} failing, "
                          f"{len(data['conflicts'])} file(s) differ between jobs")


@cli.group()
def agent() -> None:
    """Device agent: `agent serve` runs on a device for on-device latency reports."""


@agent.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another machine: put it behind TLS or an SSH tunnel; see README).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the token clients must send (default: $EDGEFORGE_AGENT_TOKEN).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=512.0, show_default=True,
              help="Largest model or feed accepted.")
@click.option("--max-queue", type=click.IntRange(min=0), default=4, show_default=True,
              help="Runs waiting for the one run slot; beyond: 503 busy.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds a request's body may stall.")
@click.option("--run-timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="Seconds a load, inference or benchmark may run (504 beyond).")
@click.option("--model-ttl", type=click.FloatRange(min=0.1), default=900.0, show_default=True,
              help="Seconds an unused model is kept before it is deleted with its files.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where model folders are made (default: the system's temp directory).")
@click.option("--device-name", default=None, help="The device's description in reports (default: host and CPU).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Serve HTTPS with this PEM certificate (chain); clients trust it via EDGEFORGE_AGENT_CA.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The PEM private key of --tls-cert.")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
def agent_serve(host, port, token_file, max_upload_mb, max_queue, read_timeout, run_timeout, model_ttl, workdir,
                device_name, tls_cert, tls_key, quiet) -> None:
    """Serve the edgeforge agent protocol (edgeforge.runtimes.remote) on this device. Torch-free."""
    import os

    from edgeforge.agent.server import read_token, serve, tls_context
    from edgeforge.errors import BadInput

    token = read_token(token_file)
    if bool(tls_cert) != bool(tls_key):
        raise BadInput("--tls-cert and --tls-key go together (a PEM certificate and its private key)")
    tls = tls_context(tls_cert, tls_key) if tls_cert else None
    if token_file and os.name == "posix" and Path(token_file).stat().st_mode & 0o077:
        err_console.print(f"[yellow]warning[/]: {token_file} can be read by other users of this machine; "
                          f"chmod 600 {token_file}", highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1") and tls is None:
        err_console.print(f"[yellow]warning[/]: listening on {host}: plain HTTP, so the token, models and results "
                          "cross the network unencrypted; use --tls-cert/--tls-key, or 127.0.0.1 behind an SSH "
                          "tunnel (README, 'Device agent')", highlight=False)

    def ready(server):
        h, p = server.server_address[:2]
        click.echo(f"edgeforge agent {__version__} listening on {server.scheme}://{h}:{p} "
                   f"(runtimes: {', '.join(f'{k} {v}' for k, v in server.agent.runtimes.items()) or 'none'})",
                   err=False)
        sys.stdout.flush()

    serve(host, port, token, ready=ready, log=not quiet, tls=tls, max_upload_mb=max_upload_mb, max_queue=max_queue,
          read_timeout_s=read_timeout, run_timeout_s=run_timeout, model_ttl_s=model_ttl,
          workdir=Path(workdir) if workdir else None, device=device_name)


@cli.group(invoke_without_command=True)
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """Native custom ops: `plugins build` (CMake; what this machine can build) and `plugins info`."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(plugins_info)


def _print_plugin_parts(data: dict) -> None:
    from rich.table import Table

    table = Table(title=f"edgeforge plugins ({data['build_dir']})")
    for col in ("part", "state", "path / reason"):
        table.add_column(col)
    for name, part in data["parts"].items():
        state = "[green]built[/]" if part["built"] else "[yellow]skipped[/]"
        table.add_row(name, state, part.get("path") or part.get("reason", ""))
    console.print(table)
    for dep, note in data.get("deps", {}).items():
        console.print(f"  {dep}: {note}")


@plugins.command("build")
@click.option("--build-dir", type=click.Path(file_okay=False), default=None, help="Default: plugins/build.")
@click.option("--no-fetch", is_flag=True, help="Do not download missing headers (TensorRT, ONNX Runtime).")
@click.option("--require", multiple=True, type=click.Choice(["cpu", "asan", "ort", "trt"]),
              help="Exit 1 unless this part was built (repeatable).")
def plugins_build(build_dir, no_fetch, require) -> None:
    """Build the CPU math core, its ASan test driver, the ONNX Runtime kernels and the TensorRT plugins.

    Builds what this machine can build and says what it skipped and why.
    """
    from edgeforge.errors import CheckFailed
    from edgeforge.ops import build as plugin_build

    report = plugin_build.build(build_dir, fetch=not no_fetch, log=lambda m: console.print(f"[dim]{m}[/]"))
    _print_plugin_parts(report.to_json())
    missing = [p for p in require if not report.parts.get(p) or not report.parts[p].built]
    if missing:
        raise CheckFailed(f"required plugin parts not built: {', '.join(missing)}")


@plugins.command("info")
@click.option("--build-dir", type=click.Path(file_okay=False), default=None, help="Default: plugins/build.")
def plugins_info(build_dir) -> None:
    """Show which native libraries are built, where, and which headers they were built with."""
    from edgeforge.ops import build as plugin_build

    _print_plugin_parts(plugin_build.info(build_dir))


@cli.group()
def calib() -> None:
    """Calibration sets: `calib make FOLDER --out calib/NAME.yaml`, `calib show NAME`."""


@calib.command("make")
@click.argument("folder", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="YAML to write (calib/NAME.yaml).")
@click.option("--kind", type=click.Choice(["auto", "folder", "npz", "video"]), default="auto", show_default=True)
@click.option("--count", type=int, default=64, show_default=True, help="Samples drawn when calibrating.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--on-corrupt", type=click.Choice(["skip", "refuse"]), default="skip", show_default=True,
              help="Unreadable files: skip them (listed) or refuse the set.")
def calib_make(folder, out, kind, count, seed, on_corrupt) -> None:
    """Define a calibration set from FOLDER (images, ImageFolder, clips) or an .npz; every file is checked."""
    from edgeforge.data.calib import make

    defn, scan = make(folder, out, kind=kind, count=count, seed=seed, on_corrupt=on_corrupt)
    console.print(f"wrote {out}: {scan['kind']}, {scan['readable']} of {scan['total']} readable, "
                  f"count {defn.count}, seed {seed}")
    for p, r in scan["unreadable"]:
        err_console.print(f"[yellow]skipped[/] {p}: {r}")


@calib.command("show")
@click.argument("name")
@click.option("--recipe", default=None, help="Preprocess for this recipe's input (default: 3x224x224, ImageNet mean/std).")
@click.option("--num-samples", type=int, default=None, help="Samples to load (default: the set's count).")
@click.option("--sheet", type=click.Path(dir_okay=False), default=None,
              help="Contact-sheet PNG path (default: calib-NAME.png in the working directory).")
def calib_show(name, recipe, num_samples, sheet) -> None:
    """Count, shapes, per-channel statistics and a contact-sheet PNG of calibration set NAME."""
    from pathlib import Path

    from edgeforge.data.calib import channel_stats, contact_sheet, load_definition, materialize
    from edgeforge.data.preprocess import Preprocess
    from edgeforge.quant.report import print_calib
    from edgeforge.recipes import InputSpec

    d = load_definition(name)
    if recipe:
        from edgeforge.recipes import load

        spec = load(recipe).spec.input
    else:
        spec = InputSpec(shape=[3, 224, 224]) if d.source.kind != "clips" else InputSpec(
            shape=[8, 3, 224, 224], layout="NTCHW")
    data = materialize(d, Preprocess.from_input_spec(spec), num_samples)
    path = contact_sheet(data, sheet or Path(f"calib-{d.name}.png"))
    print_calib(data, channel_stats(data.x), path, console)


def _command_line() -> list[str]:
    """The command as the user typed it (recorded in manifests)."""
    return list(_INVOCATION) if _INVOCATION else ["edgeforge", *sys.argv[1:]]


_INVOCATION: list[str] = []


def main(argv: list[str] | None = None) -> int:
    _INVOCATION[:] = ["edgeforge", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli.main(args=argv, prog_name="edgeforge", standalone_mode=False)
    except EdgeforgeError as e:
        from rich.text import Text

        err_console.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
        return e.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
