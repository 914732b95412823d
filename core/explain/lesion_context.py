"""Lesion versus context: where a dermoscopy heatmap puts its mass, and image edits to test it.

Pure numpy / scipy / OpenCV; no torch, no plotting. Everything works on boolean masks at image
resolution and returns arrays, dicts of numbers, or a PIL image.

* :func:`auto_lesion_mask` segments the lesion when no mask is given (hair removal, Otsu, dropping
  the dermoscope vignette, largest central component). It never returns an empty mask: when no lesion
  is found it returns a centred ellipse over ~20% of the image and says so (``return_info=True``).
* :func:`context_ring` / :func:`region_masks` split the image into lesion, the ring of skin around it
  ("context") and everything else ("background").
* :func:`cam_shares`, :func:`split_heatmap` and :func:`top_region_iou` summarise heatmaps;
  :func:`keep_region` blurs everything but one region (lesion-only / context-only images).
* :func:`segmentation_quality` gives Dice and IoU of two masks.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

REGIONS = ("lesion", "context", "background")
WORK_SIDE = 256             # segmentation runs at most at this size: fast, and fixed kernel sizes in pixels
FALLBACK_AREA = 0.20        # fraction of the image covered by the fallback ellipse
MIN_CONTRAST = 15.0         # grey levels (0-255) a lesion must be darker than the skin around it
MIN_AREA, MAX_AREA = 0.002, 0.90   # plausible lesion area, as a fraction of the field of view
HAIR_BLACKHAT = 12.0        # grey levels; black-hat response above this is a hair (or another thin dark line)


# ----------------------------------------------------------------------------------------------------------------------
# input helpers

def _to_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8. Float arrays in [0, 1] are scaled; alpha is dropped."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("L" if image.mode in ("L", "I", "F", "I;16") else "RGB"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
            raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}.")
        if arr.dtype != np.uint8:
            a = arr.astype(np.float64)
            if a.size and np.nanmax(a) <= 1.0:   # float images in [0, 1]
                a = a * 255.0
            arr = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_mask(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {m.shape}.")
    return m.astype(bool)


def _as_cam(cam: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Float64 (H, W) heatmap, resized bilinearly to ``shape`` when given and different."""
    c = np.asarray(cam, dtype=np.float64)
    c = c.squeeze() if c.ndim > 2 else c
    if c.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D, got shape {np.asarray(cam).shape}.")
    if not np.all(np.isfinite(c)):
        raise ValueError("the heatmap contains NaN or infinite values.")
    if c.min() < 0:
        raise ValueError("the heatmap has negative values; pass a non-negative map (e.g. ReLU or |attribution|).")
    if shape is not None and c.shape != tuple(shape):
        # float32 resize is enough for a heatmap; bilinear keeps it non-negative
        c = cv2.resize(c.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    return c


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def fallback_mask(shape: tuple[int, int], area: float = FALLBACK_AREA) -> np.ndarray:
    """A centred ellipse, with the image's aspect ratio, covering ``area`` of the image."""
    h, w = shape
    r = math.sqrt(area / math.pi)                # ellipse area pi * (r w) * (r h) = area * w * h
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (r * w)) ** 2 + ((yy + 0.5 - h / 2) / (r * h)) ** 2 <= 1.0


# ----------------------------------------------------------------------------------------------------------------------
# 1. automatic segmentation

def _otsu(values: np.ndarray) -> float:
    v = np.clip(values.ravel(), 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t)


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    pts = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if pts is not None:
        cv2.fillPoly(out, [cv2.convexHull(pts)], 1)
    return out.astype(bool)


