"""Skin, optics and artifacts (all independent of the class: no shortcuts)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .canvas import _SKIN_TONES, _SKIN_W, _circles, _col, _curve, _grid, _noise, _paint, _polyline_alpha, _px


def _skin(rng: np.random.Generator, s: int) -> np.ndarray:
    i = int(rng.choice(len(_SKIN_TONES), p=_SKIN_W))
    j = min(i + 1, len(_SKIN_TONES) - 1)
    t = rng.uniform()
    base = (1 - t) * np.asarray(_SKIN_TONES[i]) + t * np.asarray(_SKIN_TONES[j]) + rng.normal(0, 0.02, 3)
    img = np.empty((s, s, 3), np.float32)
    img[:] = np.clip(base, 0, 1)
    img *= (1 + 0.05 * _noise(rng, s, 3))[..., None]                    # tone variation
    red = 0.05 * (1 + _noise(rng, s, 5)) / 2                             # blotchy redness
    img[..., 1] *= 1 - red
    img[..., 2] *= 1 - red
    img *= (1 + 0.025 * _noise(rng, s, s / 8))[..., None]                # mottled texture
    img *= (1 - rng.uniform(0.008, 0.02) * _furrows(rng, s))[..., None]  # skin lines
    return img


def _furrows(rng: np.random.Generator, s: int) -> np.ndarray:
    """The rhomboid network of skin furrows: two crossing sets of faint warped lines."""
    yy, xx = _grid(s)
    period = s * rng.uniform(0.06, 0.1)
    a = rng.uniform(0, np.pi)
    warp = 0.6 * _noise(rng, s, 4)
    u = (xx * math.cos(a) + yy * math.sin(a)) / period + warp
    v = (xx * math.cos(a + 1.1) + yy * math.sin(a + 1.1)) / period + warp
    return np.maximum(np.exp(-np.sin(np.pi * u) ** 2 / 0.015), np.exp(-np.sin(np.pi * v) ** 2 / 0.015))


@dataclass
class _Optics:
    field: np.ndarray | None        # soft dermoscope field in [0, 1], or None (no dark border)
    visible: np.ndarray             # bool: inside the field
    gain: np.ndarray                # per-channel colour cast


def _optics(rng: np.random.Generator, s: int) -> _Optics:
    yy, xx = _grid(s)
    if rng.random() < 0.55:  # dermoscope with a visible circular border (vignetting)
        R = s * rng.uniform(0.47, 0.66)
        cx, cy = s / 2 + rng.normal(0, 0.02 * s), s / 2 + rng.normal(0, 0.02 * s)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        field = np.clip((R - d) / (s * rng.uniform(0.01, 0.04)), 0, 1)
    else:
        field = None
    visible = field > 0.5 if field is not None else np.ones((s, s), bool)
    gain = np.clip(rng.normal(1, 0.04, 3) * rng.normal(1, 0.05), 0.8, 1.2).astype(np.float32)
    return _Optics(field, visible, gain)


def _apply_optics(rng: np.random.Generator, img: np.ndarray, o: _Optics) -> None:
    s = img.shape[0]
    yy, xx = _grid(s)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, 0.08) * ((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s
    falloff = 1 - rng.uniform(0.05, 0.25) * (((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s / 2) ** 2)
    img *= (grad * falloff)[..., None] * o.gain
    if o.field is not None:
        dark = np.float32(rng.uniform(0.01, 0.07))
        img *= o.field[..., None]
        img += (1 - o.field)[..., None] * dark


def _hairs(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    n = int(rng.integers(1, 25))
    lines = []
    for _ in range(n):
        x, y = rng.uniform(-0.1, 1.1, 2) * s
        lines.append((_curve(rng, x, y, rng.uniform(0, 2 * np.pi), s * rng.uniform(0.2, 0.9), 0.06),
                      _px(s, rng.choice([1, 1, 1, 2, 2]))))
    _paint(img, _polyline_alpha(s, lines), _col(rng, "dark_brown") * rng.uniform(0.3, 0.8), rng.uniform(0.7, 0.95))


def _bubbles(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    n = int(rng.integers(1, 7))
    centres = rng.uniform(0.1, 0.9, (n, 2)) * s
    radii = rng.uniform(0.01, 0.06, n) * s
    _paint(img, _circles(s, centres, radii), np.ones(3, np.float32), 0.08)          # slight lightening inside
    _paint(img, _circles(s, centres, radii, _px(s, 1)), np.ones(3, np.float32), rng.uniform(0.35, 0.6))  # rim
    _paint(img, _circles(s, centres - radii[:, None] * 0.4, radii * 0.2), np.ones(3, np.float32), 0.6)  # glint


def _ruler(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    a = rng.uniform(0, 2 * np.pi)
    d = s * rng.uniform(0.3, 0.4)
    n_dir, t_dir = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c0 = np.array([s / 2, s / 2]) + d * n_dir
    half, step = s * 0.3, s * rng.uniform(0.025, 0.04)
    lines = [(np.stack([c0 - half * t_dir, c0 + half * t_dir]), _px(s, 1))]
    for k, t in enumerate(np.arange(-half, half, step)):
        p = c0 + t * t_dir
        lines.append((np.stack([p, p + n_dir * s * (0.05 if k % 5 == 0 else 0.025)]), _px(s, 1)))
    colour = np.full(3, 0.08 if rng.random() < 0.7 else 0.92, np.float32)
    _paint(img, _polyline_alpha(s, lines), colour, rng.uniform(0.6, 0.9))


def _glare(rng: np.random.Generator, img: np.ndarray, centre: tuple[float, float] | None = None,
           size: float | None = None) -> None:
    s = img.shape[0]
    c = np.asarray(centre if centre is not None else rng.uniform(0.2, 0.8, 2) * s)
    r = size if size is not None else s * rng.uniform(0.02, 0.05)
    a = cv2.GaussianBlur(_circles(s, c[None], np.array([r])), (0, 0), max(0.5, r / 2))
    _paint(img, a, np.ones(3, np.float32), rng.uniform(0.4, 0.8))
