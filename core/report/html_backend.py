"""The report's sections (``sections.py``) as one self-contained HTML file: plotly.js inlined once, images
as data URIs, no external requests. Every text is escaped: a note holding ``<script>`` prints as text."""
from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

from .sections import Bullets, Figure, Heading, Images, Lead, Note, Section, Table, Text

if TYPE_CHECKING:
    from .render import CaseReport

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;
max-width:1000px;margin:24px auto;color:#222;padding:0 12px}
h1{font-size:1.45em;margin-bottom:4px}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:1em;margin:12px 0 4px}
.notice{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;border-radius:4px;font-weight:600}
.refer{background:#fde2e1;border:1px solid #d9534f;padding:8px 12px;border-radius:4px;font-weight:600}
.ok{background:#e6f4ea;border:1px solid #5cb85c;padding:8px 12px;border-radius:4px}
.page1{display:flex;gap:20px;align-items:flex-start}.page1 img{max-width:340px}.headline{font-size:1.5em;font-weight:700;margin:0 0 8px}
ul{margin:2px 0 8px 18px;padding:0}
table{border-collapse:collapse;font-size:.9em;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{margin:0}.imgs img{max-width:300px}figcaption{font-size:.8em;color:#555}
small{color:#666}
"""

e = html.escape


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _figure(caption: str, png: bytes) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{e(caption)}</figcaption></figure>"


def _text(t: Text) -> str:
    if t.style == "small":
        return f"<p><small>{e(t.text)}</small></p>"
    cls = "" if t.style == "body" else f" class='{t.style}'"
    return f"<p{cls}>{e(t.text)}</p>"


def _table(t: Table) -> str:
    h = f"<tr><th>{e(t.head[0])}</th><th>{e(t.head[1])}</th></tr>" if t.head else ""
    return "<table>" + h + "".join(f"<tr><td>{e(str(a))}</td><td>{e(str(b))}</td></tr>" for a, b in t.rows) + "</table>"


def _block(b: Any, figs: list[Figure]) -> str:
    from .. import plots

    if isinstance(b, Text):
        return _text(b)
    if isinstance(b, Heading):
        return f"<h3>{e(b.text)}</h3>"
    if isinstance(b, Bullets):
        items = "".join(f"<li>{'<b>' + e(lead) + '</b>' if lead else ''}{e(text)}</li>" for lead, text in b.items)
        return (f"<h3>{e(b.title)}</h3>" if b.title else "") + f"<ul>{items}</ul>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):            # plotly.js inlined with the first figure only
        figs.append(b)
        return b.plotly().to_html(full_html=False, include_plotlyjs=len(figs) == 1, config={"displaylogo": False})
    if isinstance(b, Images):
        return "<div class='imgs'>" + "".join(_figure(c, png) for c, png in b.items) + "</div>"
    if isinstance(b, Note):
        return ("<p><b>Clinical note</b> (red: words for the explained class, blue: against)</p>"
                + plots.note_highlight_html(b.text, b.words))
    if isinstance(b, Lead):
        left = _figure(*b.picture) if b.picture else ""
        return f"<section class='page1'>{left}<div>{''.join(_text(t) for t in b.texts)}</div></section>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def _section(s: Section, figs: list[Figure]) -> str:
    head = f"<h{s.level}>{e(s.title)}</h{s.level}>" if s.title else ""
    return "\n".join([head] + [_block(b, figs) for b in s.blocks])


def render_html(rep: CaseReport) -> str:
    """One self-contained HTML file: plotly.js inlined once, images as data URIs, no external requests."""
    figs: list[Figure] = []
    body = "\n".join(_section(s, figs) for s in rep.sections())
    title = e(f"FusionLens report {rep.data['case']['case_id'] or ''}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")
