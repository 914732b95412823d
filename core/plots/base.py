"""What every figure shares: the modality colours, the plotly template, the layout defaults and the
image helpers (display-size copy, map resize, image figure)."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

#: one colour per modality, the same on every figure
MODALITY_COLOURS = {"image": "#1f77b4", "note": "#ff7f0e", "metadata": "#2ca02c", "spectrum": "#9467bd", "cls": "#7f7f7f"}
REGION_COLOURS = {"lesion": "#d62728", "context": "#ff9896", "background": "#c7c7c7"}
LEVEL_NAMES = ("early", "middle", "last")
SCALE_NAMES = ("global", "meso", "local")
DISPLAY_SIDE = 384  # longest side of images drawn in figures: keeps the figure JSON small


def _colour(modality: str) -> str:
    return MODALITY_COLOURS.get(modality, "#17becf")


# Every figure's template: as plotly's default it is applied from a cached copy when a figure is built;
# passing template="plotly_white" to each figure re-validates a deep copy of it (~40 ms per figure).
pio.templates.default = "plotly_white"


def _layout(fig: go.Figure, title: str | None = None, height: int = 320, **kw: Any) -> go.Figure:
    kw.setdefault("margin", dict(l=10, r=10, t=40 if title else 10, b=10))
    if pio.templates.default != "plotly_white":  # someone changed the default since: set it on this figure
        kw.setdefault("template", "plotly_white")
    fig.update_layout(title=title, height=height, **kw)
    return fig


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _display_image(image: Image.Image | np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    s = min(1.0, max_side / max(w, h))
    if s < 1.0:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return m


def _image_figure(rgb: np.ndarray, title: str | None, height: int | None = None) -> go.Figure:
    fig = go.Figure(go.Image(z=rgb, name="image", hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    h, w = rgb.shape[:2]
    return _layout(fig, title, height=height or int(min(520, max(260, 420 * h / max(w, 1)))))
