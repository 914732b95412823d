"""Figures from prediction and explanation arrays: plotly for the dashboard, matplotlib for PNGs.

Computing is separate from drawing: ``core.explain`` returns arrays and numbers, this module turns
them into figures, the dashboard only shows them. Nothing here imports streamlit or touches a
model. User text that ends up in HTML (:func:`note_highlight_html`) is always escaped.
"""
from __future__ import annotations

import html
import io
import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image
from plotly.subplots import make_subplots

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


# ----------------------------------------------------------------------------------------------------------------------
# prediction

def probability_bars(labels: Sequence[str], probabilities: Sequence[float], std: Sequence[float] | None = None,
                     true_label: str | None = None, title: str | None = "Calibrated class probabilities") -> go.Figure:
    """One bar per class (calibrated probability), the MC-dropout standard deviation as error bars,
    the predicted class darker and the true label (when known) marked."""
    p = _np(probabilities)
    k = int(p.argmax())
    colours = ["#1f77b4" if i == k else "#9ecae1" for i in range(len(labels))]
    text = [f"{v:.1%}" + (" (true label)" if lab == true_label else "") for lab, v in zip(labels, p)]
    bar = go.Bar(x=list(labels), y=p, marker_color=colours, text=text, textposition="outside", name="calibrated",
                 error_y=dict(type="data", array=_np(std), visible=True) if std is not None else None)
    fig = go.Figure(bar)
    fig.update_yaxes(range=[0, 1.1], title="probability", tickformat=".0%")
    return _layout(fig, title)


def mc_distribution(labels: Sequence[str], samples: np.ndarray, title: str | None = "MC-dropout samples per class") -> go.Figure:
    """One box (with every sample drawn) per class from the [T, C] calibrated MC-dropout samples."""
    s = _np(samples)
    fig = go.Figure([go.Box(y=s[:, i], name=lab, boxpoints="all", jitter=0.4, pointpos=0, marker_size=4)
                     for i, lab in enumerate(labels)])
    fig.update_yaxes(range=[0, 1], title="probability", tickformat=".0%")
    return _layout(fig, title, showlegend=False)


def referral_position(curve: Mapping[str, Any], value: float) -> float | None:
    """The smallest referred share at which a case of uncertainty ``value`` is referred, when the curve
    carries ``thresholds`` (the uncertainty cut-off at each share); None otherwise or if never referred."""
    fr, th = curve.get("fractions"), curve.get("thresholds")
    if not fr or not th or len(fr) != len(th):
        return None
    hits = [float(f) for f, t in zip(fr, th) if t is not None and float(f) > 0 and value > float(t)]
    return min(hits) if hits else None


def referral_curve(fractions: Sequence[float], accuracy: Sequence[float], operating_fraction: float | None = None,
                   case_fraction: float | None = None, case_referred: bool | None = None,
                   title: str | None = "Accuracy on kept cases vs share referred") -> go.Figure:
    """The package's accuracy-vs-referred curve; a vertical line at the package's referral point and
    a marker where this case would first be referred (``case_fraction``), when known."""
    f, a = _np(fractions), _np(accuracy)
    fig = go.Figure(go.Scatter(x=f, y=a, mode="lines+markers", name="test split"))
    if operating_fraction is not None:
        fig.add_vline(x=float(operating_fraction), line_dash="dash", line_color="#d62728",
                      annotation_text="referral threshold", annotation_position="top left")
    if case_fraction is not None:
        y = float(np.interp(case_fraction, f, a))
        fig.add_trace(go.Scatter(x=[case_fraction], y=[y], mode="markers", name="this case",
                                 marker=dict(size=14, symbol="star", color="#d62728" if case_referred else "#2ca02c")))
    fig.update_xaxes(title="share of cases referred (most uncertain first)", tickformat=".0%")
    fig.update_yaxes(title="accuracy on the cases kept", tickformat=".0%")
    return _layout(fig, title)


# ----------------------------------------------------------------------------------------------------------------------
# fusion internals

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


# ----------------------------------------------------------------------------------------------------------------------
# image explanations

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


# ----------------------------------------------------------------------------------------------------------------------
# attributions

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


# ----------------------------------------------------------------------------------------------------------------------
# variant comparison

def variant_probabilities(columns: Sequence[Mapping[str, Any]], label: str, title: str | None = None) -> go.Figure:
    """The calibrated probability of ``label`` per variant (``Comparison.to_dict()['columns']``);
    variants that predict another class are drawn in orange."""
    names = [c["variant"] for c in columns]
    p = [float(c["probabilities"].get(label, 0.0)) for c in columns]
    colours = ["#1f77b4" if c["label"] == label else "#ff7f0e" for c in columns]
    fig = go.Figure(go.Bar(x=p, y=names, orientation="h", marker_color=colours, text=[f"{v:.1%}" for v in p],
                           textposition="outside", cliponaxis=False))
    fig.update_xaxes(range=[0, 1.15], title=f"calibrated probability of {label}", tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=100 + 28 * len(names))


def cohort_metric_bars(rows: Sequence[Mapping[str, Any]], metric: str = "balanced_accuracy",
                       title: str | None = None) -> go.Figure:
    """One bar per package (``core.compare.cohort_metrics`` rows) with its bootstrap 95% interval;
    unimodal baselines in grey."""
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    rows = sorted(rows, key=lambda r: -float(r[metric]))
    names = [r["model"] for r in rows]
    v = np.array([float(r[metric]) for r in rows])
    ci = [r.get(f"{metric}_ci95") or [x, x] for r, x in zip(rows, v)]
    lo = v - np.array([c[0] for c in ci])
    hi = np.array([c[1] for c in ci]) - v
    colours = ["#9e9e9e" if r.get("variant") == "unimodal" else "#1f77b4" for r in rows]
    fig = go.Figure(go.Bar(x=names, y=v, marker_color=colours, error_y=dict(type="data", array=hi, arrayminus=lo, visible=True),
                           text=[f"{x:.3f}" for x in v], textposition="inside"))
    fig.update_yaxes(title=metric.replace("_", " "), range=[0, 1])
    return _layout(fig, title, height=360)
