"""Attributions: the highlighted note (escaped HTML), table feature bars, spectral attribution bands
and curves, and the uploaded spectrum's preview."""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .base import _layout, _np


def note_highlight_html(note: str, words: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The note as HTML with each attributed word on a red (for the class) / blue (against) background.

    Every piece of note text is escaped with :func:`html.escape`: a note is user input and may hold
    markup such as ``<script>``. Words come from ``note_attributions`` (``start``/``end`` offsets)."""
    note = note or ""
    words = sorted(words or [], key=lambda w: int(w["start"]))
    top = max([abs(float(w["score"])) for w in words] + [1e-12])
    parts, pos = [], 0
    for wd in words:
        s, e = int(wd["start"]), int(wd["end"])
        if s < pos or e > len(note) or e <= s:
            continue
        parts.append(html.escape(note[pos:s]))
        score = float(wd["score"])
        alpha = min(1.0, abs(score) / top) * 0.75
        rgb = "214,39,40" if score > 0 else "31,119,180"
        parts.append(f'<span title="{score:+.4f}" style="background: rgba({rgb},{alpha:.2f}); border-radius: 3px; '
                     f'padding: 0 2px">{html.escape(note[s:e])}</span>')
        pos = e
    parts.append(html.escape(note[pos:]))
    body = "".join(parts).replace("\n", "<br>")
    return f'<div class="fl-note" style="line-height: 1.9; white-space: normal">{body}</div>'


def table_attribution_bars(features: Sequence[Mapping[str, Any]], method: str = "integrated_gradients",
                           title: str | None = None) -> go.Figure:
    """One horizontal bar per table feature (attribution of the explained class), labelled with the
    case's value and unit ("missing" when absent)."""
    rows = list(features)
    names = []
    for r in rows:
        v = r.get("value")
        shown = "missing" if v is None else (f"{v:g}" if isinstance(v, (int, float)) else str(v))
        unit = f" {r.get('unit')}" if r.get("unit") and v is not None else ""
        names.append(f"{r['name']} = {shown}{unit}")
    vals = [float(r.get(method, 0.0)) for r in rows]
    fig = go.Figure(go.Bar(y=names, x=vals, orientation="h", marker_color=["#d62728" if v > 0 else "#1f77b4" for v in vals],
                           text=[f"{v:+.3g}" for v in vals], textposition="outside", cliponaxis=False))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=f"{method.replace('_', ' ')} (calibrated logit)")
    return _layout(fig, title, height=120 + 32 * len(rows))


def attribution_bands(x: Sequence[float], smoothed: Sequence[float], fraction: float = 0.5) -> list[tuple[float, float]]:
    """Contiguous x ranges where |smoothed attribution| reaches ``fraction`` of its maximum."""
    s = np.abs(_np(smoothed))
    xs = _np(x)
    if not s.size or s.max() <= 0:
        return []
    on = s >= fraction * s.max()
    bands, start = [], None
    for i, flag in enumerate(on):
        if flag and start is None:
            start = i
        if (not flag or i == len(on) - 1) and start is not None:
            end = i if flag else i - 1
            bands.append((float(xs[start]), float(xs[end])))
            start = None
    return bands


def spectrum_attribution(wavelengths: Sequence[float], spectrum: Sequence[float], smoothed: Sequence[float],
                         raw: Sequence[float] | None = None, title: str | None = None,
                         x_title: str = "wavelength") -> go.Figure:
    """The spectrum (as the model saw it, on its grid) with the smoothed attribution underneath and
    the strongest attribution bands shaded."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(x=list(wavelengths), y=list(spectrum), mode="lines", name="spectrum",
                             line=dict(color="#333333")), 1, 1)
    if raw is not None:
        fig.add_trace(go.Scatter(x=list(wavelengths), y=list(raw), mode="lines", name="attribution (raw)",
                                 line=dict(color="#bbbbbb", width=1)), 2, 1)
    fig.add_trace(go.Scatter(x=list(wavelengths), y=list(smoothed), mode="lines", fill="tozeroy",
                             name="attribution (smoothed)", line=dict(color="#d62728")), 2, 1)
    for lo, hi in attribution_bands(wavelengths, smoothed):
        fig.add_vrect(x0=lo, x1=hi, fillcolor="#d62728", opacity=0.12, line_width=0, row="all", col=1)
    fig.update_xaxes(title=x_title, row=2, col=1)
    fig.update_yaxes(title="value", row=1, col=1)
    fig.update_yaxes(title="attribution", row=2, col=1)
    return _layout(fig, title, height=440)


def spectrum_preview(spectrum: np.ndarray, title: str | None = None) -> go.Figure:
    """An uploaded spectrum: one column of values (index on x) or (wavelength, value) pairs."""
    s = _np(spectrum)
    x, y = (s[:, 0], s[:, 1]) if s.ndim == 2 else (np.arange(len(s)), s)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="spectrum", line=dict(color="#333333")))
    fig.update_xaxes(title="wavelength" if s.ndim == 2 else "point")
    return _layout(fig, title, height=240)
