"""Pixel-resolution image maps for the known-answer controls and the per-case panel (issue #15 §2).

The last-stage Grad-CAM of EfficientNet-Lite0 is a 7 x 7 map (32 px cells at 224 px): too coarse to keep a
lesion apart from the ring around it (a perfect 7 x 7 map of the ring alone already has a lesion mass ratio of
1.46), and its maximum misses small lesions. Finer CAM layers point at the lesion whatever the model uses
(an image prior: they do it with random weights too). A pixel attribution computed through the whole model has
neither problem:

* :func:`pixel_ig_map` -- integrated gradients of the target logit with respect to the pixels (Sundararajan et
  al. 2017), |attribution| summed over the colour channels, then a Gaussian blur of ``smooth`` px so that the
  map's maximum is that of a neighbourhood rather than of one pixel. Baselines: ``"black"`` (what
  :func:`core.explain.attributions.image_attributions` uses), ``"skin"`` (the median colour of the image's
  12 px border) or ``"blur"`` (the image blurred with a Gaussian of 16 px). Cost: ``n_steps`` forward and
  backward passes of the image encoder (16 steps: about 3 s per case on one CPU thread at 224 px).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .context import ExplainContext

#: map name -> keyword arguments of :func:`pixel_ig_map` (what ``cohort_faithfulness(method=...)`` accepts
#: besides the CAM methods)
PIXEL_MAPS: dict[str, dict[str, Any]] = {
    "pixel_ig": {"baseline": "black", "n_steps": 16, "smooth": 8.0},
    "pixel_ig_skin": {"baseline": "skin", "n_steps": 16, "smooth": 8.0},
    "pixel_ig_blur": {"baseline": "blur", "n_steps": 16, "smooth": 8.0},
    "segment_occlusion": {"n_segments": 64},
    "feature_occlusion": {"window": 1},
    "median_ig": {"n_steps": 8},
}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [1, C, H, W] over H and W (borders replicated; radius int(3 sigma)), scipy's filter."""
    from scipy import ndimage

    radius = int(3 * sigma)
    out = ndimage.gaussian_filter(x.detach().numpy(), (0, 0, sigma, sigma), mode="nearest", truncate=radius / sigma)
    return torch.from_numpy(out).to(x.dtype)


def pixel_baseline(ctx: ExplainContext, kind: str = "black") -> torch.Tensor:
    """The IG baseline image (normalised pixels, like the case's): ``black``, ``skin`` (every pixel the median
    colour of the 12 px image border) or ``blur`` (Gaussian, sigma 16 px at 224 px)."""
    x = ctx.inputs["image"]["pixels"]
    enc = ctx.pixel_encoder
    if kind == "black":
        return (torch.zeros_like(x) - enc._mean.cpu()) / enc._std.cpu()
    if kind == "skin":
        b = 12
        border = torch.cat([x[..., :b, :].reshape(1, 3, -1), x[..., -b:, :].reshape(1, 3, -1),
                            x[..., :, :b].reshape(1, 3, -1), x[..., :, -b:].reshape(1, 3, -1)], 2)
        return border.median(2).values.view(1, 3, 1, 1).expand_as(x).contiguous()
    if kind == "blur":
        return _gaussian_blur(x, 16.0 * x.shape[-1] / 224)
    raise ValueError(f"unknown pixel baseline {kind!r}; choose black, skin or blur.")


def pixel_ig(ctx: ExplainContext, baseline: str = "black", n_steps: int = 16, internal_batch_size: int = 8
             ) -> tuple[np.ndarray, float]:
    """(|IG| summed over channels [H, W], relative convergence delta |sum(IG) - (f(x) - f(baseline))| /
    |f(x) - f(baseline)|) of the target logit, the other modalities held at the case's."""
    from .attributions import ig_with_delta

    x = ctx.inputs["image"]["pixels"]
    b = pixel_baseline(ctx, baseline)
    f = ctx.target_fn("image", "pixels", **ctx.image_fixed())
    attr, delta = ig_with_delta(f, x, b, n_steps, ctx.target_logit, internal_batch_size)
    total = float(attr.sum())
    gap = total - float(delta.reshape(-1)[0])
    return attr[0].detach().abs().sum(0).numpy(), abs(float(delta.reshape(-1)[0])) / max(abs(gap), 1e-6)


