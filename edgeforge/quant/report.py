"""Rich tables for `edgeforge quantize` and `edgeforge calib show`."""

from __future__ import annotations

from rich.table import Table


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_quant_summary(result, console, top: int = 10) -> None:
    """Accuracy, agreement, timings and the most sensitive layers of a quantize run."""
    e = result.entry
    r = result.report
    if result.skipped:
        console.print(f"[green]up to date[/]: {result.onnx_path} (inputs unchanged; --force to redo)")
    acc = e.get("accuracy", {})
    t = Table(title=f"{e.get('method')} {e.get('bits')} on {e.get('target')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("eval_set", "eval_count", "fp32_top1", "int8_top1", "drop", "agreement_fp32_int8",
              "output_cosine", "output_sqnr_db", "torch_sim_top1", "agreement_torch_sim_ort",
              "torch_sim_ort_output_cosine", "torch_sim", "agreement_note"):
        if k in acc:
            t.add_row(k, _fmt(acc[k], 4))
    for kf in acc.get("kernel_fidelity") or []:
        label = f"kernels vs graph ({kf.get('runtime')}{', ' + kf['isa_cap'] if kf.get('isa_cap') else ''})"
        t.add_row(label, f"not run: {kf['not_run'][:80]}" if "not_run" in kf else
                  f"SQNR {_fmt(kf.get('sqnr_db'), 1)} dB, top-1 agreement {_fmt(kf.get('agreement'), 4)}")
    chk = (r or {}).get("int8_kernels") or e.get("int8_kernels")
    if chk:
        t.add_row("int8 accumulation", f"{chk['accumulation']} (overflow fix: {chk['overflow_fix']}); "
                  f"{chk['layers_that_can_saturate']}/{chk['layers_checked']} layers can saturate int16 pairs")
    cal = e.get("calibration", {})
    t.add_row("calibration", f"{cal.get('name')} x{cal.get('count')} ({str(cal.get('hash', ''))[:12]})")
    if e.get("timings_s"):
        t.add_row("time (s)", " ".join(f"{k.removesuffix('_s')}={v:.1f}" for k, v in e["timings_s"].items()))
    console.print(t)
    warnings = [kf["warning"] for kf in acc.get("kernel_fidelity") or [] if kf.get("warning")]
    if chk and chk.get("warning"):
        warnings.append(chk["warning"])
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    mp = (r or {}).get("mixed_precision") or e.get("mixed_precision")
    if mp:
        print_mixed_precision(mp, console)
    an = r.get("analysis") if r else None
    if an:
        by_name = {row["layer"]: row for row in an["layers"]}
        st = Table(title=f"most sensitive layers (SQNR alone, {an['samples']} samples)")
        for col in ("layer (module)", "op", "SQNR alone dB", "cos alone", "SQNR accum dB", "cos accum"):
            st.add_column(col, justify="left" if col.startswith("layer") or col == "op" else "right")
        for name in an["sensitivity_ranking"][:top]:
            row = by_name[name]
            st.add_row(row["module"], row["op"], _fmt(row["sqnr_alone_db"]), _fmt(row["cosine_alone"], 5),
                       _fmt(row["sqnr_accumulated_db"]), _fmt(row["cosine_accumulated"], 5))
        console.print(st)
        console.print("leave layers in float with [bold]--keep-fp MODULE[/] (e.g. --keep-fp "
                      f"{by_name[an['sensitivity_ranking'][0]]['module']})")
    console.print(f"wrote {result.onnx_path} and {result.quant_json}")


