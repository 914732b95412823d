"""Lesion, context ring and background: the regions of a dermoscopy image, and region-only images.

* :func:`context_ring` / :func:`region_masks` split the image into lesion, the ring of skin around it
  ("context") and everything else ("background").
* :func:`keep_region` blurs everything but one region (lesion-only / context-only images).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from .arrays import as_mask, to_uint8

REGIONS = ("lesion", "context", "background")


def context_ring(mask: np.ndarray, width: float | None = None) -> np.ndarray:
    """The ring of pixels within ``width`` px of the lesion, lesion excluded (so disjoint from it).

    ``width`` defaults to the lesion's equivalent radius sqrt(area / pi); the ring is clipped to the
    image. An empty mask gives an empty ring.
    """
    m = as_mask(mask)
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
    lesion = as_mask(mask)
    ring = context_ring(lesion) if ring is None else as_mask(ring, "ring")
    if ring.shape != lesion.shape:
        raise ValueError(f"ring shape {ring.shape} differs from mask shape {lesion.shape}.")
    context = ring & ~lesion
    return {"lesion": lesion, "context": context, "background": ~(lesion | context)}


def keep_region(image: Image.Image | np.ndarray, keep: np.ndarray, blur_sigma: float = 12,
                feather: float = 3) -> Image.Image:
    """The image with everything outside ``keep`` replaced by a strong Gaussian blur of the image.

    Pixels inside ``keep`` are unchanged; the blend to the blurred image runs over ``feather`` px
    *outside* ``keep`` so no sharp artificial border is drawn around the kept region. ``keep`` is resized
    (nearest) to the image if needed; an all-False ``keep`` gives the fully blurred image.
    """
    arr = to_uint8(image)
    H, W = arr.shape[:2]
    k = as_mask(keep, "keep")
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