def pixel_ig_map(ctx: ExplainContext, baseline: str = "black", n_steps: int = 16, smooth: float = 8.0) -> np.ndarray:
    """[H, W] non-negative map, maximum 1: :func:`pixel_ig` blurred by a Gaussian of ``smooth`` px (0: none)."""
    m, _ = pixel_ig(ctx, baseline, n_steps)
    if smooth and smooth > 0:
        from scipy import ndimage

        m = ndimage.gaussian_filter(m, smooth)
    return (m / max(float(m.max()), 1e-12)).astype(np.float32)


def segments(rgb: np.ndarray, n: int = 64, colour_scale: float = 0.1, iterations: int = 8) -> np.ndarray:
    """[H, W] int segment ids 0..k-1 of an RGB image in [0, 1]: k-means on (colour / ``colour_scale``, position /
    grid step) started from a regular grid of about ``n`` cells (SLIC without the local search window), so
    segments are compact and follow colour edges. Empty clusters are dropped; ids are renumbered 0..k-1."""
    h, w = rgb.shape[:2]
    g = max(1, int(round(np.sqrt(n))))
    step = max(h, w) / g
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    feats = torch.from_numpy(np.concatenate([rgb.reshape(-1, 3).astype(np.float32) / colour_scale,
                                             np.stack([yy.ravel(), xx.ravel()], 1) / step], 1))
    cy, cx = np.meshgrid((np.arange(g) + 0.5) * h / g, (np.arange(g) + 0.5) * w / g, indexing="ij")
    idx = (np.clip(cy.ravel().astype(int), 0, h - 1) * w + np.clip(cx.ravel().astype(int), 0, w - 1))
    centres = feats[torch.from_numpy(idx)].clone()
    for _ in range(iterations):
        lab = torch.cdist(feats, centres).argmin(1)
        counts = torch.bincount(lab, minlength=len(centres)).float()
        sums = torch.zeros_like(centres).index_add_(0, lab, feats)
        keep = counts > 0
        centres = sums[keep] / counts[keep, None]
    lab = torch.cdist(feats, centres).argmin(1)
    _, lab = torch.unique(lab, return_inverse=True)
    return lab.reshape(h, w).numpy()


def segment_occlusion_map(ctx: ExplainContext, n_segments: int = 64, chunk: int = 16) -> np.ndarray:
    """[H, W] non-negative map, maximum 1: each pixel gets the drop of the target logit when its segment
    (:func:`segments` of the case's image) is painted over with the skin colour (the median of the image's 12 px
    border), clipped at 0. It reads the model's output, no gradients; one forward pass per segment (64 at 224 px:
    about 30 s per case on these shared cores at load 12). Not a cure for the image prior: on seed 9301 validation
    (20 context-only control cases) it puts a lesion mass ratio of 3.03 on a control that does not use the lesion
    (randomised copy 2.52): painting skin colour over skin changes nothing, over part of a lesion it makes new edges,
    so removing lesion segments moves the output most whatever the model relies on."""
    x = ctx.inputs["image"]["pixels"]
    enc = ctx.pixel_encoder
    rgb = enc.denormalize(x)[0].permute(1, 2, 0).numpy()
    seg = torch.from_numpy(segments(rgb, n_segments))
    fill = pixel_baseline(ctx, "skin")
    f = ctx.target_fn("image", "pixels", **ctx.image_fixed())
    k = int(seg.max()) + 1
    drops = []
    with torch.no_grad():
        fx = f(x)[0]
        for i in range(0, k, chunk):
            ids = torch.arange(i, min(k, i + chunk))
            m = (seg[None] == ids[:, None, None]).unsqueeze(1)           # [c, 1, H, W]
            drops.append(fx - f(torch.where(m, fill, x)))
    d = torch.cat(drops).clamp_min(0)
    out = d[seg].numpy().astype(np.float32)
    return out / max(float(out.max()), 1e-12)


def middle_stage_function(ctx: ExplainContext) -> tuple[Any, torch.Tensor]:
    """(f: middle-stage maps [n, C, h, w] -> the calibrated target logit [n], the case's middle-stage map [1, C, h, w])
    of a plain image encoder (``ImageEncoder.stage_split``: EfficientNet-Lite0's block-10 output, 14 x 14 at 224 px),
    the rest of the model run as in the prediction (other modalities held at the case's)."""
    from .image_ig import plain_image_encoder

    enc = ctx.model.encoders["image"]
    if not plain_image_encoder(enc):
        raise ValueError("middle-stage maps need a plain image encoder (not a dual expert).")
    head, tail = enc.stage_split()
    with torch.no_grad():
        early, a = head(ctx.inputs["image"]["pixels"])
        early = early.mean(dim=(2, 3))

    def f(act: torch.Tensor) -> torch.Tensor:
        g = enc.from_stages([act, tail(act)], (early.expand(act.shape[0], -1),))
        return ctx.calibrated_logits("image", g)[:, ctx.target]
    return f, a