def print_mixed_precision(mp: dict, console, top: int = 12) -> None:
    """--max-drop: the budget, the search, the layers kept in float and their latency cost."""
    unit = f"{mp['metric']} loss, points"
    t = Table(title=f"mixed precision: --max-drop {mp['max_drop']:g} ({unit})", show_header=True)
    t.add_column("field")
    t.add_column("value", justify="right")
    if mp.get("metric_definition"):
        t.add_row("metric", mp["metric_definition"])
    if mp.get("kernels"):
        k = mp["kernels"]
        t.add_row("measured with", k.get("kernels", "") + (f" ({k['note']})" if k.get("note") else ""))
    if "eval_set" in mp:
        t.add_row("eval split", f"{mp['eval_set']} x{mp['eval_count']}")
    t.add_row("all INT8", _fmt(mp.get("int8_value"), 3) + (f" (SQNR {mp['int8_sqnr_db']:.1f} dB)"
                                                           if "int8_sqnr_db" in mp else ""))
    for s in mp.get("steps", [])[1:]:
        t.add_row(f"  {s['float_layers']} layers in float", f"{s['value']:.3f} (SQNR {s['sqnr_db']:.1f} dB) "
                  + ("[green]within[/]" if s["within_budget"] else "[red]over[/]"))
    kept = mp.get("kept_fp") or []
    t.add_row("kept in float", str(len(kept)) if kept else "none (all INT8 is within budget)"
              if mp.get("met") else "none")
    t.add_row("final", _fmt(mp.get("final_value"), 3) + ("" if mp.get("met") else " [red]over budget[/]"))
    lat = mp.get("latency") or {}
    if "int8_p50_ms" in lat:
        t.add_row("latency p50 (ORT, 1 thread)", f"all INT8 {lat['int8_p50_ms']:.2f} ms, mixed "
                  f"{lat['mixed_p50_ms']:.2f} ms ({lat['cost_ms']:+.2f} ms, {lat['cost_pct']:+.1f}%, "
                  f"noise {lat['noise_pct']:.0f}%)")
    elif lat.get("not_run"):
        t.add_row("latency", f"not run: {lat['not_run'][:80]}")
    console.print(t)
    if kept:
        kt = Table(title="layers kept in float (most sensitive first)")
        for col in ("#", "layer (module)", "op", "SQNR quantized alone dB"):
            kt.add_column(col, justify="left" if col.startswith("layer") or col == "op" else "right")
        by = {r["layer"]: r for r in mp.get("ranking", [])}
        for i, k in enumerate(kept[:top]):
            name = k["layer"] if isinstance(k, dict) else k
            row = by.get(name, {})
            t_mod = k.get("module", name) if isinstance(k, dict) else k
            kt.add_row(str(i + 1), t_mod, (k.get("op") if isinstance(k, dict) else None) or "-",
                       _fmt(row.get("sqnr_db")))
        if len(kept) > top:
            kt.add_row("...", f"{len(kept) - top} more (quant.json mixed_precision.kept_fp)", "", "")
        console.print(kt)
    if mp.get("warning"):
        console.print(f"[yellow]warning[/]: {mp['warning']}")


def print_calib(data, stats: dict, sheet, console) -> None:
    t = Table(title=f"calibration set {data.definition.name}")
    t.add_column("field")
    t.add_column("value")
    t.add_row("source", str(data.definition.source.model_dump(exclude_none=True, exclude_defaults=True) or {"kind": data.definition.source.kind}))
    t.add_row("count", str(len(data.x)))
    t.add_row("sample shape", str(list(data.x.shape[1:])))
    t.add_row("seed", str(data.definition.seed))
    t.add_row("hash", data.hash)
    if data.labels is not None:
        import numpy as np

        t.add_row("labels", str(dict(zip(*[a.tolist() for a in np.unique(data.labels, return_counts=True)]))))
    if data.skipped:
        t.add_row("skipped (unreadable)", "\n".join(f"{p}: {r}" for p, r in data.skipped))
    console.print(t)
    ct = Table(title="per-channel statistics (after preprocessing)")
    for col in ("channel", "mean", "std", "min", "max"):
        ct.add_column(col, justify="right")
    for c in range(len(stats["mean"])):
        ct.add_row(str(c), *(f"{stats[k][c]:.4f}" for k in ("mean", "std", "min", "max")))
    console.print(ct)
    if sheet:
        console.print(f"contact sheet: {sheet}")
