"""Bench reports: schema (`schema`), Markdown/HTML rendering with inline SVG plots (`render`,
`plots`), writing/merging (`io`) and CI comparison (`compare`)."""

from edgeforge.report.schema import SCHEMA_VERSION, Report, load_report

__all__ = ["SCHEMA_VERSION", "Report", "load_report"]
