"""The report's sections (``sections.py``) as an A4 PDF (reportlab).

The PDF prints any script: DejaVu Sans (shipped with matplotlib) for Latin, Greek, Cyrillic, Hebrew, Arabic
and symbols, reportlab's built-in CID font STSong-Light for Chinese / Japanese / Korean, and a character
neither has is written as its Unicode name. Every text is escaped before it enters a reportlab paragraph
(which parses markup): a note holding ``<script>`` prints as text.
"""
from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING, Any

from .sections import Bullets, Figure, Heading, Images, Lead, Note, Section, Table, Text

if TYPE_CHECKING:
    from .render import CaseReport

_FONTS: dict[str, Any] = {}
BODY_FONT, BOLD_FONT, CJK_FONT = "FL-DejaVuSans", "FL-DejaVuSans-Bold", "STSong-Light"
NOTE_CHARS = 3000                          # the PDF prints this much of a note
BOXES = {"notice": ("#fff3cd", "#e0c36c"), "refer": ("#fde2e1", "#d9534f"), "ok": ("#e6f4ea", "#5cb85c")}


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


class _Story:
    """Turns sections into reportlab flowables."""

    def __init__(self) -> None:
        from reportlab.lib import colors
        from reportlab.lib.styles import getSampleStyleSheet

        _register_fonts()
        base = getSampleStyleSheet()
        body = base["BodyText"].clone("fl-body", fontName=BODY_FONT, fontSize=9, leading=11.5)
        self.colors = colors
        self.st = {"body": body, "small": body.clone("fl-small", fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444")),
                   "h1": base["Title"].clone("fl-title", fontName=BOLD_FONT, fontSize=15, leading=18, spaceAfter=4),
                   "h2": base["Heading2"].clone("fl-h2", fontName=BOLD_FONT, fontSize=11.5, leading=14, spaceBefore=8, spaceAfter=3),
                   "h3": base["Heading3"].clone("fl-h3", fontName=BOLD_FONT, fontSize=9.5, leading=12, spaceBefore=4, spaceAfter=1),
                   "headline": body.clone("fl-headline", fontName=BOLD_FONT, fontSize=14, leading=17, spaceAfter=4),
                   "bullet": body.clone("fl-bullet", leftIndent=10, bulletIndent=2, spaceAfter=0)}
        self.story: list[Any] = []

    def para(self, text: str, style: str = "body", bullet: str | None = None, lead: str = "", bold: bool = False) -> Any:
        """``lead``: printed in bold before ``text``; ``bold``: the whole paragraph in bold."""
        from reportlab.platypus import Paragraph

        markup = (f"<b>{pdf_text(lead)}</b>" if lead else "") + pdf_text(text)
        return Paragraph(f"<b>{markup}</b>" if bold else markup, self.st[style], bulletText=bullet)

    def text(self, t: Text) -> list[Any]:
        from reportlab.platypus import Spacer, Table as RLTable, TableStyle

        if t.style not in BOXES:
            return [self.para(t.text, t.style)]
        fill, edge = BOXES[t.style]
        box = RLTable([[self.para(t.text)]], colWidths=[None])
        box.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), self.colors.HexColor(fill)),
                                 ("BOX", (0, 0), (-1, -1), 0.6, self.colors.HexColor(edge)),
                                 ("LEFTPADDING", (0, 0), (-1, -1), 6), ("RIGHTPADDING", (0, 0), (-1, -1), 6)]))
        return [Spacer(1, 6), box, Spacer(1, 6)]

    def image(self, png: bytes, width_cm: float, max_height_cm: float | None = None) -> Any:
        from PIL import Image as PILImage
        from reportlab.lib.units import cm
        from reportlab.platypus import Image as RLImage

        w, h = PILImage.open(io.BytesIO(png)).size
        width = width_cm * cm
        if max_height_cm is not None and width * h / w > max_height_cm * cm:
            width = max_height_cm * cm * w / h
        return RLImage(io.BytesIO(png), width=width, height=width * h / w)

    def table(self, t: Table) -> list[Any]:
        from reportlab.lib.units import cm
        from reportlab.platypus import Spacer, Table as RLTable, TableStyle

        cells = [[self.para(str(a)), self.para(str(b), "small" if "sha256" in str(a) else "body")] for a, b in t.rows]
        if t.head:
            cells.insert(0, [self.para(t.head[0], bold=True), self.para(t.head[1], bold=True)])
        tab = RLTable(cells, colWidths=[w * cm for w in t.widths])
        tab.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, self.colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return [tab, Spacer(1, 5)]

    def block(self, b: Any) -> list[Any]:
        from reportlab.lib.units import cm
        from reportlab.platypus import KeepTogether, Table as RLTable, TableStyle

        if isinstance(b, Text):
            return self.text(b)
        if isinstance(b, Heading):
            return [self.para(b.text, "h3")]
        if isinstance(b, Bullets):
            items = [self.para(text, "bullet", "•", lead) for lead, text in b.items]
            return [KeepTogether([self.para(b.title, "h3")] + items)] if b.title else items
        if isinstance(b, Table):
            return self.table(b)
        if isinstance(b, Figure):
            return [self.image(b.png(), b.width_cm)]
        if isinstance(b, Images):
            grid = []
            for i in range(0, len(b.items), 3):
                row = b.items[i:i + 3]
                grid += [[self.image(png, 5.2) for _, png in row], [self.para(c, "small") for c, _ in row]]
            return [RLTable(grid)]
        if isinstance(b, Note):
            cut = b.text[:NOTE_CHARS] + (" [...]" if len(b.text) > NOTE_CHARS else "")
            return [self.para("Clinical note: " + cut)]
        if isinstance(b, Lead):
            right = [f for t in b.texts for f in self.text(t)]
            if not b.picture:
                return right
            left = [self.image(b.picture[1], 7.0, 7.0), self.para(b.picture[0], "small")]
            top = RLTable([[left, right]], colWidths=[7.4 * cm, 10.6 * cm])
            top.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
            return [top]
        raise TypeError(f"unknown report block {type(b).__name__}")

    def section(self, s: Section) -> None:
        from reportlab.lib.units import cm
        from reportlab.platypus import CondPageBreak, PageBreak

        if s.title:
            if s.level > 1 and self.story:
                self.story.append(CondPageBreak(4 * cm))    # no heading alone at the foot of a page
            self.story.append(self.para(s.title, f"h{s.level}"))
        for b in s.blocks:
            self.story.extend(self.block(b))
        if s.new_page_after:
            self.story.append(PageBreak())


def render_pdf(rep: CaseReport) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import SimpleDocTemplate

    d = rep.data
    story = _Story()
    for s in rep.sections():
        story.section(s)

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
    doc.build(story.story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
