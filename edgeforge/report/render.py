"""Render reports as Markdown and as one self-contained HTML page (inline SVG plots and CSS,
one small inline script that makes tables sortable; nothing is fetched from the network)."""

from __future__ import annotations

import json
from html import escape
from typing import Any, Sequence

from edgeforge.report import plots
from edgeforge.report.schema import Report


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}" if v < 10 else f"{v:.2f}"


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}%"


def accuracy_figure(r: Report) -> tuple[str, float] | None:
    """The accuracy a chart shows: top-1 vs labels, else top-1 agreement with FP32."""
    a = r.accuracy
    if a is None:
        return None
    if a.top1 is not None:
        return "top-1 (%)", a.top1
    if a.agreement_top1 is not None:
        return "top-1 agreement with FP32 (%)", a.agreement_top1
    return None


def kernel_fidelity_text(r: Report, short: bool = False) -> str | None:
    """The INT8 kernels against the float emulation of the QDQ graph, in words (None: no check)."""
    k = r.kernel_fidelity
    if k is None:
        return None
    if k.not_measured:
        return f"not measured: {k.not_measured}"
    sq = "identical outputs" if k.sqnr_db is not None and k.sqnr_db >= 999 else f"SQNR {k.sqnr_db:.1f} dB"
    head = ("DRIFT: " if k.drift else "") + f"{sq}, agree {k.agreement_top1:.1f}%"
    if short:
        return head + ("" if k.passed is not False else " (FAILED)")
    tail = [f"cosine {k.cosine:.6f}", f"max error {k.max_abs_error_rel:.2e} of the output's range"
            if k.max_abs_error_rel is not None else "", f"{k.num_samples} inputs"]
    gate = f"; warns below {k.warn_below_db:g} dB"
    if k.floor_db is not None:
        gate += f"; --max-kernel-drift {k.floor_db:g} dB: " + ("passed" if k.passed else "FAILED")
    cap = f"; ONEDNN_MAX_CPU_ISA={k.isa_cap}" if k.isa_cap else ""
    return (f"{head} ({', '.join(t for t in tail if t)}): {k.kernels} vs {k.reference}{gate}{cap}")


def cpu_text(r: Report) -> str | None:
    c = r.cpu
    if not c:
        return None
    flags = ", ".join(c.get("int8_flags") or []) or "none"
    return f"{c.get('model')} ({c.get('machine')}); int8 flags: {flags}"


def summary_rows(reports: Sequence[Report]) -> list[dict[str, str]]:
    rows = []
    for r in reports:
        if r.status != "measured":
            rows.append({"report": r.label, "status": "not measured", "p50 ms": "-", "p90 ms": "-", "p99 ms": "-",
                         "noise": "-", "throughput/s": "-", "top-1": "-", "vs FP32": "-",
                         "kernels vs graph": "-", "% of peak": "-", "note": r.reason or ""})
            continue
        L, a, e, b = r.latency, r.accuracy, r.efficiency, r.baseline
        acc = "-"
        if a is not None and a.top1 is not None:
            acc = f"{a.top1:.2f}"
        vs = []
        if b is not None:
            vs.append(f"{b.speedup:.2f}x faster")
        if a is not None and a.agreement_top1 is not None:
            vs.append(f"agree {a.agreement_top1:.1f}%")
        if a is not None and a.sqnr_db is not None:
            vs.append(f"SQNR {a.sqnr_db:.1f} dB")
        rows.append({
            "report": r.label, "status": "measured" + (" (noisy)" if L.noisy else ""),
            "p50 ms": _ms(L.p50), "p90 ms": _ms(L.p90), "p99 ms": _ms(L.p99), "noise": f"±{L.noise_pct:.1f}%",
            "throughput/s": f"{L.throughput_per_s:.1f}", "top-1": acc, "vs FP32": ", ".join(vs) or "-",
            "kernels vs graph": kernel_fidelity_text(r, short=True) or "-",
            "% of peak": _pct(100 * e.fraction_of_peak if e and e.fraction_of_peak is not None else None),
            "note": "; ".join([f"noisy: CV {L.cv:.0%}"] * L.noisy
                              + [w for w in r.warnings if not w.startswith("noisy run")]),
        })
    return rows


