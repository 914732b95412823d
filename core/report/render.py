"""The case report as PDF (reportlab), self-contained HTML (plotly inlined), JSON and CSV.

Both the PDF and the HTML read in the same order. Page 1 carries what a clinician acts on: the image
with its heatmap and lesion outline, the calibrated prediction with its uncertainty in words, the
referral advice, the three strongest reasons per input in plain language, the model and its training
data, and the research-use notice. Details, the fusion internals (named for people, rounded) and the
faithfulness scores follow.

Every piece of user text (note, metadata values, case id and reference) is escaped before it enters
HTML or a reportlab paragraph (which parses markup): a note holding ``<script>`` prints as text. The PDF
prints any script: DejaVu Sans (shipped with matplotlib) for Latin, Greek, Cyrillic, Hebrew, Arabic and
symbols, reportlab's built-in CID font STSong-Light for Chinese / Japanese / Korean, and a character
neither has is written as its Unicode name. CSV cells that a spreadsheet would run as a formula
(starting with = + - @, a tab or a carriage return) get a leading apostrophe.
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

FORMATS = ("pdf", "html", "json", "csv")


@dataclass
class CaseReport:
    data: dict[str, Any]                  # the JSON report (schema.json)
    case: Case
    explanation: Any | None = None        # core.explain.Explanation, for the heatmaps and spectrum curve
    comparison: Any | None = None

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
            raise ValueError(f"unknown report format '{fmt}'; use one of: {', '.join(FORMATS)}.")
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
        return f"fusionlens-report-{safe}-{self.data['model']['variant']}.{fmt}"


def make_report(package: Package, case: Case, explanation: Any | None = None, comparison: Any | None = None,
                case_reference: str | None = None, prediction: Any | None = None) -> CaseReport:
    data = build_report(package, case, prediction, explanation, comparison, case_reference)
    return CaseReport(data, case, explanation, comparison)


# ---- shared pieces -------------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x:.0%}"


def _mask(rep: CaseReport):
    ex = rep.explanation
    if ex is not None and ex.lesion_context:
        return ex.lesion_context["mask"]
    return rep.case.mask


def _headline_image(rep: CaseReport) -> tuple[str, bytes] | None:
    """Page 1's picture: the image with the first heatmap and the lesion outline (or the plain image)."""
    case, ex = rep.case, rep.explanation
    if case.image is None:
        return None
    mask = _mask(rep)
    if ex is not None and ex.cams:
        method, cam = next(iter(ex.cams.items()))
        cap = (f"Heatmap ({method}) for {ex.target_label}: red = the image regions that raised the probability most"
               + ("; green line = lesion outline" if mask is not None else ""))
        return cap, figures.cam_png(case.image, cam, mask, "")
    return ("Input image" + (" (green: lesion outline)" if mask is not None else ""), figures.thumbnail_png(case.image, mask))


def _images(rep: CaseReport) -> list[tuple[str, bytes]]:
    """(caption, PNG) of the input image and each heatmap, for the details."""
    out: list[tuple[str, bytes]] = []
    case, ex = rep.case, rep.explanation
    if case.image is not None:
        out.append(("Input image (green: lesion outline)" if case.mask is not None else "Input image",
                    figures.thumbnail_png(case.image, case.mask)))
    if ex is not None and case.image is not None:
        mask = _mask(rep)
        shares = (ex.lesion_context or {}).get("shares", {})
        for method, cam in ex.cams.items():
            sh = shares.get(method)
            cap = f"{method} for {ex.target_label}" + (f": lesion {_pct(sh['lesion'])}, surroundings {_pct(sh['context'])}" if sh else "")
            out.append((cap, figures.cam_png(case.image, cam, mask, method)))
    return out


