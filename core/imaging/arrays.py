"""Array helpers shared by the imaging functions and the explanations built on them: images as uint8
arrays, masks as boolean arrays, round structuring elements."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def to_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8. Float arrays with values <= 1 are taken as [0, 1]; alpha is dropped;
    16-bit / float PIL images are stretched to their own range."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            a = np.asarray(image, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            arr = ((a - lo) / (hi - lo) * 255).round().astype(np.uint8) if hi > lo else np.zeros(a.shape, np.uint8)
        else:
            arr = np.asarray(image.convert("L" if image.mode == "L" else "RGB"))
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


def as_mask(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """A 2-D boolean array (``what`` names the argument in the error)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {m.shape}.")
    return m.astype(bool)


def disk(radius: int) -> np.ndarray:
    """An elliptical structuring element of the given radius (at least 1)."""
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