def occlusion_drops(f: Any, a: torch.Tensor, fill: torch.Tensor, window: int = 1, chunk: int = 49) -> torch.Tensor:
    """[h, w] map of ``f``'s drop when a ``window`` x ``window`` block of cells of the feature map ``a`` [1, C, h, w]
    is replaced by ``fill`` ([1, C, 1, 1] or shaped like ``a``), stride 1, clipped at 0, each cell the mean over
    the windows that cover it (Zeiler & Fergus occlusion on a layer; Captum's ``LayerFeatureAblation``)."""
    h, w = a.shape[-2:]
    fill = fill.expand_as(a)
    cells = [(i, j) for i in range(h - window + 1) for j in range(w - window + 1)]
    with torch.no_grad():
        fx = f(a)[0]
        vals = []
        for s in range(0, len(cells), chunk):
            batch = a.repeat(len(cells[s:s + chunk]), 1, 1, 1)
            for k, (i, j) in enumerate(cells[s:s + chunk]):
                batch[k, :, i:i + window, j:j + window] = fill[0, :, i:i + window, j:j + window]
            # channels-last: the convolutions after the middle stage run ~1.3-1.5x faster on CPU (shipped mmtm, 49
            # rows, one thread: 0.93 -> 0.63 s); the logits equal the plain layout's within float rounding, not bit
            # for bit (other kernels): largest difference 2.9e-6 on the shipped mmtm (3 cases x 49 occluded rows,
            # session 10), 1.8e-7 on the tiny test package (tests/test_faithfulness_maps.py bounds it by 1e-5)
            vals.append(f(batch.contiguous(memory_format=torch.channels_last)))
        drop = (fx - torch.cat(vals)).clamp_min(0)
    out, cover = torch.zeros(h, w), torch.zeros(h, w)
    for (i, j), d in zip(cells, drop.tolist()):
        out[i:i + window, j:j + window] += d
        cover[i:i + window, j:j + window] += 1
    return out / cover


def feature_occlusion_map(ctx: ExplainContext, window: int = 1) -> np.ndarray:
    """[H, W] non-negative map, maximum 1 (all 0 when no cell lowers the output): each 16 px cell of the middle
    stage (14 x 14 at 224 px) gets the drop of the target logit when its features are replaced by the image's own
    per-channel median over all cells (the features of what most of the image is: plain skin), the rest of the
    network run on top (:func:`occlusion_drops`), upsampled bilinearly as the CAMs are. Removal-based, like the
    pixel occlusion and segment occlusion maps, but on the stage the image controls' fine-tuned blocks read: twice
    the last stage's resolution, and a replaced cell is a plausible feature vector, not a painted patch with new
    edges. One forward pass of the blocks after the middle stage per cell (196), batched.

    Seed 9301 validation (core/explain/controls.py, :data:`CONTROL_FEATURE_MAP`): lesion-only control lesion
    ratio 6.31, pointing 0.98 (50 cases; last-stage Grad-CAM 2.83 / 0.32); context-only context ratio 2.24 but
    lesion ratio 1.82. What the map cannot show is non-additivity: replacing *all* of the context-only control's
    lesion cells at once moves its logit by -0.03 on average, all ring cells by 5.09 (lesion-only control: 3.95
    and 0.03; 40 cases each), yet one lesion cell alone often lowers it. Occluding k-means clusters of the cells
    (k 3-8) instead did not help (context-only lesion ratio 1.31-2.38, lesion-only pointing <= 0.80; 20 cases)."""
    import torch.nn.functional as F

    f, a = middle_stage_function(ctx)
    fill = a.flatten(2).median(2).values[..., None, None]
    m = occlusion_drops(f, a, fill, window)[None, None]
    size = tuple(ctx.inputs["image"]["pixels"].shape[-2:])
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0).numpy()
    return (m / max(float(m.max()), 1e-12)).astype(np.float32)


def median_features(a: torch.Tensor) -> torch.Tensor:
    """[1, C, h, w] -> [1, C, h, w]: every cell the image's own per-channel median over all cells (the features of what
    most of the image is: plain skin), the fill :func:`feature_occlusion_map` replaces a cell with."""
    return a.flatten(2).median(2).values[..., None, None].expand_as(a).contiguous()


