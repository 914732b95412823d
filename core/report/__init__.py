"""Case reports: PDF, self-contained HTML and JSON (``schema.json``) of one case through one model."""
from .data import SCHEMA_VERSION, ReportError, build_report, clean_reference, report_schema, validate_report
from .render import FORMATS, CaseReport, make_report, render_html, render_pdf

__all__ = ["SCHEMA_VERSION", "FORMATS", "CaseReport", "ReportError", "build_report", "clean_reference", "make_report",
           "render_html", "render_pdf", "report_schema", "validate_report"]
