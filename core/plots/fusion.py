"""Fusion internals: modality and weight bars, gate heatmaps, attention over labelled key tokens, patch
attention on the image, modality Shapley values and the with / without / only-one counterfactuals."""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from .base import LEVEL_NAMES, _colour, _display_image, _image_figure, _layout, _np


def modality_bars(values: Mapping[str, float], title: str | None = None, axis_title: str = "share",
                  percent: bool = True, reference: float | None = None) -> go.Figure:
    """One bar per modality (gates, modality weights, contribution norms, Shapley values, ...)."""
    names = list(values)
    v = [float(values[n]) for n in names]
    fig = go.Figure(go.Bar(x=names, y=v, marker_color=[_colour(n) for n in names],
                           text=[f"{x:.1%}" if percent else f"{x:.3g}" for x in v], textposition="outside"))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dot", line_color="#7f7f7f")
    fig.update_yaxes(title=axis_title, tickformat=".0%" if percent else None)
    return _layout(fig, title)


def weight_bars(names: Sequence[str], weights: Sequence[float], title: str | None = None,
                axis_title: str = "weight") -> go.Figure:
    """Bars for global weights (hierarchical level weights, MMTM scale weights, rank weights)."""
    w = _np(weights).ravel()
    fig = go.Figure(go.Bar(x=list(names), y=w, text=[f"{x:.3f}" for x in w], textposition="outside",
                           marker_color="#8c564b"))
    fig.update_yaxes(title=axis_title)
    return _layout(fig, title)


def gates_per_dim_heatmap(modalities: Sequence[str], gates_per_dim: np.ndarray,
                          title: str | None = "Gate of every fused dimension") -> go.Figure:
    """[M, d] per-dimension gates: one row per modality."""
    g = _np(gates_per_dim)
    fig = go.Figure(go.Heatmap(z=g, y=list(modalities), x=list(range(g.shape[1])), colorscale="Viridis",
                               colorbar=dict(title="gate")))
    fig.update_xaxes(title="fused dimension")
    return _layout(fig, title, height=140 + 40 * len(modalities))


def level_gates_heatmap(modalities: Sequence[str], level_gates: np.ndarray,
                        title: str | None = "Gates per level") -> go.Figure:
    """[3, M] mean effective gate of each modality at the early / middle / last level."""
    g = _np(level_gates)
    fig = go.Figure(go.Heatmap(z=g, x=list(modalities), y=list(LEVEL_NAMES[:g.shape[0]]), colorscale="Viridis",
                               zmin=0, zmax=1, text=np.round(g, 2), texttemplate="%{text}", colorbar=dict(title="gate")))
    return _layout(fig, title, height=260)


def patch_grid(n: int) -> tuple[int, int]:
    """Rows x columns of ``n`` row-major image patch tokens (square when possible)."""
    r = int(round(math.sqrt(n)))
    return (r, r) if r * r == n else (1, n)


