"""Lesion: geometry, colour and dermoscopic structures per class."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from .canvas import _blob, _circles, _col, _curve, _grid, _noise, _paint, _polyline_alpha, _px, _sample_where
from .optics import _glare
from .plan import _Plan


@dataclass
class _Lesion:
    s: int
    cx: float
    cy: float
    r: float
    mask: np.ndarray                 # bool
    depth: np.ndarray                # 0 at the border .. 1 at the deepest point
    layer: np.ndarray                # the lesion's own colours [s, s, 3]
    structures: list[str] = field(default_factory=list)

    def points(self, rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        region = self.mask & (self.depth >= lo) & (self.depth <= hi)
        return _sample_where(rng, region if region.any() else self.mask, n)


# (radius as a fraction of s, asymmetry, border roughness, edge softness in px at 224)
_GEOMETRY: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "mel": ((0.17, 0.26), (0.12, 0.28), (0.10, 0.24), (0.8, 2.0)),
    "nv": ((0.12, 0.20), (0.02, 0.07), (0.01, 0.04), (2.0, 4.0)),
    "bkl": ((0.16, 0.25), (0.06, 0.16), (0.05, 0.12), (0.6, 1.2)),
    "bcc": ((0.13, 0.21), (0.05, 0.14), (0.04, 0.10), (1.5, 3.0)),
    "akiec": ((0.13, 0.21), (0.08, 0.18), (0.08, 0.16), (3.0, 5.0)),
    "df": ((0.11, 0.17), (0.02, 0.06), (0.02, 0.05), (1.5, 3.0)),
    "vasc": ((0.09, 0.15), (0.02, 0.08), (0.02, 0.05), (0.6, 1.2)),
    "generic": ((0.12, 0.23), (0.03, 0.14), (0.02, 0.10), (1.0, 3.0)),
}


def _lesion_geometry(rng: np.random.Generator, s: int, look: str, strength: float) -> tuple[float, float, float, float]:
    """Radius, asymmetry, roughness, softness: a weak look lies between the generic and the class's range."""
    def draw(key: str) -> np.ndarray:
        return np.array([rng.uniform(lo, hi) for lo, hi in _GEOMETRY[key]])
    g = draw("generic")
    v = g if look == "generic" else strength * draw(look) + (1 - strength) * g
    r, asym, rough, soft = v
    return r * s, asym, rough, soft * s / 224


