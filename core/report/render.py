"""The case report as PDF (reportlab), self-contained HTML (plotly inlined) and JSON.

Every piece of user text (note, metadata values, case id and reference) is escaped before it enters
HTML or a reportlab paragraph (which parses markup): a note holding ``<script>`` prints as text.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..case import Case
from ..package import Package
from . import figures
from .data import build_report

FORMATS = ("pdf", "html", "json")


@dataclass
class CaseReport:
    data: dict[str, Any]                  # the JSON report (schema.json)
    case: Case
    explanation: Any | None = None        # core.explain.Explanation, for the heatmaps and spectrum curve
    comparison: Any | None = None

    def json(self) -> str:
        return json.dumps(self.data, indent=2, ensure_ascii=False)

    def html(self) -> str:
        return render_html(self)

    def pdf(self) -> bytes:
        return render_pdf(self)

    def render(self, fmt: str) -> bytes:
        if fmt not in FORMATS:
            raise ValueError(f"unknown report format '{fmt}'; use one of: {', '.join(FORMATS)}.")
        out = {"pdf": self.pdf, "html": self.html, "json": self.json}[fmt]()
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
        return f"fusionlens-report-{safe}-{self.data['model']['variant']}.{fmt}"


def make_report(package: Package, case: Case, explanation: Any | None = None, comparison: Any | None = None,
                case_reference: str | None = None, prediction: Any | None = None) -> CaseReport:
    data = build_report(package, case, prediction, explanation, comparison, case_reference)
    return CaseReport(data, case, explanation, comparison)


# ---- shared pieces -------------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x:.1%}"


def _images(rep: CaseReport) -> list[tuple[str, bytes]]:
    """(caption, PNG) of the input image and each heatmap."""
    out: list[tuple[str, bytes]] = []
    case, ex = rep.case, rep.explanation
    if case.image is not None:
        out.append(("Input image (green: lesion outline)" if case.mask is not None else "Input image",
                    figures.thumbnail_png(case.image, case.mask)))
    if ex is not None and case.image is not None:
        mask = ex.lesion_context["mask"] if ex.lesion_context else case.mask
        shares = (ex.lesion_context or {}).get("shares", {})
        for method, cam in ex.cams.items():
            s = shares.get(method)
            cap = f"{method} for {ex.target_label}" + (f": lesion {_pct(s['lesion'])}, context {_pct(s['context'])}" if s else "")
            out.append((cap, figures.cam_png(case.image, cam, mask, method)))
    return out


def _model_rows(model: Mapping[str, Any], dash: str) -> list[tuple[str, str]]:
    """The model table of both reports (``dash``: the range sign the output's font has)."""
    rows = [("Package", model["name"]), ("Fusion variant", model["variant"]), ("Model sha256", model["sha256"]),
            ("Inputs", ", ".join(model["modalities"])), ("Training data", model["training_data"] or "-"),
            ("Calibration temperature", f"{model['calibration_temperature']:.3f}")]
    for k, m in model["test_metrics"].items():
        ci = m.get("ci95")
        rows.append((f"Test {k.replace('_', ' ')}", f"{m['value']:.3f}" + (f" (95% CI {ci[0]:.3f}{dash}{ci[1]:.3f})" if ci else "")))
    return rows


def _rows(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, dict)):
            v = json.dumps(v)
        out.append((str(k), str(v)))
    return out


