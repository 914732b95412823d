"""Prediction figures (class probabilities, MC-dropout samples, the referral curve) and the variant /
cohort comparison bars."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .base import _layout, _np


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
# variant comparison

def package_labels(columns: Sequence[Mapping[str, Any]]) -> list[str]:
    """One display label per compared package (``Comparison.to_dict()['columns']`` or package summaries):
    the package's name without its cohort folder, with the fusion variant type after it where the name does
    not already say it ("gated_kan (gated)", "concat"). Several packages share a variant type (HAM10000
    ``gated`` and ``gated_kan`` are both "gated"), so labelling by the type would merge their columns and
    bars; names that still collide are written in full, then numbered, so every label is distinct."""
    full = [str(c.get("name") or c.get("variant") or "package") for c in columns]
    short = [n.rsplit("/", 1)[-1] for n in full]
    out = []
    for f, s, c in zip(full, short, columns):
        name = s if short.count(s) == 1 else f
        v = c.get("variant")
        out.append(name if not v or v == s else f"{name} ({v})")
    repeated = {lab for lab in out if out.count(lab) > 1}
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        if lab in repeated:
            seen[lab] = seen.get(lab, 0) + 1
            out[i] = f"{lab} #{seen[lab]}"
    return out


def variant_probabilities(columns: Sequence[Mapping[str, Any]], label: str, title: str | None = None) -> go.Figure:
    """The calibrated probability of ``label`` per compared package (``Comparison.to_dict()['columns']``),
    one bar each labelled by :func:`package_labels`; packages that predict another class are drawn in orange."""
    names = package_labels(columns)
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
