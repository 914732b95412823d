"""Integrated gradients on the image encoder's middle stage (layer integrated gradients).

Integrated gradients on raw pixels need every step to run the whole CNN forward and backward, and on
the shipped EfficientNet they converge badly (16 steps from a black image leave a convergence delta
of the order of the output difference itself). Here the path runs on the activation of the middle
stage (stride 16 on EfficientNet-lite0, ``cam_layers()['middle stage']``): from the black image's
activation to the case's, through the last stage, fusion and head only. The early stage's pooled
level is held at the case's value; for a dual-expert encoder the lesion stream is held at the case's
and the global stream is varied. The map (|attribution| summed over channels) is upsampled to the
model's input size; the convergence delta (completeness error) is measured and returned with it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn
from torch.nn import functional as F

from ..encoders import ModalityFeatures
from .context import ExplainContext

LITE0_MIDDLE = 10   # block index closing the stride-16 group (core.encoders.image._LITE0_CUTS[1])
LITE0_EARLY = 4


def _split(enc: nn.Module) -> tuple:
    """(pixels -> (early, middle) activations, middle activation -> last-stage activation) for an ImageEncoder."""
    b = enc.backbone
    if enc.arch == "efficientnet_lite0":
        def head(x: torch.Tensor):
            x = enc.stem_act(b._bn0(b._conv_stem(x)))
            early = None
            for i in range(LITE0_MIDDLE + 1):
                x = b._blocks[i](x, drop_connect_rate=0.0)
                if i == LITE0_EARLY:
                    early = x
            return early, x

        def tail(x: torch.Tensor) -> torch.Tensor:
            for i in range(LITE0_MIDDLE + 1, len(b._blocks)):
                x = b._blocks[i](x, drop_connect_rate=0.0)
            return enc.head_act(b._bn1(b._conv_head(x)))
        return head, tail
    if enc.arch == "tiny":
        return (lambda x: (lambda e: (e, b[1](e)))(b[0](x))), (lambda x: b[2](x))
    if enc.arch in ("resnet18", "resnet50"):
        def rhead(x: torch.Tensor):
            e = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
            return e, b.layer3(e)
        return rhead, (lambda x: b.layer4(x))
    raise ValueError(f"no middle-stage split for the image architecture '{enc.arch}'.")


def _features(enc: nn.Module, early: torch.Tensor, middle: torch.Tensor, last: torch.Tensor) -> ModalityFeatures:
    """What ``ImageEncoder.forward`` returns, from its three stage activations (early pooled level given)."""
    levels = (early, middle.mean(dim=(2, 3)), last.mean(dim=(2, 3)))
    if enc.token_grid:
        last = F.adaptive_avg_pool2d(last, enc.token_grid)
    tokens = last.flatten(2).transpose(1, 2)
    return ModalityFeatures(levels[2], levels, tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))


def middle_stage_ig(ctx: ExplainContext, n_steps: int = 8, internal_batch_size: int = 8) -> dict[str, Any]:
    """{"map": [S, S] in [0, 1], "convergence_delta", "relative_delta", "n_steps", "layer"} for the target class."""
    enc_full = ctx.model.encoders["image"]
    dual = enc_full.dual_expert
    enc = enc_full.backbone if dual else enc_full
    head, tail = _split(enc)
    image = ctx.inputs["image"]
    x = image["pixels"]
    black = (torch.zeros_like(x) - enc._mean) / enc._std
    with torch.no_grad():
        early, a = head(x)
        _, a0 = head(black)
        early = early.mean(dim=(2, 3))
        local = None
        if dual:
            lp = image.get("local_pixels")
            if lp is None:
                lp = enc_full.crop_pixels(x, image.get("crop_box"))
            local = enc_full.local_backbone(lp)

    def f(act: torch.Tensor) -> torch.Tensor:
        n = act.shape[0]
        g = _features(enc, early.expand(n, -1), act, tail(act))
        if dual:
            cached = {}
            for p, feat in (("g_", g), ("l_", local)):
                rep = (lambda t: t) if p == "g_" else (lambda t: t.expand(n, *t.shape[1:]))
                cached.update({f"{p}pooled": rep(feat.pooled), f"{p}l0": rep(feat.levels[0]), f"{p}l1": rep(feat.levels[1]),
                               f"{p}l2": rep(feat.levels[2]), f"{p}tokens": rep(feat.tokens)})
            box = image.get("crop_box")
            g = enc_full(crop_box=None if box is None else box.expand(n, -1), **cached)
        return ctx.calibrated_logits("image", g)[:, ctx.target]

    with torch.enable_grad():
        attr, delta = IntegratedGradients(f).attribute(a, baselines=a0, n_steps=n_steps, method="gausslegendre",
                                                       internal_batch_size=internal_batch_size,
                                                       return_convergence_delta=True)
        with torch.no_grad():
            gap = float(f(a) - f(a0))
    m = attr[0].detach().abs().sum(0)[None, None]
    m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0].numpy()
    d = float(delta.abs().max())
    return {"map": (m / max(float(m.max()), 1e-12)).astype(np.float32), "convergence_delta": d,
            "relative_delta": d / max(abs(gap), 1e-6), "output_difference": gap, "n_steps": n_steps,
            "layer": "middle stage", "baseline": "black image"}
