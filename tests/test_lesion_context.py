"""core.imaging (segmentation, regions) and core.explain.lesion_context on images drawn here: skin + noise, a
dark ellipse, hairs, a vignette."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.explain.lesion_context import cam_shares, split_heatmap, top_region_iou
from core.imaging import (auto_lesion_mask, context_ring, fallback_mask, keep_region, region_masks,
                          segmentation_quality)

SIZE = 192


def ellipse_mask(shape=(SIZE, SIZE), centre=(100, 90), axes=(40, 28), angle=20.0) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    return m.astype(bool)


def draw_case(seed: int = 0, hairs: int = 0, vignette: bool = False, centre=(100, 90), axes=(40, 28),
              angle: float = 20.0, size: int = SIZE, colour=(120, 80, 60)) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, truth mask): noisy skin, a brown ellipse with a soft edge, hairs, a dark vignette."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float64)
    img[:] = (222, 180, 160)
    truth = ellipse_mask((size, size), centre, axes, angle)
    soft = cv2.GaussianBlur(truth.astype(np.float64), (0, 0), 1.5)[..., None]
    lesion = np.array(colour, float) + rng.normal(0, 10, (size, size, 1))   # mottled pigment
    img = (1 - soft) * img + soft * lesion
    img += rng.normal(0, 6, img.shape)
    for _ in range(hairs):   # dark curved hairs crossing the image, lesion included
        x0, y0 = rng.uniform(0, size, 2)
        a = rng.uniform(0, math.pi)
        t = np.linspace(-size, size, 80)
        bend = rng.uniform(-0.002, 0.002)
        pts = np.stack([x0 + t * math.cos(a) + bend * t ** 2, y0 + t * math.sin(a)], 1).round().astype(np.int32)
        cv2.polylines(img, [pts], False, (45, 30, 25), int(rng.integers(1, 3)), cv2.LINE_AA)
    if vignette:   # circular field of view, black outside, slightly feathered
        yy, xx = np.mgrid[0:size, 0:size]
        r = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
        fade = np.clip((r - 1.0) / 0.05, 0, 1)[..., None]
        img = (1 - fade) * img + fade * 15
    return np.clip(img, 0, 255).astype(np.uint8), truth


# ----------------------------------------------------------------------------------------------------------------------
# auto_lesion_mask

@pytest.mark.parametrize("hairs,vignette", [(0, False), (6, False), (0, True), (6, True)])
def test_auto_mask_matches_drawn_ellipse(hairs, vignette):
    img, truth = draw_case(seed=hairs + vignette, hairs=hairs, vignette=vignette)
    mask, info = auto_lesion_mask(Image.fromarray(img), return_info=True)
    assert info["method"] == "otsu", info
    assert mask.dtype == bool and mask.shape == truth.shape
    assert segmentation_quality(mask, truth)["dice"] > 0.8


def test_auto_mask_lesion_touching_vignette_and_large_image():
    img, truth = draw_case(seed=3, hairs=4, vignette=True, centre=(150, 96), axes=(45, 30), angle=0)
    assert segmentation_quality(auto_lesion_mask(img), truth)["dice"] > 0.8
    big = cv2.resize(img, (600, 600), interpolation=cv2.INTER_LINEAR)   # segmented at reduced size, mask at full
    big_truth = cv2.resize(truth.astype(np.uint8), (600, 600), interpolation=cv2.INTER_NEAREST).astype(bool)
    mask = auto_lesion_mask(big)
    assert mask.shape == (600, 600)
    assert segmentation_quality(mask, big_truth)["dice"] > 0.8


def test_auto_mask_pink_lesion_and_uneven_light():
    # a pink lesion is barely darker than the skin in the blue channel: the colour distance still finds it
    img, truth = draw_case(seed=7, hairs=3, colour=(230, 130, 140))
    mask, info = auto_lesion_mask(img, return_info=True)
    assert info["method"] == "otsu" and info["contrast"] > info["skin_spread"]
    assert segmentation_quality(mask, truth)["dice"] > 0.8
    # illumination falling off by 25% towards the corners is absorbed by the quadratic skin model
    img, truth = draw_case(seed=8, vignette=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    light = 1 - 0.25 * ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2) / (SIZE / 2) ** 2
    mask, info = auto_lesion_mask((img * light[..., None]).astype(np.uint8), return_info=True)
    assert info["vignette_fraction"] > 0.1
    assert segmentation_quality(mask, truth)["dice"] > 0.8


def test_auto_mask_float_and_grayscale_inputs():
    img, truth = draw_case(seed=5)
    assert segmentation_quality(auto_lesion_mask(img / 255.0), truth)["dice"] > 0.8
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert segmentation_quality(auto_lesion_mask(Image.fromarray(gray)), truth)["dice"] > 0.8


@pytest.mark.parametrize("kind", ["uniform", "noise", "vignette_only"])
def test_fallback_on_images_without_lesion(kind):
    rng = np.random.default_rng(0)
    img = np.full((SIZE, SIZE, 3), (222, 180, 160), np.float64)
    if kind != "uniform":
        img += rng.normal(0, 6, img.shape)
    if kind == "vignette_only":
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        img[np.hypot(xx - SIZE / 2, yy - SIZE / 2) > SIZE / 2] = 15
    mask, info = auto_lesion_mask(img.astype(np.uint8), return_info=True)
    assert info["method"] == "fallback" and info["reason"]
    assert np.array_equal(mask, fallback_mask((SIZE, SIZE)))
    assert mask.mean() == pytest.approx(0.20, abs=0.01)
    assert not isinstance(auto_lesion_mask(img.astype(np.uint8)), tuple)


# ----------------------------------------------------------------------------------------------------------------------
# regions

def test_context_ring_disjoint_and_surrounding():
    lesion = ellipse_mask()
    ring = context_ring(lesion)
    assert not (ring & lesion).any()
    r_eq = math.sqrt(lesion.sum() / math.pi)
    # surrounds: every pixel just outside the lesion is in the ring, and the ring is ~width wide
    border = (cv2.dilate(lesion.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)) & ~lesion
    assert ring[border].all()
    d = ndimage.distance_transform_edt(~lesion)
    assert d[ring].max() <= r_eq + 1e-9 and ring[(d > 0) & (d <= r_eq)].all()
    assert context_ring(lesion, width=5).sum() < ring.sum()
    assert not context_ring(np.zeros((10, 10), bool)).any()
    # clipped to the image near the border
    corner = np.zeros((50, 50), bool)
    corner[:10, :10] = True
    assert context_ring(corner).shape == (50, 50)


def test_region_masks_partition():
    lesion = ellipse_mask()
    regs = region_masks(lesion)
    assert set(regs) == {"lesion", "context", "background"}
    stacked = np.stack([regs[k] for k in regs]).astype(int)
    assert (stacked.sum(0) == 1).all()
    # a ring overlapping the lesion is trimmed
    regs = region_masks(lesion, ring=np.ones_like(lesion))
    assert (np.stack(list(regs.values())).sum(0) == 1).all() and not regs["background"].any()


# ----------------------------------------------------------------------------------------------------------------------
# heatmaps

def test_cam_shares_hand_made_maps():
    lesion = ellipse_mask()
    regs = region_masks(lesion)
    s = cam_shares(lesion.astype(float), lesion)
    assert (s["lesion"], s["context"], s["background"]) == (1.0, 0.0, 0.0)
    assert s["pointing_game"] == {"hit_lesion": True, "hit_lesion_or_context": True}
    s = cam_shares(np.ones(lesion.shape), lesion)        # uniform map: mass shares = area shares
    for k in ("lesion", "context", "background"):
        assert s[k] == pytest.approx(regs[k].mean()) == pytest.approx(s[f"{k}_area"])
    assert sum(s[k] for k in ("lesion", "context", "background")) == pytest.approx(1.0)
    cam = 2.0 * regs["context"] + 1.0 * regs["background"]   # hand-computed shares
    s = cam_shares(cam, lesion)
    total = 2 * regs["context"].sum() + regs["background"].sum()
    assert s["context"] == pytest.approx(2 * regs["context"].sum() / total)
    assert s["background"] == pytest.approx(regs["background"].sum() / total)
    assert s["pointing_game"] == {"hit_lesion": False, "hit_lesion_or_context": True}


def test_cam_shares_zero_map_and_bad_input():
    lesion = ellipse_mask()
    s = cam_shares(np.zeros((7, 7)), lesion)
    assert all(math.isnan(s[k]) for k in ("lesion", "context", "background"))
    assert s["pointing_game"] == {"hit_lesion": None, "hit_lesion_or_context": None}
    assert s["lesion_area"] == pytest.approx(lesion.mean())
    with pytest.raises(ValueError):
        cam_shares(-np.ones((7, 7)), lesion)


def test_cam_shares_stable_under_resizing():
    lesion = ellipse_mask()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cam = np.exp(-((xx - 100) ** 2 + (yy - 90) ** 2) / (2 * 35.0 ** 2))   # smooth blob on the lesion
    full = cam_shares(cam, lesion)
    coarse = cv2.resize(cam.astype(np.float32), (12, 12), interpolation=cv2.INTER_AREA)
    small = cam_shares(coarse, lesion)
    for k in ("lesion", "context", "background"):
        assert small[k] == pytest.approx(full[k], abs=0.03)
    assert small["pointing_game"]["hit_lesion"] and full["pointing_game"]["hit_lesion"]
    # a map peaking in the far corner misses both
    far = cam_shares(np.exp(-((xx - 5) ** 2 + (yy - 5) ** 2) / 50.0), lesion)
    assert far["pointing_game"] == {"hit_lesion": False, "hit_lesion_or_context": False}


def test_split_heatmap():
    lesion = ellipse_mask()
    regs = region_masks(lesion)
    cam = np.random.default_rng(0).random((24, 24))
    parts = split_heatmap(cam, lesion)
    assert parts["lesion_only"].shape == lesion.shape
    assert not parts["lesion_only"][~regs["lesion"]].any()
    assert not parts["context_only"][~regs["context"]].any()
    up = cv2.resize(cam.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(parts["lesion_only"] + parts["context_only"] + parts["background_only"], up, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# keep_region

def _local_var(a: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    m = cv2.blur(g, (5, 5))
    return cv2.blur(g * g, (5, 5)) - m * m


def test_keep_region_keeps_inside_blurs_outside():
    img, truth = draw_case(seed=1, hairs=4)
    out = np.asarray(keep_region(Image.fromarray(img), truth))
    assert out.shape == img.shape
    assert np.array_equal(out[truth], img[truth])                # kept pixels unchanged (feather is outside)
    far = ndimage.distance_transform_edt(~truth) > 6          # well outside the feathered edge
    assert _local_var(out)[far].mean() < 0.2 * _local_var(img)[far].mean()
    blurred = np.asarray(keep_region(img, np.zeros_like(truth)))
    assert (blurred != img).mean() > 0.5 and _local_var(blurred).mean() < 0.2 * _local_var(img).mean()
    # feathered edge: no jump larger than the image's own just outside the kept region
    ring1 = context_ring(truth, 1)
    assert np.abs(out[ring1].astype(int) - img[ring1].astype(int)).mean() < 20


# ----------------------------------------------------------------------------------------------------------------------
# comparisons

def test_segmentation_quality_known_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :6] = True          # 60 px
    b[:, 4:] = True          # 60 px, overlap 20
    q = segmentation_quality(a, b)
    assert q["dice"] == pytest.approx(40 / 120) and q["iou"] == pytest.approx(20 / 100)
    assert segmentation_quality(a, a) == {"dice": 1.0, "iou": 1.0}
    assert segmentation_quality(a, ~a) == {"dice": 0.0, "iou": 0.0}
    with pytest.raises(ValueError):
        segmentation_quality(a, np.zeros((5, 5), bool))


def test_top_region_iou():
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    a = np.where(xx < 32, xx + 1, 0.0)           # mass on the left half only
    b = np.where(xx >= 32, 64 - xx, 0.0)         # right half only
    assert top_region_iou(a, a) == 1.0
    assert top_region_iou(a, b) == 0.0
    assert top_region_iou(a, cv2.resize(a.astype(np.float32), (16, 16))) > 0.7   # resized copy
    g = np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 200)
    assert 0 < top_region_iou(g, np.roll(g, 6, axis=1)) < 1
    assert math.isnan(top_region_iou(np.zeros((8, 8)), np.zeros((8, 8))))