def median_ig_cells(f: Any, a: torch.Tensor, n_steps: int = 8, f_a: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, float, float]:
    """(signed attribution per cell [h, w] = the channels' sum, convergence delta, output difference f(a) - f(median))
    of integrated gradients of ``f`` ([n, C, h, w] -> [n]) from :func:`median_features` of ``a`` [1, C, h, w] to ``a``
    (Gauss-Legendre, ``n_steps`` steps in one batch, the baseline's row riding along: ``n_steps`` + 1 rows through
    ``f``). ``f_a``: f(a) when the caller knows it. Completeness: the cells sum to f(a) - f(baseline) up to the delta."""
    from .attributions import integrated_gradients

    base = median_features(a)
    fa = f_a if f_a is not None else f(a).detach()[0]
    attr, delta = integrated_gradients(f, a, base, n_steps, fa)
    d = float(delta.reshape(-1)[0])
    return attr[0].detach().sum(0), d, float(attr.sum()) - d


def median_ig(ctx: ExplainContext, n_steps: int = 8) -> dict[str, Any]:
    """{"map": [H, W] in [0, 1], "cells": signed [h, w], "convergence_delta", "relative_delta", "output_difference",
    "n_steps", "layer", "baseline"} of the target class: integrated gradients on the middle stage (14 x 14 at 224 px,
    the stage :func:`feature_occlusion_map` occludes and :func:`core.explain.image_ig.middle_stage_ig` integrates on),
    but from the image's own per-channel median features (:func:`median_features`, feature occlusion's fill) instead
    of the black image's activation. Each cell's attribution is summed over channels, signed (its share of
    f(case) - f(all-median)); the map is its positive part (cells that raise the class's logit above the plain-skin
    reference; as feature occlusion keeps the drops), upsampled bilinearly as the CAMs are, maximum 1 (all 0 when no
    cell has a positive share). A plain image encoder only (a dual expert has no one middle stage: ValueError). Cost:
    ``n_steps`` + 1 rows through the later blocks, forward and backward, in one batch (the product's middle-stage IG
    runs ``n_steps`` and keeps the black row's tail)."""
    import torch.nn.functional as F

    from .image_ig import _ig_functions, plain_image_encoder

    if not plain_image_encoder(ctx.model.encoders["image"]):
        raise ValueError("middle-stage maps need a plain image encoder (not a dual expert).")
    f, _, a, _, x = _ig_functions(ctx)
    cells, delta, gap = median_ig_cells(f, a, n_steps, ctx.target_logit())
    m = F.interpolate(cells.clamp_min(0)[None, None], size=tuple(x.shape[-2:]), mode="bilinear",
                      align_corners=False)[0, 0].clamp_min(0).numpy()
    return {"map": (m / max(float(m.max()), 1e-12)).astype(np.float32), "cells": cells.numpy(),
            "convergence_delta": abs(delta), "relative_delta": abs(delta) / max(abs(gap), 1e-6), "output_difference": gap,
            "n_steps": n_steps, "layer": "middle stage", "baseline": "median features"}


def median_ig_map(ctx: ExplainContext, n_steps: int = 8) -> np.ndarray:
    """[H, W] non-negative map, maximum 1: :func:`median_ig`'s map."""
    return median_ig(ctx, n_steps)["map"]


def image_map(ctx: ExplainContext, method: str) -> np.ndarray:
    """The map ``method`` (a key of :data:`PIXEL_MAPS`) of the case's target class."""
    if method not in PIXEL_MAPS:
        raise ValueError(f"unknown pixel map {method!r}; choose one of: {', '.join(PIXEL_MAPS)}.")
    if method == "segment_occlusion":
        return segment_occlusion_map(ctx, **PIXEL_MAPS[method])
    if method == "feature_occlusion":
        return feature_occlusion_map(ctx, **PIXEL_MAPS[method])
    if method == "median_ig":
        return median_ig_map(ctx, **PIXEL_MAPS[method])
    return pixel_ig_map(ctx, **PIXEL_MAPS[method])


__all__ = ["PIXEL_MAPS", "pixel_baseline", "pixel_ig", "pixel_ig_map", "segments", "segment_occlusion_map",
           "middle_stage_function", "occlusion_drops", "feature_occlusion_map", "median_features", "median_ig_cells",
           "median_ig", "median_ig_map", "image_map"]