def key_labels(spans: Mapping[str, Sequence[int]], n_keys: int, note_tokens: Sequence[str] | None = None,
               feature_names: Sequence[str] | None = None, wavelengths: Sequence[float] | None = None,
               missing: Sequence[str] = ()) -> list[str]:
    """A readable label for every key column: image patches as (row, col), note word pieces, table
    feature names, spectral segments as wavelength ranges; a modality in ``missing`` is represented by
    the model's learned "missing" token."""
    labels = [f"key {i}" for i in range(n_keys)]
    for m, (start, end) in spans.items():
        n = int(end) - int(start)
        if m in missing:
            names = [f"{m} (missing)"] + [f"{m} (missing) {i}" for i in range(1, n)]
        elif m == "image":
            rows, cols = patch_grid(n)
            names = [f"image r{i // cols} c{i % cols}" for i in range(n)]
        elif m == "note" and note_tokens is not None and len(note_tokens) == n:
            names = [f"note '{t}'" for t in note_tokens]
        elif m == "metadata" and feature_names is not None and len(feature_names) == n:
            names = [f"table {f}" for f in feature_names]
        elif m == "spectrum" and wavelengths is not None and len(wavelengths) > 1 and n > 1:
            w = np.asarray(wavelengths, dtype=float)
            edges = np.linspace(w[0], w[-1], n + 1)
            names = [f"spectrum {edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(n)]
        else:
            names = [f"{m} {i}" for i in range(n)]
        for i, name in enumerate(names):
            if 0 <= start + i < n_keys:
                labels[start + i] = name
    # column labels must be unique for a categorical axis
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def attention_heatmap(attention: np.ndarray, spans: Mapping[str, Sequence[int]], key_names: Sequence[str] | None = None,
                      query_names: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """[Lq, Lk] attention of one query modality over the key tokens; a labelled box per key span
    (which columns are image patches, note word pieces, table features, spectral segments)."""
    a = _np(attention)
    if a.ndim == 1:
        a = a[None]
    lq, lk = a.shape
    x = list(range(lk))
    y = list(range(lq))
    hover_x = list(key_names) if key_names is not None and len(key_names) == lk else [str(i) for i in x]
    hover_y = list(query_names) if query_names is not None and len(query_names) == lq else [str(i) for i in y]
    custom = np.array([[f"{hover_y[i]} → {hover_x[j]}" for j in range(lk)] for i in range(lq)])
    fig = go.Figure(go.Heatmap(z=a, x=x, y=y, colorscale="Blues", customdata=custom, colorbar=dict(title="attention"),
                               hovertemplate="%{customdata}<br>attention %{z:.3f}<extra></extra>"))
    for m, (start, end) in spans.items():
        fig.add_shape(type="rect", x0=start - 0.5, x1=end - 0.5, y0=-0.5, y1=lq - 0.5, line=dict(color=_colour(m), width=2),
                      fillcolor="rgba(0,0,0,0)", name=m)
        fig.add_annotation(x=(start + end - 1) / 2, y=1.0, yref="paper", yanchor="bottom", text=f"<b>{html.escape(m)}</b>",
                           showarrow=False, font=dict(color=_colour(m)))
    if key_names is not None and len(key_names) == lk and lk <= 80:
        fig.update_xaxes(tickmode="array", tickvals=x, ticktext=[html.escape(str(k)) for k in key_names], tickangle=-60)
    else:
        fig.update_xaxes(title="key token")
    if query_names is not None and len(query_names) == lq and lq <= 60:
        fig.update_yaxes(tickmode="array", tickvals=y, ticktext=[html.escape(str(q)) for q in query_names])
    else:
        fig.update_yaxes(title="query token")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(300, min(900, 120 + 16 * lq)), margin=dict(l=10, r=10, t=60, b=10))



def patch_attention_overlay(image: Image.Image | np.ndarray, weights: Sequence[float], opacity: float = 0.5,
                            title: str | None = "Attention on image patches") -> go.Figure:
    """Attention over the image's patch tokens (row-major) drawn on the image, with the patch grid."""
    rgb = _display_image(image)
    h, w = rgb.shape[:2]
    wts = _np(weights).ravel()
    rows, cols = patch_grid(len(wts))
    grid = wts.reshape(rows, cols)
    fig = _image_figure(rgb, title)
    # cell centres in image pixels: one heatmap cell per patch
    xs = (np.arange(cols) + 0.5) * w / cols - 0.5
    ys = (np.arange(rows) + 0.5) * h / rows - 0.5
    fig.add_trace(go.Heatmap(z=grid, x=xs, y=ys, opacity=opacity, colorscale="Hot", name="attention",
                             colorbar=dict(title="attention"), hovertemplate="attention %{z:.3f}<extra></extra>"))
    for i in range(1, cols):
        fig.add_shape(type="line", x0=i * w / cols - 0.5, x1=i * w / cols - 0.5, y0=-0.5, y1=h - 0.5,
                      line=dict(color="white", width=1))
    for i in range(1, rows):
        fig.add_shape(type="line", y0=i * h / rows - 0.5, y1=i * h / rows - 0.5, x0=-0.5, x1=w - 0.5,
                      line=dict(color="white", width=1))
    return fig


def shapley_bars(report: Mapping[str, Any], title: str | None = "Modality Shapley values") -> go.Figure:
    """Exact Shapley values of the calibrated target probability per present modality."""
    values = report.get("values", {})
    fig = modality_bars(values, title, axis_title="Δ probability of the explained class", percent=False, reference=0.0)
    fig.update_traces(text=[f"{v:+.3f}" for v in values.values()])
    return fig


def counterfactual_bars(report: Mapping[str, Any], title: str | None = "All inputs, without one, only one") -> go.Figure:
    """The explained class's probability with every modality, without each one and with only each one."""
    mods = list(report.get("without", {}))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=mods, y=[report["without"][m] for m in mods], name="without this modality",
                         marker_color="#ff7f0e"))
    fig.add_trace(go.Bar(x=mods, y=[report.get("only", {}).get(m, np.nan) for m in mods], name="only this modality",
                         marker_color="#1f77b4"))
    fig.add_hline(y=float(report["full"]), line_dash="dash", line_color="#2ca02c",
                  annotation_text=f"all inputs {report['full']:.1%}")
    fig.add_hline(y=float(report["none"]), line_dash="dot", line_color="#7f7f7f",
                  annotation_text=f"no inputs {report['none']:.1%}", annotation_position="bottom right")
    fig.update_yaxes(range=[0, 1.05], title="probability of the explained class", tickformat=".0%")
    return _layout(fig, title, barmode="group")