def _model_rows(model: Mapping[str, Any], dash: str) -> list[tuple[str, str]]:
    """The model table of both reports (``dash``: the range sign)."""
    rows = [("Package", model["name"]), ("Fusion variant", model["variant"]), ("Model sha256", model["sha256"]),
            ("Inputs", ", ".join(model["modalities"])), ("Training data", model["training_data"] or "-"),
            ("Calibration temperature", f"{model['calibration_temperature']:.2f}"),
            ("Referral threshold (uncertainty, 0-1)", f"{model['referral_threshold']:.2f}")]
    names = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "auroc": "AUROC", "ece": "calibration error (ECE)",
             "error_detection_auroc": "error detection AUROC"}
    for k, m in model["test_metrics"].items():
        ci = m.get("ci95")
        rows.append((f"Test {names.get(k, k.replace('_', ' '))}", f"{m['value']:.2f}" + (f" (95% CI {ci[0]:.2f}{dash}{ci[1]:.2f})" if ci else "")))
    return rows


def _probability_rows(pred: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, f"{v:.4f} ({v:.0%})" + (f", spread ± {pred['mc_std'].get(k, 0) * 100:.0f} points" if pred["mc_std"].get(k) is not None else ""))
            for k, v in sorted(pred["calibrated_probabilities"].items(), key=lambda kv: -kv[1])]


def _comparison_rows(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(col["variant"], f"{col['label']} {_pct(col['probability'])}, uncertainty {col['normalised_entropy']:.2f}"
             + (", refer" if col["refer"] else "")) for col in c["columns"]]


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
                                        ("prediction", "uncertainty", sm["uncertainty"]["sentence"]), ("prediction", "referral", sm["referral"])]
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