# ---- HTML ------------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:24px auto;color:#222;padding:0 12px}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.notice{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;border-radius:4px;font-weight:600}
.refer{background:#fde2e1;border:1px solid #d9534f;padding:8px 12px;border-radius:4px}
.ok{background:#e6f4ea;border:1px solid #5cb85c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;font-size:.9em;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{margin:0}.imgs img{max-width:300px}figcaption{font-size:.8em;color:#555}
small{color:#666}
"""


def _table_html(rows: list[tuple[str, str]], head: tuple[str, str] | None = None) -> str:
    h = f"<tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>" if head else ""
    return "<table>" + h + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows) + "</table>"


def render_html(rep: CaseReport) -> str:
    """One self-contained HTML file: plotly.js inlined once, images as data URIs, no external requests."""
    from .. import plots

    d = rep.data
    pred, model, ex = d["prediction"], d["model"], d["explanation"]
    parts: list[str] = []
    figs: list[Any] = []
    e = html.escape
    parts.append(f"<h1>FusionLens case report: {e(d['case']['case_id'] or 'unnamed case')}</h1>")
    parts.append(f"<p class='notice'>{e(d['notice'])}</p>")
    ref = d["case"]["case_reference"]
    parts.append(_table_html([("Case id", d["case"]["case_id"] or "-"), ("Case reference", ref or "-"),
                              ("Generated", d["generated_at"]), ("Software", f"FusionLens {d['software']['version']}")]))
    parts.append("<h2>Model</h2>")
    parts.append(_table_html(_model_rows(model, "–")))
    if model["synthetic_training_data"]:
        parts.append("<p><b>Trained on synthetic demo data.</b></p>")
    parts.append("<h2>Prediction</h2>")
    parts.append(f"<p>Predicted class <b>{e(pred['label'])}</b> with calibrated probability "
                 f"<b>{_pct(pred['probability'])}</b>; uncertainty (normalised entropy) "
                 f"{pred['uncertainty']['normalised_entropy']:.3f}.</p>")
    cls = "refer" if pred["refer"] else "ok"
    advice = ("Advise re-check by a clinician: the uncertainty is above the package's referral threshold "
              f"({pred['referral']['threshold']:.3f})." if pred["refer"] else
              f"No referral flag: the uncertainty is below the package's referral threshold ({pred['referral']['threshold']:.3f}).")
    parts.append(f"<p class='{cls}'>{e(advice)}</p>")
    figs.append(plots.probability_bars(list(pred["calibrated_probabilities"]), list(pred["calibrated_probabilities"].values()),
                                       list(pred["mc_std"].values())))
    parts.append("{fig0}")
    parts.append(_table_html([(k, f"{v:.4f}") for k, v in pred["uncertainty"].items()], ("uncertainty", "nats")))
    for w in pred["warnings"]:
        parts.append(f"<p><small>{e(w)}</small></p>")
    parts.append("<h2>Inputs</h2>")
    imgs = _images(rep)
    if imgs:
        parts.append("<div class='imgs'>" + "".join(
            f"<figure><img alt='{e(c)}' src='data:image/png;base64,{base64.b64encode(b).decode()}'><figcaption>{e(c)}</figcaption></figure>"
            for c, b in imgs) + "</div>")
    inp = d["case"]["inputs"]
    if inp.get("note"):
        words = rep.explanation.note["words"] if rep.explanation is not None and rep.explanation.note else None
        parts.append("<p><b>Clinical note</b> (red: words for the explained class, blue: against)</p>")
        parts.append(plots.note_highlight_html(rep.case.note or "", words))
    if inp.get("metadata"):
        parts.append(_table_html([(k, "" if v is None else str(v)) for k, v in inp["metadata"].items()], ("metadata", "value")))
    if inp.get("spectrum"):
        s = inp["spectrum"]
        parts.append(f"<p>Spectrum: {s['points']} points, {s['x_min']:.1f}–{s['x_max']:.1f}.</p>")
    parts.append("<h2>Fusion internals</h2>")
    parts.append(_table_html(_rows(d["fusion_internals"]), ("diagnostic", "value")) if d["fusion_internals"] else
                 "<p>This variant reports no internals.</p>")
    if ex:
        parts.append(f"<h2>Explanations (for class {e(ex['target_label'])})</h2>")
        if ex.get("lesion_context"):
            lc = ex["lesion_context"]
            parts.append(f"<p>Lesion mask: {e(lc['mask_source'])}.</p>")
            parts.append(_table_html([(m, f"lesion {_pct(s['lesion'])}, context {_pct(s['context'])}, background {_pct(s['background'])}")
                                      for m, s in lc["shares"].items()], ("heatmap", "share of heatmap mass")))
            parts.append(_table_html([(k, _pct(v)) for k, v in lc["confidence"].items()], ("image kept sharp", "probability")))
        if ex.get("modality_shapley"):
            figs.append(plots.shapley_bars(ex["modality_shapley"]))
            parts.append("{fig%d}" % (len(figs) - 1))
        if rep.explanation is not None and rep.explanation.table:
            figs.append(plots.table_attribution_bars(rep.explanation.table["features"], title="Table attributions"))
            parts.append("{fig%d}" % (len(figs) - 1))
        if rep.explanation is not None and rep.explanation.spectrum:
            sp = rep.explanation.spectrum
            figs.append(plots.spectrum_attribution(sp["wavelengths"], sp["spectrum"], sp["smoothed"],
                                                   title="Spectrum attribution", x_title="wavenumber (cm⁻¹)"))
            parts.append("{fig%d}" % (len(figs) - 1))
        if ex.get("faithfulness"):
            parts.append("<h3>Faithfulness</h3>")
            parts.append(_table_html([(k, json.dumps({kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in v.items()}))
                                      for k, v in ex["faithfulness"].items()], ("explanation", "scores")))
        for part, why in ex.get("skipped", {}).items():
            parts.append(f"<p><small>{e(part)}: {e(why)}</small></p>")
    if d["comparison"]:
        c = d["comparison"]
        parts.append("<h2>Variant comparison</h2>")
        parts.append(f"<p>{'All variants agree' if c['agreement']['all_agree'] else 'The variants disagree'}: "
                     f"votes {e(json.dumps(c['agreement']['votes']))}; ensemble disagreement {c['ensemble']['disagreement']:.3f} nats.</p>")
        rows = [(col["variant"], f"{col['label']} {_pct(col['probability'])}, uncertainty {col['normalised_entropy']:.2f}"
                 + (", refer" if col["refer"] else "")) for col in c["columns"]]
        parts.append(_table_html(rows, ("variant", "prediction")))
        if c["explanation_agreement"]:
            parts.append(_table_html(_rows(c["explanation_agreement"]), ("explanation agreement (mean over pairs)", "value")))
    parts.append(f"<p class='notice'>{e(d['notice'])}</p>")
    body = "\n".join(parts)
    for i, f in enumerate(figs):
        body = body.replace("{fig%d}" % i, f.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}), 1)
    title = e(f"FusionLens report {d['case']['case_id'] or ''}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


# ---- PDF ---------------------------------------------------------------------------------------------------------------

def render_pdf(rep: CaseReport) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Image as RLImage
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    d = rep.data
    pred, model, ex = d["prediction"], d["model"], d["explanation"]
    ss = getSampleStyleSheet()
    e = html.escape
    story: list[Any] = []

    def para(text: str, style: str = "BodyText") -> None:
        story.append(Paragraph(text, ss[style]))

    mono = ss["Code"].clone("mono", fontSize=7.5, leading=9, leftIndent=0)

    def table(rows: list[tuple[str, str]], widths=(5.5 * cm, 11.5 * cm)) -> None:
        cells = [[Paragraph(e(a), ss["BodyText"]), Paragraph(e(b), mono if "sha256" in a else ss["BodyText"])] for a, b in rows]
        t = Table(cells, colWidths=widths)
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        story.append(t)
        story.append(Spacer(1, 6))

    def image(png: bytes, width_cm: float) -> RLImage:
        from PIL import Image as PILImage

        w, h = PILImage.open(io.BytesIO(png)).size
        return RLImage(io.BytesIO(png), width=width_cm * cm, height=width_cm * cm * h / w)

    notice = Paragraph(f"<b>{e(d['notice'])}</b>", ss["BodyText"])
    para(f"FusionLens case report: {e(d['case']['case_id'] or 'unnamed case')}", "Title")
    story.append(notice)
    story.append(Spacer(1, 6))
    table([("Case id", d["case"]["case_id"] or "-"), ("Case reference", d["case"]["case_reference"] or "-"),
           ("Generated", d["generated_at"]), ("Software", f"FusionLens {d['software']['version']}")])
    para("Model", "Heading2")
    table(_model_rows(model, "-"))
    para("Prediction", "Heading2")
    para(f"Predicted class <b>{e(pred['label'])}</b>, calibrated probability <b>{_pct(pred['probability'])}</b>, "
         f"uncertainty (normalised entropy) {pred['uncertainty']['normalised_entropy']:.3f}.")
    para(("<b>Advise re-check by a clinician</b>: the uncertainty is above the package's referral threshold "
          f"({pred['referral']['threshold']:.3f}).") if pred["refer"] else
         f"No referral flag: the uncertainty is below the package's referral threshold ({pred['referral']['threshold']:.3f}).")
    table([(k, f"{v:.4f}") for k, v in pred["calibrated_probabilities"].items()], (5.5 * cm, 4 * cm))
    story.append(image(figures.probability_png(pred["calibrated_probabilities"], pred["mc_std"]), 11))
    table([(k, f"{v:.4f}") for k, v in pred["uncertainty"].items()], (5.5 * cm, 4 * cm))
    for w in pred["warnings"]:
        para(e(w))
    para("Inputs", "Heading2")
    imgs = _images(rep)
    if imgs:
        cells = [[image(b, 5.2) for _, b in imgs[i:i + 3]] for i in range(0, len(imgs), 3)]
        caps = [[Paragraph(e(c), ss["BodyText"]) for c, _ in imgs[i:i + 3]] for i in range(0, len(imgs), 3)]
        grid = []
        for r, cr in zip(cells, caps):
            grid += [r, cr]
        story.append(Table(grid))
    inp = d["case"]["inputs"]
    if inp.get("note"):
        para(f"<b>Clinical note</b>: {e(inp['note']['text'][:3000])}" + (" [...]" if len(inp["note"]["text"]) > 3000 else ""))
    if inp.get("metadata"):
        table([(k, "" if v is None else str(v)) for k, v in inp["metadata"].items()])
    if inp.get("spectrum"):
        s = inp["spectrum"]
        para(f"Spectrum: {s['points']} points, {s['x_min']:.1f}-{s['x_max']:.1f}.")
    para("Fusion internals", "Heading2")
    if d["fusion_internals"]:
        table(_rows(d["fusion_internals"]))
    else:
        para("This variant reports no internals.")
    if ex:
        para(f"Explanations (for class {e(ex['target_label'])})", "Heading2")
        if ex.get("lesion_context"):
            lc = ex["lesion_context"]
            para(f"Lesion mask: {e(lc['mask_source'])}. Share of the heatmap mass per region:")
            table([(m, f"lesion {_pct(s['lesion'])}, context {_pct(s['context'])}, background {_pct(s['background'])}")
                   for m, s in lc["shares"].items()])
            table([(f"probability, {k.replace('_', ' ')} kept sharp", _pct(v)) for k, v in lc["confidence"].items()])
        if ex.get("note"):
            table([(w["text"], f"{w['score']:+.4f}") for w in ex["note"]["top_words"]], (5.5 * cm, 4 * cm))
        if rep.explanation is not None and rep.explanation.table:
            feats = rep.explanation.table["features"]
            story.append(image(figures.signed_bars_png([f"{r['name']} = {r['value']}" for r in feats],
                                                       [r["integrated_gradients"] for r in feats],
                                                       "Table attributions (integrated gradients)", "calibrated logit"), 11))
        if ex.get("modality_shapley"):
            ms = ex["modality_shapley"]
            story.append(image(figures.signed_bars_png(list(ms["values"]), list(ms["values"].values()),
                                                       "Modality Shapley values", "change in probability of the class"), 11))
        if rep.explanation is not None and rep.explanation.spectrum:
            story.append(image(figures.spectrum_png(rep.explanation.spectrum), 12))
        if ex.get("faithfulness"):
            para("Faithfulness", "Heading3")
            table([(k, ", ".join(f"{kk} {vv:.3f}" if isinstance(vv, float) else f"{kk} {vv}" for kk, vv in v.items()))
                   for k, v in ex["faithfulness"].items()])
        for part, why in ex.get("skipped", {}).items():
            para(f"{e(part)}: {e(why)}")
    if d["comparison"]:
        c = d["comparison"]
        para("Variant comparison", "Heading2")
        para(f"{'All variants agree' if c['agreement']['all_agree'] else 'The variants disagree'}; ensemble "
             f"disagreement {c['ensemble']['disagreement']:.3f} nats.")
        table([(col["variant"], f"{col['label']} {_pct(col['probability'])}, uncertainty {col['normalised_entropy']:.2f}"
                + (", refer" if col["refer"] else "")) for col in c["columns"]])
        story.append(image(figures.comparison_png(c["columns"], c["target_label"]), 11))
    story.append(Spacer(1, 10))
    story.append(Paragraph(f"<b>{e(d['notice'])}</b>", ss["BodyText"]))

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(1.5 * cm, 1.0 * cm, f"FusionLens {d['software']['version']} - {d['notice']}")
        canvas.drawRightString(A4[0] - 1.5 * cm, 1.0 * cm, f"page {doc.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.5 * cm,
                            bottomMargin=1.6 * cm, title=f"FusionLens report {d['case']['case_id'] or ''}",
                            author="FusionLens", subject=d["notice"])
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
