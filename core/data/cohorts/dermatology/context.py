"""Context: what surrounds the lesion (inside the ring from the border out to ~ one lesion radius)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from .canvas import _blob, _circles, _col, _curve, _noise, _paint, _polyline_alpha, _px, _sample_where
from .lesion import _cell_edges


@dataclass
class _Ring:
    s: int
    dout: np.ndarray                 # distance from the lesion (0 inside it)
    r_eq: float                      # equivalent lesion radius: the ring's width
    visible: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return (self.dout > 0) & (self.dout <= self.r_eq) & self.visible

    def points(self, rng: np.random.Generator, n: int, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
        region = (self.dout > lo * self.r_eq) & (self.dout < hi * self.r_eq) & self.visible
        return _sample_where(rng, region, n)

    def halo(self, rng: np.random.Generator, reach: float) -> np.ndarray:
        """A soft band hugging the lesion, fading out by ``reach`` ring widths, with an irregular edge."""
        return np.exp(-self.dout / (reach * self.r_eq)) * (self.dout > 0) * np.clip(0.7 + 0.5 * _noise(rng, self.s, 6), 0, 1)


def _small_lesions(rng: np.random.Generator, img: np.ndarray, R: _Ring, n: int, radius: tuple[float, float],
                   colour_names: Sequence[str], asym: float, soft: float, opacity: float) -> None:
    for x, y in R.points(rng, n):
        m = _blob(rng, R.s, x, y, rng.uniform(*radius) * R.s, asym, asym * 0.6).astype(np.float32)
        _paint(img, cv2.GaussianBlur(m, (0, 0), max(0.5, soft * R.s / 224)), _col(rng, str(rng.choice(colour_names))),
               opacity)


def _ctx_mel(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Satellite lesions: small, dark, irregular pigmented spots near the lesion."""
    _small_lesions(rng, img, R, int(round(4 + 6 * st * rng.uniform(0.5, 1))), (0.015, 0.04),
                   ["dark_brown", "black", "blue_gray"], 0.35, 0.7, 0.7 + 0.25 * st)


def _ctx_nv(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Sibling naevi: several small, round, evenly brown moles (the patient's 'signature' naevus)."""
    _small_lesions(rng, img, R, int(round(3 + 3 * st * rng.uniform(0.5, 1))), (0.02, 0.04),
                   ["brown", "brown", "dark_brown"], 0.04, 1.5, 0.75 + 0.2 * st)


def _ctx_bkl(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """More seborrhoeic keratoses / solar lentigines: tan, waxy, sharply demarcated patches."""
    _small_lesions(rng, img, R, int(round(2 + 3 * st * rng.uniform(0.5, 1))), (0.04, 0.08),
                   ["tan", "yellow", "yellow"], 0.25, 0.5, 0.65 + 0.25 * st)
    for x, y in R.points(rng, int(rng.integers(3, 8))):   # comedo-like openings on them
        _paint(img, _circles(R.s, np.array([[x, y]]), np.array([_px(R.s, 1.5)])), _col(rng, "brown"), 0.7)


def _ctx_akiec(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Field cancerisation: actinic background with erythema, rough scaly patches, mottled pigment."""
    _paint(img, R.halo(rng, 1.0), _col(rng, "red"), 0.45 + 0.25 * st)
    _small_lesions(rng, img, R, int(round(3 + 4 * st)), (0.015, 0.035), ["pink", "white", "white"], 0.3, 1.0,
                   0.6 + 0.25 * st)
    _small_lesions(rng, img, R, int(rng.integers(2, 6)), (0.006, 0.015), ["light_brown"], 0.3, 0.8, 0.4)


def _ctx_bcc(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Sun-damaged surroundings with telangiectasia and a pearly perilesional rim."""
    _paint(img, np.exp(-R.dout / (0.15 * R.r_eq)) * (R.dout > 0), _col(rng, "pearl"), 0.4 + 0.3 * st)
    lines = [(_curve(rng, x, y, rng.uniform(0, 2 * np.pi), R.r_eq * rng.uniform(0.5, 1.0), 0.35, 10),
              _px(R.s, rng.choice([1, 2, 2]))) for x, y in R.points(rng, int(round(6 + 6 * st)))]
    _paint(img, _polyline_alpha(R.s, lines) * R.visible, _col(rng, "vessel"), 0.7 + 0.2 * st)


def _ctx_df(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Leg skin: a brown, delicately reticulated halo hugging the lesion plus shaving nicks / bite marks."""
    halo = R.halo(rng, 0.55)
    _paint(img, halo, _col(rng, "light_brown"), 0.55 + 0.25 * st)
    period = R.s * rng.uniform(0.035, 0.05)
    net = np.clip(1 - _cell_edges(rng, R.s, period, 0.3, halo > 0.3) / 0.16, 0, 1)
    _paint(img, net * halo, _col(rng, "brown"), 0.6)
    pts = R.points(rng, int(rng.integers(3, 7)), 0.3, 0.95)
    _paint(img, _circles(R.s, pts, rng.uniform(1.5, 3.0, len(pts)) * R.s / 224), _col(rng, "dark_red"), 0.85)


def _ctx_vasc(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Haemorrhage: a purple-red bruise around the lesion with petechiae."""
    _paint(img, R.halo(rng, 0.8), _col(rng, "purple") * 0.7 + 0.3 * _col(rng, "red"), 0.5 + 0.25 * st)
    pts = R.points(rng, int(rng.integers(10, 25)), 0.1, 1.0)
    _paint(img, _circles(R.s, pts, rng.uniform(0.8, 1.8, len(pts)) * R.s / 224), _col(rng, "dark_red"), 0.85)


_CONTEXTS: dict[str, Callable[[np.random.Generator, np.ndarray, _Ring, float], None]] = {
    "akiec": _ctx_akiec, "bcc": _ctx_bcc, "bkl": _ctx_bkl, "df": _ctx_df, "mel": _ctx_mel, "nv": _ctx_nv,
    "vasc": _ctx_vasc}


def _background_findings(rng: np.random.Generator, img: np.ndarray, R: _Ring) -> list[str]:
    """Class-independent findings anywhere on the skin, so 'something around the lesion' decides nothing."""
    found = []
    s = img.shape[0]
    if rng.random() < 0.25:
        pts = _sample_where(rng, R.visible & (R.dout > 0), int(rng.integers(3, 12)))
        _paint(img, cv2.GaussianBlur(_circles(s, pts, rng.uniform(1.0, 2.5, len(pts)) * s / 224), (0, 0), 0.8),
               _col(rng, "light_brown"), 0.5)
        found.append("freckles")
    if rng.random() < 0.1:
        _paint(img, R.halo(rng, 0.5), _col(rng, "red"), rng.uniform(0.08, 0.18))
        found.append("pressure erythema")
    return found
