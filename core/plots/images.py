"""Image explanations: heatmap overlays with the lesion outline (plotly and PNG), heatmap mass per region,
the lesion-only / context-only confidence check, paired heatmaps and heatmap stability."""
from __future__ import annotations

import io
from typing import Any, Mapping

import cv2
import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from .base import REGION_COLOURS, _display_image, _image_figure, _layout, _np, _resize_map


def mask_outline_shapes(mask: np.ndarray, shape: tuple[int, int], colour: str = "#00ff00",
                        name: str = "lesion outline") -> list[dict[str, Any]]:
    """Plotly path shapes tracing the outer contours of a boolean mask resized to ``shape`` (H, W)."""
    m = np.asarray(mask).astype(np.uint8)
    if m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shapes = []
    for c in contours:
        pts = c.reshape(-1, 2)
        if len(pts) < 3:
            continue
        path = "M " + " L ".join(f"{x},{y}" for x, y in pts) + " Z"
        shapes.append(dict(type="path", path=path, line=dict(color=colour, width=2), name=name))
    return shapes


def cam_overlay(image: Image.Image | np.ndarray, cam: np.ndarray, opacity: float = 0.5, mask: np.ndarray | None = None,
                ring: np.ndarray | None = None, title: str | None = None, colorscale: str = "Jet") -> go.Figure:
    """The image with a [0, 1] heatmap on top (stretched to the image, as the model squashes it), and
    the lesion mask (and context ring) outlined when given."""
    rgb = _display_image(image)
    h, w = rgb.shape[:2]
    fig = _image_figure(rgb, title)
    fig.add_trace(go.Heatmap(z=_resize_map(cam, (h, w)), opacity=opacity, colorscale=colorscale, zmin=0, zmax=1,
                             name="heatmap", colorbar=dict(title="relevance"), hovertemplate="%{z:.2f}<extra></extra>"))
    for m, colour, name in ((mask, "#00ff00", "lesion outline"), (ring, "#ffffff", "context ring outline")):
        if m is not None:
            for s in mask_outline_shapes(m, (h, w), colour, name):
                if name.startswith("context"):
                    s["line"]["dash"] = "dot"
                fig.add_shape(**s)
    return fig


def region_shares(shares: Mapping[str, Any], title: str | None = "Heatmap mass vs area") -> go.Figure:
    """Lesion / context / background: share of the heatmap's mass next to the share of the area
    (mass above area = the map concentrates there)."""
    regions = ("lesion", "context", "background")
    mass = [float(shares.get(r, np.nan)) for r in regions]
    area = [float(shares.get(f"{r}_area", np.nan)) for r in regions]
    fig = go.Figure([go.Bar(x=list(regions), y=mass, name="heatmap mass", marker_color=[REGION_COLOURS[r] for r in regions],
                            text=[f"{v:.0%}" for v in mass], textposition="outside"),
                     go.Bar(x=list(regions), y=area, name="area", marker_color="#c7c7c7", marker_pattern_shape="/",
                            text=[f"{v:.0%}" for v in area], textposition="outside")])
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%", title="share")
    return _layout(fig, title, barmode="group")


CONFIDENCE_NAMES = {"full": "full image", "lesion_only": "lesion only", "context_only": "context only",
                    "neither": "neither (all blurred)"}


def confidence_check(confidence: Mapping[str, float], label: str | None = None,
                     title: str | None = "Confidence when only part of the image is kept sharp") -> go.Figure:
    """Calibrated probability of the explained class for the full image, lesion only, context only, neither."""
    keys = [k for k in CONFIDENCE_NAMES if k in confidence]
    v = [float(confidence[k]) for k in keys]
    fig = go.Figure(go.Bar(x=[CONFIDENCE_NAMES[k] for k in keys], y=v, text=[f"{x:.1%}" for x in v],
                           textposition="outside", marker_color=["#1f77b4", "#d62728", "#ff9896", "#c7c7c7"][:len(keys)]))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%", title=f"P({label})" if label else "probability")
    return _layout(fig, title)


def heatmap_pair(left: np.ndarray, right: np.ndarray, titles: tuple[str, str] = ("lesion only", "context only"),
                 zmax: float | None = None, colorscale: str = "Jet", title: str | None = None) -> go.Figure:
    """Two maps side by side on one colour scale (lesion-only vs context-only, mean vs std)."""
    a, b = _np(left), _np(right)
    hi = zmax if zmax is not None else max(float(np.nanmax(a)) if a.size else 0.0, float(np.nanmax(b)) if b.size else 0.0, 1e-9)
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.05)
    fig.add_trace(go.Heatmap(z=a, zmin=0, zmax=hi, colorscale=colorscale, name=titles[0], showscale=False), 1, 1)
    fig.add_trace(go.Heatmap(z=b, zmin=0, zmax=hi, colorscale=colorscale, name=titles[1]), 1, 2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    return _layout(fig, title, height=340, margin=dict(l=10, r=10, t=60 if title else 40, b=10))


def stability_figure(stability: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Mean and standard deviation of the heatmap across MC-dropout samples."""
    mean, std = _np(stability["mean"]), _np(stability["std"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean over MC samples", "standard deviation"), horizontal_spacing=0.08)
    fig.add_trace(go.Heatmap(z=mean, zmin=0, zmax=1, colorscale="Jet", name="mean", colorbar=dict(x=0.45, len=0.9)), 1, 1)
    fig.add_trace(go.Heatmap(z=std, zmin=0, colorscale="Greys", name="std", colorbar=dict(x=1.0, len=0.9)), 1, 2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    return _layout(fig, title, height=340, margin=dict(l=10, r=10, t=60 if title else 40, b=10))


def cam_overlay_png(image: Image.Image | np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None,
                    opacity: float = 0.5, title: str | None = None, dpi: int = 110) -> bytes:
    """The same overlay as :func:`cam_overlay` as PNG bytes (matplotlib; no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = _display_image(image)
    h, w = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(4.0, 4.0 * h / max(w, 1)), dpi=dpi)
    try:
        ax.imshow(rgb)
        ax.imshow(_resize_map(cam, (h, w)), cmap="jet", alpha=opacity, vmin=0, vmax=1)
        if mask is not None:
            m = cv2.resize(np.asarray(mask).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            ax.contour(m, levels=[0.5], colors="lime", linewidths=1.5)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()
