"""Rich terminal output for `bench`, `report show|compare` and `targets` (the CLI stays thin)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeforge.report.compare import Comparison
from edgeforge.report.render import detail_rows
from edgeforge.report.schema import Report


def print_report(report: Report, console: Console) -> None:
    if report.status != "measured":
        console.print(f"[bold yellow]not measured[/]: {escape(report.label)}: {escape(report.reason or '')}")
    t = Table(title=escape(report.label), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in detail_rows(report):
        t.add_row(escape(k), escape(v), style="yellow" if k == "warning" else None)
    console.print(t)


def print_comparison(base: Report, new: Report, c: Comparison, console: Console) -> None:
    t = Table(title=escape(f"{base.label}  ->  {new.label}"), title_justify="left")
    for col in ("metric", "base", "new", "change"):
        t.add_column(col)
    for row in c.rows:
        t.add_row(*(escape(x) for x in row))
    console.print(t)
    for n in c.notes:
        console.print(f"[dim]{escape(n)}[/]")
    for f in c.failures:
        console.print(f"[bold red]budget broken[/]: {escape(f)}")
    if c.ok:
        console.print("[green]within budget[/]")


def print_targets(rows: list[tuple], console: Console) -> None:
    """rows: (target, reachable, how/why)."""
    t = Table(title="edgeforge targets", title_justify="left")
    for col in ("target", "device", "runtime", "precisions", "compile", "peak (dense)", "reachable from here"):
        t.add_column(col, overflow="fold")
    for target, ok, why in rows:
        peak = target.peak
        figs = []
        if target.peak.estimate == "host":
            p = target.peak_figures()
            figs.append(f"host estimate: {p.fp32_gflops or '?'} GFLOPS fp32")
        for field, unit in (("fp32_gflops", "GFLOPS fp32"), ("fp16_gflops", "GFLOPS fp16"),
                            ("int8_gops", "GOPS int8"), ("memory_bandwidth_gbs", "GB/s")):
            v = getattr(peak, field)
            if v is not None:
                figs.append(f"{v:g} {unit}")
        t.add_row(target.name, escape(target.device), target.runtime, ", ".join(target.precisions), target.compile,
                  "; ".join(figs), f"[green]yes[/] ({escape(why)})" if ok else f"[red]no[/]: {escape(why)}")
    console.print(t)
