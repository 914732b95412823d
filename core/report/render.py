"""The case report as PDF (reportlab), self-contained HTML (plotly inlined), JSON and CSV.

The report's content is built once as sections (``sections.py``) from the JSON report (``data.py``); the
HTML (``html_backend.py``) and the PDF (``pdf_backend.py``) back-ends only draw them, so both read in the
same order with the same prose. Every piece of user text (note, metadata values, case id and reference)
is escaped before it enters HTML or a reportlab paragraph. CSV cells that a spreadsheet would run as a
formula (starting with = + - @, a tab or a carriage return) get a leading apostrophe.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..case import Case
from ..package import Package
from .data import ReportError, build_report
from .html_backend import render_html
from .pdf_backend import pdf_text, render_pdf
from .sections import Section, build_sections

__all__ = ["FORMATS", "CaseReport", "make_report", "pdf_text", "render_csv", "render_html", "render_pdf", "spreadsheet_safe"]

FORMATS = ("pdf", "html", "json", "csv")


@dataclass
class CaseReport:
    data: dict[str, Any]                  # the JSON report (schema.json)
    case: Case
    explanation: Any | None = None        # core.explain.Explanation, for the heatmaps and spectrum curve
    comparison: Any | None = None
    _sections: list[Section] | None = field(default=None, init=False, repr=False, compare=False)

    def sections(self) -> list[Section]:
        """The report's sections, built once (their pictures drawn once) for every format rendered from
        this report: the PDF and the HTML of one report share them."""
        if self._sections is None:
            self._sections = build_sections(self)
        return self._sections

    def json(self) -> str:
        return json.dumps(self.data, indent=2, ensure_ascii=False)

    def csv(self) -> str:
        return render_csv(self)

    def html(self) -> str:
        return render_html(self)

    def pdf(self) -> bytes:
        return render_pdf(self)

    def render(self, fmt: str) -> bytes:
        if fmt not in FORMATS:
            raise ReportError(f"unknown report format '{fmt}'; use one of: {', '.join(FORMATS)}.")
        out = {"pdf": self.pdf, "html": self.html, "json": self.json, "csv": self.csv}[fmt]()
        return out if isinstance(out, bytes) else out.encode("utf-8")

    def write(self, path: str | Path, fmt: str | None = None) -> Path:
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".").lower()
        data = self.render(fmt)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def filename(self, fmt: str) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (self.data["case"]["case_id"] or "case"))[:40]
        model = self.data["model"]   # the package's own name (several packages can share a variant type)
        pkg = "".join(ch if ch.isalnum() or ch in "-_" else "_"
                      for ch in str(model.get("name") or model["variant"]).rsplit("/", 1)[-1])[:40]
        return f"fusionlens-report-{safe}-{pkg}.{fmt}"


def make_report(package: Package, case: Case, explanation: Any | None = None, comparison: Any | None = None,
                case_reference: str | None = None, prediction: Any | None = None, referral: Any | None = None) -> CaseReport:
    """``referral``: the ``core.committee.ReferralDecision`` already made (else decided by ``build_report``)."""
    data = build_report(package, case, prediction, explanation, comparison, case_reference, referral=referral)
    return CaseReport(data, case, explanation, comparison)


# ---- CSV -------------------------------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: Any) -> str:
    """A CSV cell no spreadsheet runs as a formula: text starting with = + - @ tab or CR gets a leading
    apostrophe (OWASP's advice); plain numbers (-0.5) stay numbers."""
    text = "" if cell is None else str(cell)
    if text.startswith(_FORMULA_START):
        try:
            float(text)
            return text
        except ValueError:
            return "'" + text
    return text


def render_csv(rep: CaseReport) -> str:
    """The report as rows of (section, field, value): the page-1 summary, inputs, probabilities, internals."""
    import csv

    d = rep.data
    sm, pred, model = d["summary"], d["prediction"], d["model"]
    rows: list[tuple[Any, Any, Any]] = [("notice", "research use", d["notice"]),
                                        ("case", "case id", d["case"]["case_id"]), ("case", "case reference", d["case"]["case_reference"]),
                                        ("case", "generated", d["generated_at"]),
                                        ("model", "name", model["name"]), ("model", "variant", model["variant"]),
                                        ("model", "sha256", model["sha256"]),
                                        ("prediction", "label", sm["label"]), ("prediction", "probability", f"{sm['probability']:.4f}"),
                                        ("prediction", "uncertainty", sm["uncertainty"]["sentence"]),
                                        ("prediction", "referral", sm["referral"]),
                                        ("prediction", "referral signal", sm["referral_signal"])]
    rows += [("prediction", "referral signal, in words", x) for x in sm["referral_details"]]
    rows += [("probability", k, f"{v:.4f}") for k, v in pred["calibrated_probabilities"].items()]
    for r in sm["reasons"]:
        rows += [(f"reasons: {r['input']}", r["title"], line) for line in r["reasons"]]
    inp = d["case"]["inputs"]
    if inp.get("note"):
        rows.append(("input", "note", inp["note"]["text"]))
    rows += [("input: metadata", k, v) for k, v in (inp.get("metadata") or {}).items()]
    rows += [("fusion", a, b) for a, b in d["readable"]["fusion_internals"]]
    rows += [("faithfulness", a, b) for a, b in d["readable"]["faithfulness"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "field", "value"])
    for row in rows:
        w.writerow([spreadsheet_safe(c) for c in row])
    return "\ufeff" + buf.getvalue()   # BOM: spreadsheets then read the file as UTF-8