def auto_lesion_mask(image: Image.Image | np.ndarray, return_info: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Boolean lesion mask of a dermoscopy image, at the image's resolution; never empty.

    Steps (at most ``WORK_SIDE`` px): hairs found by a morphological black-hat and inpainted; the blue
    channel (pigment absorbs blue, so lesions are darkest there) smoothed and Otsu-thresholded with the
    statistics of the central part of the image (the vignette would pull the threshold down); a dark
    vignette (>= 2 dark corners) removed as everything outside the convex hull of the skin; opening,
    closing, hole filling; the component with the largest area x centrality kept.

    With ``return_info=True`` returns ``(mask, info)``: ``info["method"]`` is ``"otsu"`` or ``"fallback"``
    (then ``info["reason"]`` says why and the mask is :func:`fallback_mask`), plus the threshold, the
    lesion-vs-skin contrast, and the hair / vignette / lesion area fractions.
    """
    rgb = _to_uint8(image)
    H, W = rgb.shape[:2]
    info: dict[str, Any] = {"method": "otsu", "reason": None}

    def done(mask: np.ndarray) -> Any:
        info["area_fraction"] = float(mask.mean())
        return (mask, info) if return_info else mask

    def fallback(reason: str) -> Any:
        info.update(method="fallback", reason=reason)
        return done(fallback_mask((H, W)))

    if min(H, W) < 8:
        return fallback("image smaller than 8 px")
    scale = min(1.0, WORK_SIDE / max(H, W))
    small = cv2.resize(rgb, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else rgb
    h, w = small.shape[:2]
    s = min(h, w)
    gray = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    chan = small if small.ndim == 2 else small[..., 2].copy()

    # Hairs: thin dark lines are what a black-hat with a kernel wider than a hair picks up; the lesion,
    # wider than the kernel, is not. Inpainting replaces them with the surrounding skin / lesion.
    k = max(5, (s // 16) | 1)
    blackhat = cv2.morphologyEx(cv2.GaussianBlur(gray, (3, 3), 0), cv2.MORPH_BLACKHAT, _disk(k // 2))
    hair = cv2.dilate((blackhat > HAIR_BLACKHAT).astype(np.uint8), _disk(1))
    info["hair_fraction"] = float(hair.mean())
    if hair.any():
        chan = cv2.inpaint(chan, hair, 3, cv2.INPAINT_TELEA)
    smooth = cv2.GaussianBlur(chan, (0, 0), max(1.0, s / 100)).astype(np.float64)

    # Otsu on the central ellipse only: the vignette sits in the corners and is darker than any lesion.
    yy, xx = np.mgrid[0:h, 0:w]
    central = ((xx + 0.5 - w / 2) / (0.8 * w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (0.8 * h / 2)) ** 2 <= 1
    t = _otsu(smooth[central])
    info["threshold"] = t
    dark = smooth <= t

    # Vignette: dark corners. The field of view is then the convex hull of the largest bright (skin)
    # component, which contains lesions touching the vignette but not the vignette itself.
    c = max(2, s // 12)
    corners = [dark[:c, :c], dark[:c, -c:], dark[-c:, :c], dark[-c:, -c:]]
    fov = np.ones((h, w), bool)
    if sum(cm.mean() > 0.5 for cm in corners) >= 2:
        lab, n = ndimage.label(~dark)
        if n:
            skin = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
            fov = _convex_fill(skin)
            fov = cv2.erode(fov.astype(np.uint8), _disk(max(1, s // 100))).astype(bool)  # the hull edge is vignette-blurred
    info["vignette_fraction"] = float(1 - fov.mean())

    cand = (dark & fov).astype(np.uint8)
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, _disk(max(1, s // 60)))
    cand = cv2.morphologyEx(cand, cv2.MORPH_CLOSE, _disk(max(1, s // 40)))
    cand = ndimage.binary_fill_holes(cand) & fov
    lab, n = ndimage.label(cand)
    if n == 0:
        return fallback("no dark region inside the field of view")

    # Score = area x centrality; a component lying mostly in the outer border ring is leftover vignette.
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(lab), lab, idx)
    cy, cx = np.asarray(ndimage.center_of_mass(cand, lab, idx)).T.reshape(2, -1)
    d = np.hypot((cy + 0.5 - h / 2) / (h / 2), (cx + 0.5 - w / 2) / (w / 2)) / math.sqrt(2)
    b = max(1, s // 12)
    ring = np.ones((h, w), bool)
    ring[b:-b, b:-b] = False
    in_ring = ndimage.sum_labels(ring, lab, idx) / area
    score = area * np.clip(1 - d ** 2, 0.05, 1) * (in_ring < 0.5)
    if score.max() <= 0:
        return fallback("only border-ring dark regions (vignette)")
    lesion = lab == idx[np.argmax(score)]

    frac = lesion.sum() / max(1, fov.sum())
    skin = fov & ~lesion
    contrast = float(smooth[skin].mean() - smooth[lesion].mean()) if skin.any() else 0.0
    info["contrast"] = contrast
    if frac < MIN_AREA:
        return fallback(f"lesion candidate too small ({frac:.1%} of the field of view)")
    if frac > MAX_AREA:
        return fallback(f"lesion candidate too large ({frac:.1%} of the field of view)")
    if contrast < MIN_CONTRAST:
        return fallback(f"no lesion darker than the skin (contrast {contrast:.1f} < {MIN_CONTRAST:g} grey levels)")

    if (h, w) != (H, W):   # bilinear upsampling of the 0/1 mask gives smoother edges than nearest
        lesion = cv2.resize(lesion.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
        if not lesion.any():
            return fallback("lesion vanished when upsampled")
    return done(lesion)


# ----------------------------------------------------------------------------------------------------------------------
# 2-3. regions

def context_ring(mask: np.ndarray, width: float | None = None) -> np.ndarray:
    """The ring of pixels within ``width`` px of the lesion, lesion excluded (so disjoint from it).

    ``width`` defaults to the lesion's equivalent radius sqrt(area / pi); the ring is clipped to the
    image. An empty mask gives an empty ring.
    """
    m = _as_mask(mask)
    if not m.any():
        return np.zeros_like(m)
    if width is None:
        width = math.sqrt(m.sum() / math.pi)
    if width <= 0:
        return np.zeros_like(m)
    dist = ndimage.distance_transform_edt(~m)   # distance of each outside pixel to the nearest lesion pixel
    return (dist <= width) & ~m


def region_masks(mask: np.ndarray, ring: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{"lesion", "context", "background"}: disjoint boolean masks that together cover the image."""
    lesion = _as_mask(mask)
    ring = context_ring(lesion) if ring is None else _as_mask(ring, "ring")
    if ring.shape != lesion.shape:
        raise ValueError(f"ring shape {ring.shape} differs from mask shape {lesion.shape}.")
    context = ring & ~lesion
    return {"lesion": lesion, "context": context, "background": ~(lesion | context)}


# ----------------------------------------------------------------------------------------------------------------------
# 4-5. heatmaps over regions

def _max_hits(cam: np.ndarray, region: np.ndarray) -> bool:
    # Tied maxima (a flat-topped map) count as a hit when at least half of them lie in the region.
    top = cam >= cam.max() - 1e-9 * max(1.0, abs(cam.max()))
    return bool(region[top].mean() >= 0.5)


def cam_shares(cam: np.ndarray, mask: np.ndarray, ring: np.ndarray | None = None) -> dict[str, Any]:
    """Share of a non-negative heatmap's mass in lesion / context / background, with the area shares.

    ``cam`` may have any size; it is resized bilinearly to the mask. Returns ``lesion``, ``context``,
    ``background`` (mass shares, summing to 1), ``lesion_area``, ``context_area``, ``background_area``
    (pixel fractions; a mass share above its area share means the map concentrates there),
    ``cam_mass`` (the total) and ``pointing_game`` = {"hit_lesion", "hit_lesion_or_context"}: whether the
    map's maximum lies in the lesion / lesion + context.

    An all-zero heatmap has no mass to share: the three shares are NaN and both pointing-game entries
    are None (rather than equal thirds, which would read as a real, spread-out explanation).
    """
    regions = region_masks(mask, ring)
    c = _as_cam(cam, regions["lesion"].shape)
    total = float(c.sum())
    out: dict[str, Any] = {}
    for name in REGIONS:
        out[name] = float(c[regions[name]].sum() / total) if total > 0 else float("nan")
    for name in REGIONS:
        out[f"{name}_area"] = float(regions[name].mean())
    out["cam_mass"] = total
    if total > 0:
        out["pointing_game"] = {"hit_lesion": _max_hits(c, regions["lesion"]),
                                "hit_lesion_or_context": _max_hits(c, regions["lesion"] | regions["context"])}
    else:
        out["pointing_game"] = {"hit_lesion": None, "hit_lesion_or_context": None}
    return out


def split_heatmap(cam: np.ndarray, mask: np.ndarray, ring: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The heatmap (at mask resolution) zeroed outside each region: lesion_only / context_only / background_only."""
    regions = region_masks(mask, ring)
    c = _as_cam(cam, regions["lesion"].shape)
    return {f"{name}_only": np.where(regions[name], c, 0.0) for name in REGIONS}


# ----------------------------------------------------------------------------------------------------------------------
# 6. region-only images

def keep_region(image: Image.Image | np.ndarray, keep: np.ndarray, blur_sigma: float = 12,
                feather: float = 3) -> Image.Image:
    """The image with everything outside ``keep`` replaced by a strong Gaussian blur of the image.

    Pixels inside ``keep`` are unchanged; the blend to the blurred image runs over ``feather`` px
    *outside* ``keep`` so no sharp artificial border is drawn around the kept region. ``keep`` is resized
    (nearest) to the image if needed; an all-False ``keep`` gives the fully blurred image.
    """
    arr = _to_uint8(image)
    H, W = arr.shape[:2]
    k = _as_mask(keep, "keep")
    if k.shape != (H, W):
        k = cv2.resize(k.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
    blurred = cv2.GaussianBlur(arr.astype(np.float32), (0, 0), float(blur_sigma), borderType=cv2.BORDER_REFLECT)
    if k.any():
        dist = ndimage.distance_transform_edt(~k)   # 0 inside keep
        alpha = np.clip(1.0 - dist / max(feather, 1e-6), 0.0, 1.0) if feather > 0 else k.astype(np.float64)
    else:
        alpha = np.zeros((H, W))
    if arr.ndim == 3:
        alpha = alpha[..., None]
    out = alpha * arr.astype(np.float64) + (1 - alpha) * blurred
    out = np.where(alpha >= 1.0, arr, np.clip(out.round(), 0, 255)).astype(np.uint8)  # kept pixels bit-exact
    return Image.fromarray(out, "L" if out.ndim == 2 else "RGB")


# ----------------------------------------------------------------------------------------------------------------------
# 7-8. comparisons

def segmentation_quality(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU of two boolean masks of the same shape (two empty masks agree perfectly: 1.0)."""
    p, t = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from truth shape {t.shape}.")
    inter, ps, ts = float((p & t).sum()), float(p.sum()), float(t.sum())
    union = ps + ts - inter
    if union == 0:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": 2 * inter / (ps + ts), "iou": inter / union}


def top_region(cam: np.ndarray, quantile: float = 0.8) -> np.ndarray:
    """Pixels at or above the map's ``quantile`` and strictly positive (zeros are never 'top')."""
    c = _as_cam(cam)
    return (c >= np.quantile(c, quantile)) & (c > 0)


def top_region_iou(cam_a: np.ndarray, cam_b: np.ndarray, quantile: float = 0.8) -> float:
    """IoU of the top-(1 - quantile) regions of two heatmaps; ``cam_b`` is resized to ``cam_a``.

    Ties at the threshold are all included, and zero pixels never count, so a map whose support is
    smaller than the top fraction contributes its support. NaN when both top regions are empty.
    """
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}.")
    a = _as_cam(cam_a)
    b = _as_cam(cam_b, a.shape)
    ta, tb = top_region(a, quantile), top_region(b, quantile)
    union = float((ta | tb).sum())
    return float((ta & tb).sum() / union) if union else float("nan")