# ---- HTML ------------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;max-width:1000px;margin:24px auto;color:#222;padding:0 12px}
h1{font-size:1.45em;margin-bottom:4px}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:1em;margin:12px 0 4px}
.notice{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;border-radius:4px;font-weight:600}
.refer{background:#fde2e1;border:1px solid #d9534f;padding:8px 12px;border-radius:4px;font-weight:600}
.ok{background:#e6f4ea;border:1px solid #5cb85c;padding:8px 12px;border-radius:4px}
.page1{display:flex;gap:20px;align-items:flex-start}.page1 img{max-width:340px}.headline{font-size:1.5em;font-weight:700;margin:0 0 8px}
.reasons ul{margin:2px 0 8px 18px;padding:0}.provenance{font-size:.85em;color:#444}
table{border-collapse:collapse;font-size:.9em;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{margin:0}.imgs img{max-width:300px}figcaption{font-size:.8em;color:#555}
small{color:#666}
"""


def _table_html(rows: list[tuple[str, str]] | list[list[str]], head: tuple[str, str] | None = None) -> str:
    h = f"<tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>" if head else ""
    return "<table>" + h + "".join(f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows) + "</table>"


def _img_html(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def render_html(rep: CaseReport) -> str:
    """One self-contained HTML file: plotly.js inlined once, images as data URIs, no external requests."""
    from .. import plots

    d = rep.data
    sm, pred, model, ex = d["summary"], d["prediction"], d["model"], d["explanation"]
    parts: list[str] = []
    figs: list[Any] = []
    e = html.escape
    parts.append(f"<h1>FusionLens case report: {e(d['case']['case_id'] or 'unnamed case')}</h1>")
    parts.append(f"<p class='notice'>{e(d['notice'])}</p>")
    # ---- page 1: what a clinician acts on
    pic = _headline_image(rep)
    left = f"<figure>{_img_html(pic[1], pic[0])}<figcaption>{e(pic[0])}</figcaption></figure>" if pic else ""
    right = (f"<div><p class='headline'>{e(sm['headline'])}</p><p>{e(sm['uncertainty']['sentence'])}</p>"
             f"<p class='{'refer' if sm['refer'] else 'ok'}'>{e(sm['referral'])}</p></div>")
    parts.append(f"<section class='page1'>{left}{right}</section>")
    parts.append(f"<h2>Why: the strongest reasons per input (for {e(sm['label'])})</h2><div class='reasons'>")
    for r in sm["reasons"]:
        parts.append(f"<h3>{e(r['title'])}</h3><ul>" + "".join(f"<li>{e(x)}</li>" for x in r["reasons"]) + "</ul>")
    parts.append("</div><h2>Model and training data</h2><div class='provenance'>"
                 + "".join(f"<p>{e(x)}</p>" for x in sm["provenance"]) + "</div>")
    # ---- details
    parts.append("<h2>Details</h2>")
    ref = d["case"]["case_reference"]
    parts.append(_table_html([("Case id", d["case"]["case_id"] or "-"), ("Case reference", ref or "-"),
                              ("Generated", d["generated_at"]), ("Software", f"FusionLens {d['software']['version']}")]))
    parts.append("<h3>Calibrated probability of every class</h3>")
    parts.append(_table_html(_probability_rows(pred), ("class", "probability (± spread over repeated runs)")))
    figs.append(plots.probability_bars(list(pred["calibrated_probabilities"]), list(pred["calibrated_probabilities"].values()),
                                       list(pred["mc_std"].values())))
    parts.append("{fig0}")
    parts.append(_table_html(d["readable"]["uncertainty"], ("uncertainty measure", "value")))
    for w in pred["warnings"]:
        parts.append(f"<p><small>{e(w)}</small></p>")
    parts.append("<h3>Inputs and heatmaps</h3>")
    imgs = _images(rep)
    if imgs:
        parts.append("<div class='imgs'>" + "".join(f"<figure>{_img_html(b, c)}<figcaption>{e(c)}</figcaption></figure>"
                                                    for c, b in imgs) + "</div>")
    inp = d["case"]["inputs"]
    if inp.get("note"):
        words = rep.explanation.note["words"] if rep.explanation is not None and rep.explanation.note else None
        parts.append("<p><b>Clinical note</b> (red: words for the explained class, blue: against)</p>")
        parts.append(plots.note_highlight_html(rep.case.note or "", words))
    if inp.get("metadata"):
        parts.append(_table_html([(k, "" if v is None else str(v)) for k, v in inp["metadata"].items()], ("detail", "value")))
    if inp.get("spectrum"):
        s = inp["spectrum"]
        parts.append(f"<p>Spectrum: {s['points']} points, {s['x_min']:.0f}–{s['x_max']:.0f}.</p>")
    if ex:
        if ex.get("modality_shapley"):
            figs.append(plots.shapley_bars(ex["modality_shapley"]))
            parts.append("{fig%d}" % (len(figs) - 1))
        if rep.explanation is not None and rep.explanation.table:
            figs.append(plots.table_attribution_bars(rep.explanation.table["features"], title="Patient details: attributions"))
            parts.append("{fig%d}" % (len(figs) - 1))
        if rep.explanation is not None and rep.explanation.spectrum:
            sp = rep.explanation.spectrum
            figs.append(plots.spectrum_attribution(sp["wavelengths"], sp["spectrum"], sp["smoothed"],
                                                   title="Spectrum attribution", x_title="wavenumber (cm⁻¹)"))
            parts.append("{fig%d}" % (len(figs) - 1))
        for part, why in ex.get("skipped", {}).items():
            parts.append(f"<p><small>{e(part)}: {e(why)}</small></p>")
    # ---- internals, faithfulness, comparison, model
    parts.append("<h2>How the fusion weighed the inputs</h2>")
    parts.append(_table_html(d["readable"]["fusion_internals"], ("internal", "value")) if d["readable"]["fusion_internals"]
                 else "<p>This variant reports no internals.</p>")
    if d["readable"]["mechanisms"]:
        parts.append("<h3>What these internals can be trusted for</h3><ul>" + "".join(
            f"<li><b>{e(m['label'])}</b>{(' (' + e(m['value']) + ')') if m['value'] else ''}: {e(m['sentence'])}</li>"
            for m in d["readable"]["mechanisms"]) + "</ul>")
    if d["readable"]["faithfulness"]:
        parts.append("<h2>Faithfulness of the explanations</h2>")
        parts.append(_table_html(d["readable"]["faithfulness"], ("explanation", "scores")))
    if d["comparison"]:
        c = d["comparison"]
        parts.append("<h2>Variant comparison</h2>")
        parts.append(f"<p>{'All variants agree' if c['agreement']['all_agree'] else 'The variants disagree'}: "
                     f"votes {e(', '.join(f'{k} {v}' for k, v in c['agreement']['votes'].items()))}; "
                     f"ensemble disagreement {c['ensemble']['disagreement']:.2f} nats.</p>")
        parts.append(_table_html(_comparison_rows(c), ("variant", "prediction")))
        if c["explanation_agreement"]:
            from .data import readable_rows

            parts.append(_table_html(readable_rows(c["explanation_agreement"]), ("explanation agreement (mean over pairs)", "value")))
    parts.append("<h2>Model</h2>")
    parts.append(_table_html(_model_rows(model, "–")))
    parts.append(f"<p class='notice'>{e(d['notice'])}</p>")
    body = "\n".join(parts)
    for i, f in enumerate(figs):
        body = body.replace("{fig%d}" % i, f.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}), 1)
    title = e(f"FusionLens report {d['case']['case_id'] or ''}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


# ---- PDF ---------------------------------------------------------------------------------------------------------------

_FONTS: dict[str, Any] = {}
BODY_FONT, BOLD_FONT, CJK_FONT = "FL-DejaVuSans", "FL-DejaVuSans-Bold", "STSong-Light"


def _register_fonts() -> Any:
    """DejaVu Sans from matplotlib's package data (no system font needed) and reportlab's CID font
    STSong-Light (needs no font file). Returns DejaVu's character map."""
    if "cmap" not in _FONTS:
        import os

        import matplotlib
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.cidfonts import UnicodeCIDFont
        from reportlab.pdfbase.ttfonts import TTFont

        ttf = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
        body = TTFont(BODY_FONT, os.path.join(ttf, "DejaVuSans.ttf"))
        pdfmetrics.registerFont(body)
        pdfmetrics.registerFont(TTFont(BOLD_FONT, os.path.join(ttf, "DejaVuSans-Bold.ttf")))
        pdfmetrics.registerFontFamily(BODY_FONT, normal=BODY_FONT, bold=BOLD_FONT, italic=BODY_FONT, boldItalic=BOLD_FONT)
        pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
        _FONTS["cmap"] = set(body.face.charToGlyph)
    return _FONTS["cmap"]


def _cjk(ch: str) -> bool:
    import unicodedata

    return unicodedata.east_asian_width(ch) in ("W", "F") and ord(ch) < 0x10000


def pdf_text(text: str) -> str:
    """User or report text -> reportlab paragraph markup: escaped, CJK runs in STSong-Light, characters
    neither font has written as [their Unicode name]."""
    import unicodedata

    cmap = _register_fonts()
    out: list[str] = []
    run, run_font = [], BODY_FONT

    def flush():
        if run:
            chunk = html.escape("".join(run), quote=False)
            out.append(chunk if run_font == BODY_FONT else f'<font name="{run_font}">{chunk}</font>')
            run.clear()

    for ch in text:
        if ch == "\n":
            font, piece = run_font, " "
        elif ord(ch) in cmap:
            font, piece = BODY_FONT, ch
        elif _cjk(ch):
            font, piece = CJK_FONT, ch
        elif unicodedata.category(ch) in ("Mn", "Me", "Cf") or ch in "\ufe0f\ufe0e":
            continue                                        # combining marks / joiners without a glyph
        else:
            font, piece = BODY_FONT, f"[{unicodedata.name(ch, 'U+%04X' % ord(ch)).lower()}]"
        if font != run_font:
            flush()
            run_font = font
        run.append(piece)
    flush()
    return "".join(out)


def render_pdf(rep: CaseReport) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Image as RLImage
    from reportlab.platypus import CondPageBreak, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    _register_fonts()
    d = rep.data
    sm, pred, model, ex = d["summary"], d["prediction"], d["model"], d["explanation"]
    base = getSampleStyleSheet()
    body = base["BodyText"].clone("fl-body", fontName=BODY_FONT, fontSize=9, leading=11.5)
    st = {"body": body, "small": body.clone("fl-small", fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444")),
          "title": base["Title"].clone("fl-title", fontName=BOLD_FONT, fontSize=15, leading=18, spaceAfter=4),
          "h2": base["Heading2"].clone("fl-h2", fontName=BOLD_FONT, fontSize=11.5, leading=14, spaceBefore=8, spaceAfter=3),
          "h3": base["Heading3"].clone("fl-h3", fontName=BOLD_FONT, fontSize=9.5, leading=12, spaceBefore=4, spaceAfter=1),
          "headline": body.clone("fl-headline", fontName=BOLD_FONT, fontSize=14, leading=17, spaceAfter=4),
          "bullet": body.clone("fl-bullet", leftIndent=10, bulletIndent=2, spaceAfter=0)}
    story: list[Any] = []

    def add(x: Any) -> None:
        story.extend(x if isinstance(x, list) else [x])

    def para(text: str, style: str = "body", bullet: str | None = None) -> Any:
        p = Paragraph(pdf_text(text), st[style], bulletText=bullet)
        return [CondPageBreak(4 * cm), p] if style == "h2" and story else p

    def boxed(text: str, fill: str, edge: str, style: str = "body") -> Table:
        t = Table([[para(text, style)]], colWidths=[None])
        t.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(fill)),
                               ("BOX", (0, 0), (-1, -1), 0.6, colors.HexColor(edge)),
                               ("LEFTPADDING", (0, 0), (-1, -1), 6), ("RIGHTPADDING", (0, 0), (-1, -1), 6)]))
        return t

    def table(rows, widths=(6 * cm, 12 * cm)) -> None:
        cells = [[para(str(a)), Paragraph(pdf_text(str(b)), st["small"] if "sha256" in str(a) else st["body"])] for a, b in rows]
        t = Table(cells, colWidths=widths)
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        story.append(t)
        story.append(Spacer(1, 5))

    def image(png: bytes, width_cm: float, max_height_cm: float | None = None) -> RLImage:
        from PIL import Image as PILImage

        w, h = PILImage.open(io.BytesIO(png)).size
        width = width_cm * cm
        if max_height_cm is not None and width * h / w > max_height_cm * cm:
            width = max_height_cm * cm * w / h
        return RLImage(io.BytesIO(png), width=width, height=width * h / w)

    # ---- page 1: what a clinician acts on
    add(para(f"FusionLens case report: {d['case']['case_id'] or 'unnamed case'}", "title"))
    story.append(boxed(d["notice"], "#fff3cd", "#e0c36c"))
    story.append(Spacer(1, 6))
    right = [para(sm["headline"], "headline"), para(sm["uncertainty"]["sentence"]), Spacer(1, 5),
             boxed(sm["referral"], "#fde2e1" if sm["refer"] else "#e6f4ea", "#d9534f" if sm["refer"] else "#5cb85c")]
    pic = _headline_image(rep)
    if pic:
        left = [image(pic[1], 7.0, 7.0), para(pic[0], "small")]
        top = Table([[left, right]], colWidths=[7.4 * cm, 10.6 * cm])
        top.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
        story.append(top)
    else:
        story.extend(right)
    add(para(f"Why: the strongest reasons per input (for {sm['label']})", "h2"))
    for r in sm["reasons"]:
        story.append(KeepTogether([para(r["title"], "h3")] + [para(x, "bullet", "•") for x in r["reasons"]]))
    add(para("Model and training data", "h2"))
    for x in sm["provenance"]:
        add(para(x, "small"))
    story.append(PageBreak())
    # ---- details
    add(para("Details", "h2"))
    table([("Case id", d["case"]["case_id"] or "-"), ("Case reference", d["case"]["case_reference"] or "-"),
           ("Generated", d["generated_at"]), ("Software", f"FusionLens {d['software']['version']}")])
    add(para("Calibrated probability of every class (± spread over repeated runs)", "h3"))
    table(_probability_rows(pred), (6 * cm, 5 * cm))
    story.append(image(figures.probability_png(pred["calibrated_probabilities"], pred["mc_std"]), 10))
    table(d["readable"]["uncertainty"], (9 * cm, 3 * cm))
    for w in pred["warnings"]:
        add(para(w))
    add(para("Inputs and heatmaps", "h3"))
    imgs = _images(rep)
    if imgs:
        grid = []
        for i in range(0, len(imgs), 3):
            grid += [[image(b, 5.2) for _, b in imgs[i:i + 3]], [para(c, "small") for c, _ in imgs[i:i + 3]]]
        story.append(Table(grid))
    inp = d["case"]["inputs"]
    if inp.get("note"):
        text = inp["note"]["text"]
        add(para("Clinical note: " + text[:3000] + (" [...]" if len(text) > 3000 else "")))
    if inp.get("metadata"):
        table([(k, "" if v is None else str(v)) for k, v in inp["metadata"].items()])
    if inp.get("spectrum"):
        s = inp["spectrum"]
        add(para(f"Spectrum: {s['points']} points, {s['x_min']:.0f}-{s['x_max']:.0f}."))
    if ex:
        if ex.get("modality_shapley"):
            ms = ex["modality_shapley"]
            story.append(image(figures.signed_bars_png(list(ms["values"]), list(ms["values"].values()),
                                                       "What each input contributed (modality Shapley values)",
                                                       "change in the probability of the class"), 10))
        if rep.explanation is not None and rep.explanation.table:
            feats = rep.explanation.table["features"]
            story.append(image(figures.signed_bars_png([f"{r['name']} = {r['value']}" for r in feats],
                                                       [r["integrated_gradients"] for r in feats],
                                                       "Patient details (integrated gradients)", "push on the class's score"), 10))
        if rep.explanation is not None and rep.explanation.spectrum:
            story.append(image(figures.spectrum_png(rep.explanation.spectrum), 11))
        for part, why in ex.get("skipped", {}).items():
            add(para(f"{part}: {why}", "small"))
    # ---- internals, faithfulness, comparison, model
    add(para("How the fusion weighed the inputs", "h2"))
    if d["readable"]["fusion_internals"]:
        table(d["readable"]["fusion_internals"])
    else:
        add(para("This variant reports no internals."))
    for m in d["readable"]["mechanisms"]:
        add(para(f"{m['label']}{' (' + m['value'] + ')' if m['value'] else ''}: {m['sentence']}", "bullet", "•"))
    if d["readable"]["faithfulness"]:
        add(para("Faithfulness of the explanations", "h2"))
        table(d["readable"]["faithfulness"])
    if d["comparison"]:
        c = d["comparison"]
        add(para("Variant comparison", "h2"))
        add(para(f"{'All variants agree' if c['agreement']['all_agree'] else 'The variants disagree'}; ensemble "
                          f"disagreement {c['ensemble']['disagreement']:.2f} nats."))
        table(_comparison_rows(c))
        story.append(image(figures.comparison_png(c["columns"], c["target_label"]), 10))
    add(para("Model", "h2"))
    table(_model_rows(model, "-"))
    story.append(Spacer(1, 8))
    story.append(boxed(d["notice"], "#fff3cd", "#e0c36c"))

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont(BODY_FONT, 7)
        canvas.drawString(1.5 * cm, 1.0 * cm, f"FusionLens {d['software']['version']} - {d['notice']}")
        canvas.drawRightString(A4[0] - 1.5 * cm, 1.0 * cm, f"page {doc.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.3 * cm,
                            bottomMargin=1.6 * cm, title=f"FusionLens report {d['case']['case_id'] or ''}",
                            author="FusionLens", subject=d["notice"])
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
