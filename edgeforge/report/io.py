"""Write a report as JSON (validated schema), Markdown and self-contained HTML, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from edgeforge.artifacts import write_text_atomic
from edgeforge.report.render import to_html, to_markdown
from edgeforge.report.schema import Report, load_report


def report_stem(report: Report) -> str:
    return f"{report.target.name}-{report.model.precision}"


def write_report(report: Report, reports_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `<target>-<precision>.{json,md,html}` into `reports_dir`; return their paths."""
    reports_dir = Path(reports_dir)
    stem = report_stem(report)
    paths = {ext: reports_dir / f"{stem}.{ext}" for ext in ("json", "md", "html")}
    # Round-trip through the schema so what is written is exactly what `load_report` accepts.
    text = report.model_dump_json(indent=2)
    Report.model_validate_json(text)
    write_text_atomic(paths["json"], text + "\n")
    write_text_atomic(paths["md"], to_markdown([report], f"edgeforge bench: {report.label}"))
    write_text_atomic(paths["html"], to_html([report], f"edgeforge bench: {report.label}"))
    return paths


def write_index(reports_dir: str | os.PathLike) -> Path | None:
    """`reports_dir/index.html`: every valid report in the folder on one page (with the
    accuracy-vs-latency chart once there are several). Files that are not valid reports are
    left out, not fatal: the folder may hold reports from a newer edgeforge."""
    from edgeforge.errors import BadInput

    reports_dir = Path(reports_dir)
    reports = []
    for p in sorted(reports_dir.glob("*.json")):
        try:
            reports.append(load_report(p))
        except BadInput:
            continue
    if not reports:
        return None
    out = reports_dir / "index.html"
    write_text_atomic(out, to_html(reports, f"edgeforge: {len(reports)} reports in {reports_dir}"))
    return out


def merge_html(paths: Sequence[str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> Path:
    """Merge several report JSONs into one HTML page at `out`."""
    reports = [load_report(p) for p in paths]
    out = Path(out)
    write_text_atomic(out, to_html(reports, title or f"edgeforge: {len(reports)} reports"))
    return out
