"""Static PNG figures for the PDF report (matplotlib, no browser) and thumbnails for both reports."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..plots import attribution_bands, cam_overlay_png
from ..plots.prediction import package_labels

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def thumbnail_png(image: Image.Image, mask: np.ndarray | None = None, side: int = 256) -> bytes:
    """The input image, shrunk to ``side`` pixels, with the lesion mask outlined in green."""
    img = image.convert("RGB").copy()
    img.thumbnail((side, side))
    if mask is not None:
        import cv2

        rgb = np.asarray(img).copy()
        m = cv2.resize(np.asarray(mask).astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
        img = Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def cam_png(image: Image.Image, cam: np.ndarray, mask: np.ndarray | None, title: str) -> bytes:
    return cam_overlay_png(image, cam, mask, title=title, dpi=DPI)


def probability_png(probs: Mapping[str, float], std: Mapping[str, float] | None = None,
                    title: str = "Calibrated class probabilities") -> bytes:
    plt = _plt()
    labels = list(probs)
    p = np.array([probs[k] for k in labels])
    k = int(p.argmax())
    fig, ax = plt.subplots(figsize=(5.2, 2.4))
    ax.bar(labels, p, color=["#1f77b4" if i == k else "#9ecae1" for i in range(len(p))],
           yerr=[std[k_] for k_ in labels] if std else None, capsize=3)
    for i, v in enumerate(p):
        ax.text(i, min(v + 0.03, 1.02), f"{v:.0%}", ha="center", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return _save(fig)


def signed_bars_png(names: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> bytes:
    plt = _plt()
    v = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(5.2, 0.45 + 0.28 * len(v)))
    y = np.arange(len(v))[::-1]
    ax.barh(y, v, color=["#d62728" if x > 0 else "#1f77b4" for x in v])
    ax.set_yticks(y, labels=list(names), fontsize=7)
    ax.axvline(0, color="#555", lw=0.6)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig)


def spectrum_png(spectrum: Mapping[str, Any], title: str = "Spectrum and its attribution", x_title: str = "wavenumber (cm⁻¹)") -> bytes:
    plt = _plt()
    x = np.asarray(spectrum["wavelengths"], float)
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.2, 3.0), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    a.plot(x, spectrum["spectrum"], color="#333", lw=0.8)
    b.fill_between(x, spectrum["smoothed"], color="#d62728", alpha=0.6)
    for lo, hi in attribution_bands(x, spectrum["smoothed"]):
        for ax in (a, b):
            ax.axvspan(lo, hi, color="#d62728", alpha=0.12, lw=0)
    a.set_title(title, fontsize=9)
    b.set_xlabel(x_title, fontsize=7)
    for ax in (a, b):
        ax.tick_params(labelsize=7)
    return _save(fig)


def comparison_png(columns: Sequence[Mapping[str, Any]], label: str) -> bytes:
    plt = _plt()
    names = package_labels(columns)  # by package, not variant type: one type can hold several packages
    p = [c["probabilities"].get(label, 0.0) for c in columns]
    fig, ax = plt.subplots(figsize=(5.2, 0.5 + 0.3 * len(names)))
    y = np.arange(len(names))[::-1]
    ax.barh(y, p, color=["#1f77b4" if c["label"] == label else "#ff7f0e" for c in columns])
    ax.set_yticks(y, labels=names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"calibrated probability of {label}", fontsize=7)
    ax.set_title("Variants compared (orange: predicts another class)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig)
