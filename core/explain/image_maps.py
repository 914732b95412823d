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
}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [1, C, H, W] (borders replicated)."""
    k = int(3 * sigma) * 2 + 1
    g = torch.exp(-0.5 * (torch.arange(k, dtype=x.dtype) - k // 2) ** 2 / sigma ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"),
                                   g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, k // 2, k // 2), mode="replicate"),
                                      g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)


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


def image_map(ctx: ExplainContext, method: str) -> np.ndarray:
    """The map ``method`` (a key of :data:`PIXEL_MAPS`) of the case's target class."""
    if method not in PIXEL_MAPS:
        raise ValueError(f"unknown pixel map {method!r}; choose one of: {', '.join(PIXEL_MAPS)}.")
    return pixel_ig_map(ctx, **PIXEL_MAPS[method])


__all__ = ["PIXEL_MAPS", "pixel_baseline", "pixel_ig", "pixel_ig_map", "image_map"]