def _colour_field(rng: np.random.Generator, L: _Lesion, colours: list[np.ndarray], layout: str) -> None:
    """Fill the lesion layer: uniform, concentric (centre -> edge) or patchy (irregular zones)."""
    s = L.s
    if layout == "concentric" and len(colours) > 1:
        t = np.clip(L.depth * rng.uniform(1.2, 2.0), 0, 1)[..., None]
        L.layer[:] = (1 - t) * colours[-1] + t * colours[0]
    elif layout == "patchy" and len(colours) > 1:
        cells = rng.uniform(3, 7) * s / (2 * L.r + 1) * 0.5
        fields = np.stack([_noise(rng, s, cells) for _ in colours], -1) * rng.uniform(4, 9)
        w = np.exp(fields - fields.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        L.layer[:] = w @ np.stack(colours)
    else:
        L.layer[:] = colours[0]
    L.layer *= (1 + 0.06 * _noise(rng, s, s / 10))[..., None]


def _cell_edges(rng: np.random.Generator, s: int, period: float, jitter: float, region: np.ndarray) -> np.ndarray:
    """Distance to the nearest cell wall of a jittered Voronoi tiling (F2 - F1 of cellular noise), in
    units of ``period``, 0 on the walls; computed inside ``region``'s bounding box only (large elsewhere).
    Draws a reticular (honeycomb-like) network."""
    out = np.full((s, s), 9.0, np.float32)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if len(rows) == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    yy, xx = (g[box] for g in _grid(s))
    n = int(s / period) + 3
    seeds = ((np.mgrid[0:n, 0:n].transpose(1, 2, 0)[..., ::-1] + 0.5 + rng.uniform(-jitter, jitter, (n, n, 2)))
             * period - period).astype(np.float32)   # (x, y) per cell
    gx, gy = (xx / period).astype(np.int32) + 1, (yy / period).astype(np.int32) + 1
    f1 = np.full(xx.shape, np.inf, np.float32)
    f2 = np.full(xx.shape, np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            p = seeds[np.clip(gy + dy, 0, n - 1), np.clip(gx + dx, 0, n - 1)]
            d = np.hypot(xx - p[..., 0], yy - p[..., 1])
            f2 = np.where(d < f1, f1, np.minimum(f2, d))
            f1 = np.minimum(f1, d)
    out[box] = (f2 - f1) / period
    return out


def _network(rng: np.random.Generator, L: _Lesion, colour: np.ndarray, opacity: float, regular: bool,
             zone: np.ndarray | None = None) -> None:
    """Pigment network: a reticular grid of pigmented lines around paler holes. Regular (naevus): thin,
    even, fading at the periphery; atypical (melanoma): thick, uneven lines that stop abruptly in patches."""
    s = L.s
    period = s * rng.uniform(0.035, 0.05)
    edges = _cell_edges(rng, s, period, 0.3 if regular else 0.5, L.mask)
    width = 0.16 if regular else 0.16 * (1 + 0.9 * _noise(rng, s, 6))
    line = np.clip(1 - edges / np.maximum(width, 0.04), 0, 1)
    if zone is None:
        zone = np.clip(L.depth / 0.35, 0, 1) if regular else (_noise(rng, s, 5) > -0.2).astype(np.float32)
    _paint(L.layer, line * zone * L.mask, colour, opacity)
    L.structures.append("regular network" if regular else "atypical network")


def _dots(rng: np.random.Generator, L: _Lesion, n: int, radius: tuple[float, float], colour: np.ndarray,
          opacity: float, lo: float = 0.0, hi: float = 1.0, name: str = "dots/globules") -> None:
    pts = L.points(rng, n, lo, hi)
    radii = rng.uniform(*radius, len(pts)) * L.s / 224
    _paint(L.layer, cv2.GaussianBlur(_circles(L.s, pts, radii), (0, 0), 0.6), colour, opacity)
    L.structures.append(name)


def _streaks(rng: np.random.Generator, L: _Lesion, n: int, colour: np.ndarray, opacity: float) -> None:
    """Radial streaks / pseudopods at the periphery (melanoma, some Spitz naevi)."""
    pts = L.points(rng, n, 0.0, 0.25)
    lines = []
    for x, y in pts:
        a = math.atan2(y - L.cy, x - L.cx)
        length = L.r * rng.uniform(0.25, 0.5)
        lines.append((_curve(rng, x - math.cos(a) * length * 0.6, y - math.sin(a) * length * 0.6, a, length, 0.08, 5),
                      _px(L.s, rng.choice([1, 2]))))
    _paint(L.layer, _polyline_alpha(L.s, lines), colour, opacity)
    L.structures.append("streaks")


def _veil(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Blue-white veil: a hazy blue-grey-white area over part of the lesion."""
    zone = (_noise(rng, L.s, 4) > rng.uniform(-0.1, 0.3)).astype(np.float32) * L.mask
    _paint(L.layer, cv2.GaussianBlur(zone, (0, 0), _px(L.s, 3)), _col(rng, "blue_white"), opacity)
    L.structures.append("blue-white veil")


def _peppering(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Regression: fine blue-grey granules (peppering) in one area."""
    zone = L.mask & (_noise(rng, L.s, 4) > 0.2)
    pts = _sample_where(rng, zone if zone.any() else L.mask, int(rng.integers(30, 80)))
    _paint(L.layer, _circles(L.s, pts, np.full(len(pts), 0.8 * L.s / 224)), _col(rng, "blue_gray"), opacity)
    L.structures.append("peppering")


def _vessels(rng: np.random.Generator, L: _Lesion, trunks: int, opacity: float) -> None:
    """Arborizing (tree-like) vessels: sharp red branches narrowing outwards (basal cell carcinoma)."""
    lines: list[tuple[np.ndarray, int]] = []

    def branch(x: float, y: float, a: float, length: float, th: int, level: int) -> None:
        pts = _curve(rng, x, y, a, length, 0.18, 8)
        lines.append((pts, th))
        if level > 0:
            for sign in (-1, 1):
                k = int(rng.integers(3, 8))
                branch(float(pts[k, 0]), float(pts[k, 1]), a + sign * rng.uniform(0.35, 0.9),
                       length * rng.uniform(0.45, 0.7), max(1, th - 1), level - 1)

    for x, y in L.points(rng, trunks, 0.3, 1.0):
        branch(float(x), float(y), rng.uniform(0, 2 * np.pi), L.r * rng.uniform(0.6, 1.1), _px(L.s, 2.5), 2)
    _paint(L.layer, _polyline_alpha(L.s, lines) * L.mask, _col(rng, "vessel", 0.03), opacity)
    L.structures.append("arborizing vessels")


def _nests(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Blue-grey ovoid nests (basal cell carcinoma)."""
    can = np.zeros((L.s, L.s), np.uint8)
    for x, y in L.points(rng, n, 0.2, 1.0):
        ax = L.r * rng.uniform(0.12, 0.3)
        cv2.ellipse(can, (int(x * 16), int(y * 16)), (int(ax * 16), int(ax * rng.uniform(0.5, 0.9) * 16)),
                    rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, 4)
    _paint(L.layer, cv2.GaussianBlur(can.astype(np.float32) / 255, (0, 0), _px(L.s, 1.5)), _col(rng, "blue_gray"), opacity)
    L.structures.append("blue-grey ovoid nests")


def _ulcer(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    x, y = L.points(rng, 1, 0.4, 1.0)[0]
    m = _blob(rng, L.s, x, y, L.r * rng.uniform(0.15, 0.3), 0.2, 0.15).astype(np.float32)
    _paint(L.layer, cv2.GaussianBlur(m, (0, 0), 1.0), _col(rng, "dark_red"), opacity)
    L.structures.append("ulceration")


def _shiny_lines(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Shiny white (chrysalis) lines: short, crossing at right angles."""
    lines = []
    for x, y in L.points(rng, n, 0.2, 1.0):
        a = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15)
        length = L.r * rng.uniform(0.15, 0.3)
        lines.append((np.array([[x, y], [x + math.cos(a) * length, y + math.sin(a) * length]]), _px(L.s, 1)))
    _paint(L.layer, _polyline_alpha(L.s, lines) * L.mask, _col(rng, "white"), opacity)
    L.structures.append("shiny white lines")


def _scale(rng: np.random.Generator, L: _Lesion, coverage: float, opacity: float) -> None:
    """White-yellow surface scale: rough, patchy and slightly granular."""
    zone = (_noise(rng, L.s, 6) > 1 - 2 * coverage).astype(np.float32) * L.mask
    grain = 0.75 + 0.25 * _noise(rng, L.s, L.s / 5)
    _paint(L.layer, cv2.GaussianBlur(zone, (0, 0), 1.2) * grain, _col(rng, "white") * 0.97 + 0.03 * _col(rng, "yellow"),
           opacity)
    L.structures.append("scale")


def _rosettes(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Strawberry pattern: white-yellow follicular openings on a red pseudo-network (actinic keratosis)."""
    pts = L.points(rng, n, 0.1, 1.0)
    _paint(L.layer, _circles(L.s, pts, rng.uniform(1.5, 3.0, len(pts)) * L.s / 224), _col(rng, "yellow") + 0.1, opacity)
    _paint(L.layer, _circles(L.s, pts, rng.uniform(3.5, 5.0, len(pts)) * L.s / 224, _px(L.s, 1)), _col(rng, "red"),
           opacity * 0.6)
    L.structures.append("strawberry pattern")


def _elevation(rng: np.random.Generator, L: _Lesion, amount: float) -> None:
    """A raised lesion: lit from one side, with a specular highlight."""
    yy, xx = _grid(L.s)
    a = rng.uniform(0, 2 * np.pi)
    shade = 1 + amount * (((xx - L.cx) * math.cos(a) + (yy - L.cy) * math.sin(a)) / L.r).clip(-1, 1)
    L.layer *= shade[..., None]
    hx, hy = L.cx + math.cos(a) * L.r * 0.4, L.cy + math.sin(a) * L.r * 0.4
    _glare(rng, L.layer, (hx, hy), L.r * rng.uniform(0.08, 0.18))
    L.structures.append("raised")


def _fissures(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Cerebriform fissures and ridges (seborrhoeic keratosis): the winding zero-contours of a noise field."""
    cells = L.s / (L.s * rng.uniform(0.05, 0.08))
    furrow = np.exp(-_noise(rng, L.s, cells) ** 2 / 0.004)
    _paint(L.layer, furrow * L.mask, _col(rng, "dark_brown"), opacity)
    L.structures.append("fissures/ridges")


def _lacunae(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Red-purple lacunae separated by pale septa (angioma)."""
    pts = L.points(rng, n, 0.1, 1.0)
    for colour_name in ("red", "dark_red", "purple"):
        sel = pts[rng.random(len(pts)) < 0.45]
        radii = L.r * rng.uniform(0.1, 0.22, len(sel))
        _paint(L.layer, _circles(L.s, sel, radii) * L.mask, _col(rng, colour_name), opacity)
    L.structures.append("lacunae")


def _central_patch(rng: np.random.Generator, L: _Lesion, size: float, opacity: float) -> None:
    """Central white scar-like patch (dermatofibroma)."""
    zone = np.clip((L.depth - (1 - size)) / 0.15, 0, 1) * (0.8 + 0.2 * _noise(rng, L.s, 6))
    _paint(L.layer, zone, _col(rng, "white") * 0.95 + 0.05 * _col(rng, "pink"), opacity)
    L.structures.append("central white patch")


def _look_mel(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = ["light_brown", "brown", "dark_brown", "black", "blue_gray", "red", "white"]
    k = 2 + int(round(st * rng.uniform(1, 3)))
    chosen = rng.choice(names, size=k, replace=False, p=np.array([3, 3, 3, 2, 2, 1, 0.6]) / 14.6)
    _colour_field(rng, L, [_col(rng, c) for c in chosen], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.6, lambda: _network(rng, L, _col(rng, "dark_brown"), 0.5 + 0.4 * st, regular=False)),
        (0.6, lambda: _dots(rng, L, int(rng.integers(6, 20)), (1.5, 4.5), _col(rng, rng.choice(["black", "dark_brown"])),
                            0.85, 0.0, 0.35)),
        (0.45, lambda: _streaks(rng, L, int(rng.integers(4, 12)), _col(rng, "dark_brown"), 0.85)),
        (0.4, lambda: _veil(rng, L, 0.45 + 0.25 * st)),
        (0.3, lambda: _peppering(rng, L, 0.8)),
        (0.15, lambda: _shiny_lines(rng, L, int(rng.integers(3, 8)), 0.7)),
    ]
    _some(rng, options, 1 + int(round(2 * st)))
    return 0.9


def _look_nv(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = rng.choice(["tan", "light_brown", "brown"], size=int(rng.integers(1, 3)), replace=False)
    cols = [_col(rng, c) for c in sorted(names, key=["brown", "light_brown", "tan"].index)]  # darker centre
    _colour_field(rng, L, cols, "concentric")
    u = rng.random()
    if u < 0.55:
        _network(rng, L, _col(rng, "dark_brown"), 0.5 + 0.4 * st, regular=True)
    elif u < 0.8:
        _dots(rng, L, int(rng.integers(15, 35)), (2.5, 3.5), _col(rng, "brown") * 0.85, 0.7, 0.15, 1.0, "regular globules")
    else:
        L.structures.append("homogeneous")
    return 0.85


def _look_bkl(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = rng.choice(["tan", "light_brown", "yellow", "brown"], size=int(rng.integers(2, 4)), replace=False)
    _colour_field(rng, L, [_col(rng, c) for c in names], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.6, lambda: _dots(rng, L, int(rng.integers(3, 10)), (2.0, 4.0), _col(rng, "white"), 0.9, 0.1, 1.0,
                            "milia-like cysts")),
        (0.55, lambda: _dots(rng, L, int(rng.integers(3, 10)), (2.0, 4.0), _col(rng, "dark_brown") * 0.7, 0.85, 0.1, 1.0,
                             "comedo-like openings")),
        (0.5, lambda: _fissures(rng, L, 0.35 + 0.3 * st)),
        (0.25, lambda: _network(rng, L, _col(rng, "light_brown") * 0.85, 0.3, regular=True,
                                zone=np.ones_like(L.depth))),
    ]
    _some(rng, options, 1 + int(round(st)))
    if rng.random() < 0.3:
        _glare(rng, L.layer, tuple(L.points(rng, 1, 0.3)[0]), L.r * 0.12)  # waxy sheen
    return 0.9


def _look_bcc(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pearl"), _col(rng, "pink")], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.85, lambda: _vessels(rng, L, int(rng.integers(2, 5)), 0.7 + 0.25 * st)),
        (0.5, lambda: _nests(rng, L, int(rng.integers(1, 5)), 0.7)),
        (0.3, lambda: _ulcer(rng, L, 0.85)),
        (0.3, lambda: _shiny_lines(rng, L, int(rng.integers(3, 8)), 0.7)),
        (0.6, lambda: _elevation(rng, L, 0.08)),
    ]
    _some(rng, options, 1 + int(round(st)))
    return float(rng.uniform(0.55, 0.8))


def _look_akiec(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = ["pink", "red"] + (["light_brown"] if rng.random() < 0.2 else [])
    _colour_field(rng, L, [_col(rng, c) for c in names], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.85, lambda: _scale(rng, L, rng.uniform(0.25, 0.5), 0.6 + 0.3 * st)),
        (0.5, lambda: _rosettes(rng, L, int(rng.integers(10, 30)), 0.8)),
        (0.5, lambda: _dots(rng, L, int(rng.integers(15, 40)), (1.0, 1.8), _col(rng, "vessel"), 0.8, 0.0, 1.0,
                            "dotted vessels")),
    ]
    _some(rng, options, 1 + int(round(st)))
    return float(rng.uniform(0.6, 0.85))


def _look_df(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pink") * 0.9 + 0.1, _col(rng, "light_brown") * 0.9], "concentric")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.95, lambda: _central_patch(rng, L, rng.uniform(0.4, 0.65), 0.7 + 0.3 * st)),
        (0.9, lambda: _network(rng, L, _col(rng, "brown"), 0.6,
                               regular=True, zone=np.clip(1 - L.depth / 0.45, 0, 1))),
        (0.4, lambda: _elevation(rng, L, 0.06)),
    ]
    _some(rng, options, 1 + int(round(st)))
    return 0.85


def _look_vasc(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pink") * 0.8 + 0.2 * _col(rng, "white"), _col(rng, "red")], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.95, lambda: _lacunae(rng, L, int(rng.integers(6, 16)), 0.85 + 0.1 * st)),
        (0.3, lambda: _veil(rng, L, 0.3)),
        (0.2, lambda: _dots(rng, L, int(rng.integers(1, 3)), (5.0, 9.0), _col(rng, "black"), 0.8, 0.2, 1.0,
                            "thrombosis")),
    ]
    _some(rng, options, 1)
    return 0.95


def _look_generic(rng: np.random.Generator, L: _Lesion, pigmented: bool) -> float:
    """An undecisive lesion: brown (or pink) and bland, with structures that belong to no class."""
    if pigmented:
        names = list(rng.choice(["tan", "light_brown", "brown"], size=int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.25:
            names.append("dark_brown")
        _colour_field(rng, L, [_col(rng, c) for c in names], str(rng.choice(["concentric", "patchy", "uniform"])))
        if rng.random() < 0.4:
            _network(rng, L, _col(rng, "brown") * 0.8, rng.uniform(0.2, 0.45), regular=bool(rng.random() < 0.5))
        if rng.random() < 0.35:
            _dots(rng, L, int(rng.integers(3, 12)), (1.5, 3.0), _col(rng, "brown") * 0.8, 0.6)
        return float(rng.uniform(0.75, 0.9))
    _colour_field(rng, L, [_col(rng, "pink"), _col(rng, "pink") * 0.9 + 0.1 * _col(rng, "red")], "patchy")
    if rng.random() < 0.3:
        _scale(rng, L, 0.15, 0.35)
    if rng.random() < 0.35:
        _dots(rng, L, int(rng.integers(5, 15)), (1.0, 1.6), _col(rng, "vessel"), 0.5, 0.0, 1.0, "dotted vessels")
    if rng.random() < 0.2:
        _paint(L.layer, L.mask * (_noise(rng, L.s, 4) > 0.3), _col(rng, "light_brown"), 0.4)
    return float(rng.uniform(0.55, 0.8))


_LOOKS: dict[str, Callable[[np.random.Generator, _Lesion, float], float]] = {
    "akiec": _look_akiec, "bcc": _look_bcc, "bkl": _look_bkl, "df": _look_df, "mel": _look_mel, "nv": _look_nv,
    "vasc": _look_vasc}


def _some(rng: np.random.Generator, options: list[tuple[float, Callable[[], None]]], at_least: int) -> None:
    """Draw each optional structure with its probability, topping up to ``at_least`` of them."""
    chosen = [i for i, (p, _) in enumerate(options) if rng.random() < p]
    rest = [i for i in range(len(options)) if i not in chosen]
    while len(chosen) < min(at_least, len(options)):
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    for i in sorted(chosen):
        options[i][1]()


def _lesion_shape(rng: np.random.Generator, s: int, plan: _Plan) -> tuple[_Lesion, float]:
    """The lesion's footprint (drawn before anything else: the context ring is defined by it)."""
    r, asym, rough, soft = _lesion_geometry(rng, s, plan.lesion_look, plan.lesion_strength)
    cx, cy = s / 2 + rng.normal(0, 0.04 * s, 2)
    mask = _blob(rng, s, cx, cy, r, asym, rough, elong=rng.uniform(0, 0.15))
    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    depth = d / max(float(d.max()), 1e-6)
    return _Lesion(s, float(cx), float(cy), float(r), mask, depth, np.zeros((s, s, 3), np.float32)), soft


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, L: _Lesion, soft: float, plan: _Plan) -> None:
    if plan.lesion_look == "generic":
        opacity = _look_generic(rng, L, plan.pigmented)
    else:
        opacity = _LOOKS[plan.lesion_look](rng, L, plan.lesion_strength)
    alpha = cv2.GaussianBlur(L.mask.astype(np.float32), (0, 0), max(0.5, soft))
    _paint(img, alpha, np.clip(L.layer, 0, 1), opacity)
