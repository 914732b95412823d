"""Lesion versus context: where a dermoscopy heatmap puts its mass.

Pure numpy / OpenCV; no torch, no plotting. The lesion mask (uploaded, or :func:`core.imaging.auto_lesion_mask`),
the context ring and the region-only images come from :mod:`core.imaging`; this module only reads
heatmaps against those regions.

* :func:`cam_shares`, :func:`split_heatmap` and :func:`top_region_iou` summarise heatmaps.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..imaging import REGIONS, region_masks


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


# ----------------------------------------------------------------------------------------------------------------------
# heatmaps over regions

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
# comparisons of two heatmaps

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
