"""Automatic lesion segmentation of dermoscopy images (image preprocessing: the dual-expert encoder's
lesion crop and the lesion-vs-context explanations both start from it).

Pure numpy / scipy / OpenCV; no torch.

* :func:`auto_lesion_mask` segments the lesion when no mask is given (hair / glare removal, dropping
  the dermoscope vignette, Otsu on the colour distance from a fitted skin model, largest central
  component). It never returns an empty mask: when no lesion is found it returns a centred ellipse over
  ~20% of the image (:func:`fallback_mask`) and says so (``return_info=True``).
* :func:`segmentation_quality` gives Dice and IoU of two masks.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from .arrays import as_mask, disk as _disk, to_uint8

WORK_SIDE = 256             # segmentation runs at most at this size: fast, and fixed kernel sizes in pixels
FALLBACK_AREA = 0.20        # fraction of the image covered by the fallback ellipse
MIN_CONTRAST = 3.0          # CIELAB dE: a lesion's median colour distance from the skin must reach this ...
MIN_CONTRAST_RATIO = 1.5    # ... and this multiple of the skin's own 95th-percentile distance (noise, texture)
MIN_AREA, MAX_AREA = 0.002, 0.90   # plausible lesion area, as a fraction of the field of view
HAIR_BLACKHAT = 12.0        # grey levels; black-hat response above this is a hair / ruler mark (thin, dark)
GLARE_TOPHAT = 20.0         # grey levels; top-hat response above this is glare / a gel-bubble rim (small, bright)


def fallback_mask(shape: tuple[int, int], area: float = FALLBACK_AREA) -> np.ndarray:
    """A centred ellipse, with the image's aspect ratio, covering ``area`` of the image."""
    h, w = shape
    r = math.sqrt(area / math.pi)                # ellipse area pi * (r w) * (r h) = area * w * h
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (r * w)) ** 2 + ((yy + 0.5 - h / 2) / (r * h)) ** 2 <= 1.0


# ----------------------------------------------------------------------------------------------------------------------
# automatic segmentation