def detail_rows(r: Report) -> list[tuple[str, str]]:
    """(field, value) pairs for one report: everything a reader needs to trust the numbers."""
    rows: list[tuple[str, str]] = [
        ("model", f"{r.model.path} ({r.model.size_bytes / 1e6:.2f} MB, sha256 {r.model.sha256[:12]})"),
        ("precision", r.model.precision),
        ("target", f"{r.target.name}: {r.target.device} [{r.target.reached}]"),
    ]
    if (cpu := cpu_text(r)):
        rows.append(("cpu", cpu))
    if r.model.params is not None or r.model.macs is not None:
        rows.append(("params / MACs", f"{r.model.params or 'n/a'} / {r.model.macs or 'n/a'}"))
    if r.model.inputs:
        rows.append(("inputs", ", ".join(f"{t.name} {t.shape} {t.dtype}" for t in r.model.inputs)))
    if r.model.quant:
        rows.append(("quantization", json.dumps(r.model.quant, sort_keys=True)))
    if r.status != "measured":
        rows.append(("status", f"not measured: {r.reason}"))
        return rows
    rt, L = r.runtime, r.latency
    rows += [
        ("runtime", f"{rt.runtime} {rt.version} on {rt.device}"),
        ("runtime options", json.dumps(rt.options, sort_keys=True, default=str)),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(rt.versions.items()))),
        ("measured on", f"{L.measured_on}; {L.iterations} calls in {L.blocks} blocks of {L.block_size} after "
                        f"{L.warmup} warm-up" + (f"; alternated with {', '.join(L.interleaved_with)}" if L.interleaved_with else "")),
        ("latency ms", f"p50 {_ms(L.p50)}, p90 {_ms(L.p90)}, p95 {_ms(L.p95)}, p99 {_ms(L.p99)}, mean {_ms(L.mean)}, "
                       f"std {_ms(L.std)}, min {_ms(L.min)}, max {_ms(L.max)}"),
        ("noise", f"CV {L.cv:.1%}; p50 stated to ±{L.noise_pct:.1f}%" + (" (NOISY)" if L.noisy else "")),
        ("throughput", f"{L.throughput_per_s:.1f} inferences/s at batch {L.batch} (sequential)"),
        ("cold load / first inference", f"{_ms(L.cold_load_ms)} ms / {_ms(L.first_inference_ms)} ms"),
    ]
    if r.memory:
        m = r.memory
        rows.append(("peak memory", f"+{m.peak_delta_mb:.1f} MiB RSS (peak {m.peak_rss_mb:.1f} MiB; {m.method})"
                     if m.peak_delta_mb is not None else f"n/a ({m.method})"))
    if r.efficiency:
        e = r.efficiency
        if e.fraction_of_peak is not None:
            rows.append(("fraction of peak", f"{100 * e.fraction_of_peak:.2f}% ({e.achieved_gops:.1f} of "
                                             f"{e.peak_gops:.0f} GOPS, {e.peak_figure})"))
        elif e.achieved_gops is not None:
            rows.append(("achieved", f"{e.achieved_gops:.1f} GOPS"))
        if e.weight_read_fraction_of_bandwidth is not None:
            rows.append(("weights read / bandwidth", f"{100 * e.weight_read_fraction_of_bandwidth:.2f}% of "
                                                     f"{e.memory_bandwidth_gbs} GB/s"))
        if e.source:
            rows.append(("peak source", e.source))
        if e.note:
            rows.append(("efficiency note", e.note))
    if r.baseline:
        b = r.baseline
        rows.append(("vs FP32", f"FP32 p50 {_ms(b.p50)} ms (±{b.noise_pct:.1f}%): {b.speedup:.2f}x, "
                                f"measured in alternating blocks"))
    if r.accuracy:
        a = r.accuracy
        parts = [f"{a.num_samples} samples of {a.dataset}"]
        if a.top1 is not None:
            parts.append(f"top-1 {a.top1:.2f}%, top-5 {a.top5:.2f}%")
        if a.agreement_top1 is not None:
            parts.append(f"top-1 agreement with {a.reference} {a.agreement_top1:.2f}%")
        if a.sqnr_db is not None:
            parts.append(f"SQNR {a.sqnr_db:.1f} dB")
        if a.top1 is None and a.agreement_top1 is None:
            parts.append("no labels: nothing to score against (this model is the reference for INT8 agreement/SQNR)")
        rows.append(("accuracy", "; ".join(parts)))
    if (kf := kernel_fidelity_text(r)):
        rows.append(("kernel fidelity", kf))
    for w in r.warnings:
        rows.append(("warning", w))
    return rows


