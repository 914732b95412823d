"""Image primitives (float32 RGB in [0, 1]; geometry in pixels of an s x s canvas)."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

Colour = tuple[float, float, float]
_COLOURS: dict[str, Colour] = {
    "tan": (0.78, 0.60, 0.45), "light_brown": (0.62, 0.42, 0.28), "brown": (0.45, 0.28, 0.18),
    "dark_brown": (0.30, 0.18, 0.12), "black": (0.12, 0.09, 0.09), "blue_gray": (0.42, 0.47, 0.56),
    "blue_white": (0.66, 0.71, 0.80), "red": (0.80, 0.22, 0.22), "pink": (0.90, 0.60, 0.60),
    "pearl": (0.94, 0.82, 0.80), "white": (0.96, 0.94, 0.91), "purple": (0.45, 0.15, 0.35),
    "dark_red": (0.48, 0.08, 0.12), "yellow": (0.86, 0.76, 0.52), "vessel": (0.82, 0.12, 0.18),
}
_SKIN_TONES = [(0.94, 0.79, 0.71), (0.91, 0.73, 0.63), (0.85, 0.65, 0.53), (0.77, 0.56, 0.43), (0.63, 0.45, 0.34)]
_SKIN_W = [0.3, 0.3, 0.22, 0.13, 0.05]


def _col(rng: np.random.Generator, name: str, jitter: float = 0.04) -> np.ndarray:
    return np.clip(np.asarray(_COLOURS[name], np.float32) + rng.normal(0, jitter, 3).astype(np.float32), 0, 1)


@lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    return yy, xx


def _noise(rng: np.random.Generator, s: int, cells: float) -> np.ndarray:
    """Smooth value noise in about [-1, 1] with ``cells`` features across the canvas."""
    c = max(2, int(round(cells)))
    base = rng.uniform(-1, 1, (c + 1, c + 1)).astype(np.float32)
    return cv2.resize(base, (s, s), interpolation=cv2.INTER_CUBIC)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray | Sequence[float], opacity: float = 1.0) -> None:
    """Alpha-composite a flat colour (or a colour image) over ``img`` in place, touching only the
    bounding box where ``alpha`` is non-zero (most shapes are small)."""
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = np.clip(alpha[box] * np.float32(opacity), 0, 1)[..., None]
    colour = np.asarray(colour, np.float32)
    target = colour[box] if colour.ndim == 3 else colour
    img[box] += a * (target - img[box])


def _px(s: int, v: float) -> int:
    """A length given for a 224-pixel image, scaled to this canvas (at least 1 pixel)."""
    return max(1, int(round(v * s / 224)))


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy) * 16).astype(np.int32)  # cv2 sub-pixel coordinates (shift=4)


def _circles(s: int, centres: np.ndarray, radii: np.ndarray, thickness: int = -1) -> np.ndarray:
    """Anti-aliased circles -> alpha in [0, 1]."""
    can = np.zeros((s, s), np.uint8)
    for (x, y), r in zip(centres, radii):
        cv2.circle(can, (int(round(x * 16)), int(round(y * 16))), max(1, int(round(r * 16))), 255,
                   thickness, cv2.LINE_AA, 4)
    return can.astype(np.float32) / 255


def _polyline_alpha(s: int, lines: list[tuple[np.ndarray, int]]) -> np.ndarray:
    can = np.zeros((s, s), np.uint8)
    for pts, th in lines:
        cv2.polylines(can, [_pts(pts)], False, 255, th, cv2.LINE_AA, 4)
    return can.astype(np.float32) / 255


def _blob(rng: np.random.Generator, s: int, cx: float, cy: float, r: float, asym: float, rough: float,
          elong: float = 0.0) -> np.ndarray:
    """A closed shape r(theta): low harmonics make it asymmetric, high harmonics make the border irregular."""
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    rad = np.ones_like(th)
    for k in (1, 2, 3):
        rad += asym * rng.uniform(0.3, 1.0) * np.cos(k * th + rng.uniform(0, 2 * np.pi)) / k ** 0.3
    for k in range(4, 16):
        rad += rough * rng.normal(0, 1) / k ** 0.7 * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    rad *= 1 + elong * np.cos(2 * (th - rng.uniform(0, np.pi)))
    rad = np.clip(rad, 0.35, None)
    pts = np.stack([cx + r * rad * np.cos(th), cy + r * rad * np.sin(th)], -1)
    m = np.zeros((s, s), np.uint8)
    cv2.fillPoly(m, [_pts(pts)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _curve(rng: np.random.Generator, x: float, y: float, angle: float, length: float, wiggle: float,
           n: int = 12) -> np.ndarray:
    """A random-walk polyline (hair, vessel, streak)."""
    pts = [(x, y)]
    for _ in range(n):
        angle += rng.normal(0, wiggle)
        x += math.cos(angle) * length / n
        y += math.sin(angle) * length / n
        pts.append((x, y))
    return np.asarray(pts, np.float32)


def _sample_where(rng: np.random.Generator, region: np.ndarray, n: int) -> np.ndarray:
    """``n`` random (x, y) points inside a boolean region (empty region -> no points)."""
    ys, xs = np.nonzero(region)
    if len(xs) == 0 or n <= 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.integers(0, len(xs), n)
    return np.stack([xs[idx], ys[idx]], -1).astype(np.float32) + rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32)