def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of float values (histogram over their own range)."""
    v = values.ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins, (lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(p), np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(centres[np.nanargmax(between)])


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    pts = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if pts is not None:
        cv2.fillPoly(out, [cv2.convexHull(pts)], 1)
    return out.astype(bool)


def _remove_artifacts(rgb: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint hairs / ruler marks (thin dark: black-hat) and glare / bubble rims (small bright: top-hat).

    Both are narrower than the kernel, a lesion is wider, so the lesion itself is left alone.
    """
    gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    kernel = _disk(max(5, (s // 16) | 1) // 2)
    dark = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel) > HAIR_BLACKHAT
    bright = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, kernel) > GLARE_TOPHAT
    art = cv2.dilate((dark | bright).astype(np.uint8), _disk(1))
    return (cv2.inpaint(rgb, art, 3, cv2.INPAINT_TELEA) if art.any() else rgb), art.astype(bool)


def _field_of_view(L: np.ndarray, s: int) -> np.ndarray:
    """Pixels inside the dermoscope's field of view (all True when there is no dark vignette).

    A vignette is near-black and reaches at least two corners; the field is then the convex hull of the
    largest not-black region (so a dark lesion touching the border stays inside), eroded to drop the
    soft edge of the vignette, whose falloff would otherwise look like a lesion.
    """
    h, w = L.shape
    centre = L[h // 4: h - h // 4, w // 4: w - w // 4]
    black = L < max(12.0, 0.5 * float(np.median(centre)))
    c = max(2, s // 12)
    if sum(corner.mean() > 0.5 for corner in (black[:c, :c], black[:c, -c:], black[-c:, :c], black[-c:, -c:])) < 2:
        return np.ones((h, w), bool)
    lab, n = ndimage.label(~black)
    if n == 0:
        return np.zeros((h, w), bool)
    inside = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return cv2.erode(_convex_fill(inside).astype(np.uint8), _disk(max(1, s // 30))).astype(bool)


def _quadratic_surface(values: np.ndarray, use: np.ndarray, step: int = 3) -> np.ndarray:
    """Least-squares quadratic surface in (x, y) per channel, fitted on ``use`` (every ``step``-th pixel:
    a smooth surface needs few samples)."""
    h, w = use.shape
    y = ((np.arange(h) + 0.5) / h * 2 - 1)[:, None, None]
    x = ((np.arange(w) + 0.5) / w * 2 - 1)[None, :, None]
    ys, xs = np.nonzero(use[::step, ::step])
    if ys.size < 12:   # too few samples for 6 coefficients: a flat skin colour
        flat = values[use].mean(0) if use.any() else values.reshape(-1, values.shape[-1]).mean(0)
        return np.broadcast_to(flat, values.shape).copy()
    xv, yv = x.ravel()[xs * step], y.ravel()[ys * step]
    A = np.stack([np.ones_like(xv), xv, yv, xv * xv, xv * yv, yv * yv], 1)
    b = values[ys * step, xs * step]
    c = np.linalg.solve(A.T @ A + 1e-9 * np.eye(6), A.T @ b)   # normal equations: 6 x 6, well conditioned on [-1, 1]
    return c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y


def _skin_distance(lab: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Colour distance (CIELAB, dE) from the skin model. Being lighter than the skin counts half:
    lesions are darker or more coloured, while leftover glare and gel are lighter."""
    d = lab - skin
    dL = np.where(d[..., 0] < 0, d[..., 0], 0.5 * d[..., 0])
    return np.sqrt(dL ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2)


def auto_lesion_mask(image: Image.Image | np.ndarray, return_info: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Boolean lesion mask of a dermoscopy image, at the image's resolution; never empty.

    Steps (at most ``WORK_SIDE`` px): hairs, ruler marks and glare inpainted (morphological black-hat /
    top-hat); the dark dermoscope vignette excluded; the skin modelled as a smooth quadratic colour
    surface in CIELAB (which absorbs uneven illumination), refitted without the lesion; the colour
    distance from that skin Otsu-thresholded (lesions may be darker, redder, bluer or greyer than the
    skin, so no single channel works for all of them); opening, closing, hole filling; the component
    with the largest area x centrality kept, unless it lies mostly along the edge of the field of view.

    With ``return_info=True`` returns ``(mask, info)``: ``info["method"]`` is ``"otsu"`` or ``"fallback"``
    (then ``info["reason"]`` says why and the mask is :func:`fallback_mask`), plus ``threshold`` and
    ``contrast`` (median colour distance of the lesion from the skin, dE), ``skin_spread`` (95th
    percentile of that distance over the skin), and the ``artifact_fraction``, ``vignette_fraction`` and
    ``area_fraction`` of the image.
    """
    rgb = to_uint8(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    H, W = rgb.shape[:2]
    info: dict[str, Any] = {"method": "otsu", "reason": None}

    def done(mask: np.ndarray) -> Any:
        info["area_fraction"] = float(mask.mean())
        return (mask, info) if return_info else mask

    def fallback(reason: str) -> Any:
        info.update(method="fallback", reason=reason)
        return done(fallback_mask((H, W)))

    if min(H, W) < 16:
        return fallback("image smaller than 16 px")
    scale = min(1.0, WORK_SIDE / max(H, W))
    small = rgb if scale == 1 else cv2.resize(rgb, (max(1, round(W * scale)), max(1, round(H * scale))),
                                              interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    s = min(h, w)

    clean, artifacts = _remove_artifacts(small, s)
    info["artifact_fraction"] = float(artifacts.mean())
    lab = cv2.GaussianBlur(cv2.cvtColor(clean.astype(np.float32) / 255, cv2.COLOR_RGB2LAB), (0, 0), max(1.0, s / 100))
    fov = _field_of_view(lab[..., 0], s)
    info["vignette_fraction"] = float(1 - fov.mean())
    if fov.sum() < 0.05 * h * w:
        return fallback("no field of view (the image is almost black)")

    # Skin model: fit on the whole field (the lesion is a minority), then twice more without the pixels
    # that stand out, so a large lesion does not drag the skin colour towards its own.
    use = fov & ~artifacts
    skin = _quadratic_surface(lab, use)
    for _ in range(2):
        dist = _skin_distance(lab, skin)
        outlier = cv2.dilate((dist > _otsu(dist[fov])).astype(np.uint8), _disk(max(1, s // 30))).astype(bool)
        if (use & ~outlier).sum() < 100:
            break
        skin = _quadratic_surface(lab, use & ~outlier)
    dist = _skin_distance(lab, skin)
    t = _otsu(dist[fov])
    info["threshold"] = t

    cand = ((dist > t) & fov).astype(np.uint8)
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, _disk(max(1, s // 60)))
    cand = cv2.morphologyEx(cand, cv2.MORPH_CLOSE, _disk(max(1, s // 40)))
    cand = ndimage.binary_fill_holes(cand) & fov
    lab_ids, n = ndimage.label(cand)
    if n == 0:
        return fallback("nothing stands out from the skin")

    # Score = area x centrality; a component lying mostly along the field's edge is more likely leftover
    # vignette falloff or a border artifact than the lesion a dermatologist centred: it only wins when
    # nothing else stands out (then the contrast check below still applies).
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(lab_ids), lab_ids, idx)
    cy, cx = np.asarray(ndimage.center_of_mass(cand, lab_ids, idx)).T.reshape(2, -1)
    off = np.hypot((cy + 0.5 - h / 2) / (h / 2), (cx + 0.5 - w / 2) / (w / 2)) / math.sqrt(2)
    edge = fov & (ndimage.distance_transform_edt(np.pad(fov, 1))[1:-1, 1:-1] < max(2, s // 12))
    on_edge = ndimage.sum_labels(edge, lab_ids, idx) / area
    score = area * np.clip(1 - off ** 2, 0.05, 1) * np.where(on_edge < 0.5, 1.0, 0.1)
    lesion = lab_ids == idx[np.argmax(score)]

    frac = lesion.sum() / fov.sum()
    around = fov & ~cv2.dilate(lesion.astype(np.uint8), _disk(max(1, s // 30))).astype(bool)
    info["contrast"] = float(np.median(dist[lesion]))
    info["skin_spread"] = float(np.percentile(dist[around], 95)) if around.any() else float("inf")
    if frac < MIN_AREA:
        return fallback(f"lesion candidate too small ({frac:.1%} of the field of view)")
    if frac > MAX_AREA:
        return fallback(f"lesion candidate too large ({frac:.1%} of the field of view)")
    if info["contrast"] < max(MIN_CONTRAST, MIN_CONTRAST_RATIO * info["skin_spread"]):
        return fallback(f"nothing differs clearly from the skin (contrast {info['contrast']:.1f} dE, skin spread "
                        f"{info['skin_spread']:.1f} dE)")

    if (h, w) != (H, W):   # bilinear upsampling of the 0/1 mask gives smoother edges than nearest
        lesion = cv2.resize(lesion.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
        if not lesion.any():
            return fallback("lesion vanished when upsampled")
    return done(lesion)


# ----------------------------------------------------------------------------------------------------------------------
# comparison with a reference mask

def segmentation_quality(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU of two boolean masks of the same shape (two empty masks agree perfectly: 1.0)."""
    p, t = as_mask(pred, "pred"), as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from truth shape {t.shape}.")
    inter, ps, ts = float((p & t).sum()), float(p.sum()), float(t.sum())
    union = ps + ts - inter
    if union == 0:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": 2 * inter / (ps + ts), "iou": inter / union}