def to_markdown(reports: Sequence[Report], title: str = "edgeforge bench report") -> str:
    lines = [f"# {title}", ""]
    rows = summary_rows(reports)
    if rows:
        keys = list(rows[0])
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for row in rows:
            lines.append("| " + " | ".join(str(row[k]).replace("|", "\\|") for k in keys) + " |")
        lines.append("")
    for r in reports:
        lines += [f"## {r.label}", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {str(v).replace('|', chr(92) + '|')} |" for k, v in detail_rows(r)]
        lines.append("")
    lines.append(f"_Generated by edgeforge {reports[0].edgeforge_version if reports else ''}; "
                 f"report schema v{reports[0].schema_version if reports else 1}._")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer}
td.k{font-weight:600;white-space:nowrap}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.notmeasured{color:#a00;font-weight:600}
.warn{color:#a60}
section{border-top:2px solid #ddd;margin-top:2em}
"""

# Sortable tables; also marks the page as rendered (the browser test reads data-ready).
_JS = """
(function(){
  function key(td){var t=td.textContent.trim();var n=parseFloat(t.replace(/[^0-9.eE+-]/g,''));
    return isNaN(n)?t.toLowerCase():n;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,i){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir===1?'asc':'desc';
        rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);return x<y?-dir:x>y?dir:0;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.body.setAttribute('data-plots', String(document.querySelectorAll('svg.plot').length));
  document.body.setAttribute('data-ready', '1');
})();
"""


def _table(rows: list[dict[str, str]], cls: str = "sortable") -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(row[k]))}</td>" for k in keys) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def to_html(reports: Sequence[Report], title: str = "edgeforge bench report") -> str:
    """One self-contained page: summary table, comparison charts (several reports), and per
    report its details, latency histogram and block-median trace."""
    parts = [f"<h1>{escape(title)}</h1>", _table(summary_rows(reports))]
    measured = [r for r in reports if r.status == "measured"]
    if len(reports) > 1:
        charts = [plots.latency_bars([(r.label, r.latency.p50, r.latency.p90, r.latency.noise_pct) for r in measured],
                                     "p50 latency per report")]
        figs = [(r, accuracy_figure(r)) for r in measured]
        figs = [(r, f) for r, f in figs if f is not None]
        ylabel = figs[0][1][0] if figs and all(f[0] == figs[0][1][0] for _, f in figs) else "accuracy (%)"
        charts.append(plots.accuracy_vs_latency([(r.label, r.latency.p50, f[1]) for r, f in figs],
                                                "accuracy vs latency", ylabel))
        parts.append('<h2>Comparison</h2><div class="plots">' + "".join(charts) + "</div>")
    for i, r in enumerate(reports):
        parts.append(f'<section id="report-{i}"><h2>{escape(r.label)}</h2>')
        if r.status != "measured":
            parts.append(f'<p class="notmeasured">not measured: {escape(r.reason or "")}</p>')
        for w in r.warnings:
            parts.append(f'<p class="warn">warning: {escape(w)}</p>')
        parts.append('<table class="details">' + "".join(
            f'<tr><td class="k">{escape(k)}</td><td>{escape(v)}</td></tr>' for k, v in detail_rows(r)) + "</table>")
        if r.status == "measured":
            L = r.latency
            series: dict[str, Any] = {r.model.precision: L.block_medians_ms}
            if r.baseline is not None and r.baseline.block_medians_ms:
                series[f"{r.baseline.precision} (alternated)"] = r.baseline.block_medians_ms
            parts.append('<div class="plots">'
                         + plots.latency_histogram(L.samples_ms, f"latency distribution: {r.label}",
                                                   {"p50": L.p50, "p90": L.p90, "p99": L.p99})
                         + plots.block_medians(series, "block medians (run order)")
                         + "</div>")
        parts.append("</section>")
    version = reports[0].edgeforge_version if reports else ""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(parts)
            + f"<footer><p>Generated by edgeforge {escape(version)}, report schema v1.</p></footer>"
            + f"<script>{_JS}</script></body></html>\n")
