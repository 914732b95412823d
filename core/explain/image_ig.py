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

import threading
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..encoders import ModalityFeatures
from ..encoders.onednn import LINEAR, FrozenLinear, FrozenLinearReLU6, relu6_fusable, weights_key
from .context import ExplainContext

# The black image's middle-stage activation and the last-stage map the rest of the CNN makes of it depend on
# the encoder and the input size only: computed once per (encoder, size) and reused (a loaded package's weights
# never change; the parameters' version counters are part of the key, so an encoder trained in place is
# recomputed). With the last map kept, the black row of the steps' batch skips the CNN's tail, forward and
# backward: 8 rows through it instead of 9.
_BLACK: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[torch.Tensor | None]]]" = weakref.WeakKeyDictionary()
_BLACK_LOCK = threading.Lock()

# A case's three stage maps, kept with the context that explains it (``explain_case`` encodes the image
# once, through ``encode_image_stages``): middle-stage IG starts from the early / middle maps and the
# last-stage CAMs from the last map, instead of running the CNN's front again for each part.
_MAPS: "weakref.WeakKeyDictionary[ExplainContext, tuple[nn.Module, torch.Tensor, list[torch.Tensor]]]" = \
    weakref.WeakKeyDictionary()


def plain_image_encoder(enc: nn.Module) -> bool:
    """True for the plain image encoder (not a dual expert): its output is ``from_stages`` of its stage maps,
    the last of which is its last-stage CAM layer's output."""
    from ..encoders.image import ImageEncoder

    return type(enc) is ImageEncoder


def encode_image_stages(package: Any, case: Any) -> tuple[ModalityFeatures, list[torch.Tensor]] | None:
    """(the image encoder's output for ``case``, its three stage maps), computed as the encoder's forward
    computes them (``from_stages(_stages(pixels))``, no grad), or None where the model has no plain image
    encoder or the case no image. The case is checked as ``Package.prepare`` checks it (same errors)."""
    enc = package.model.encoders["image"] if "image" in package.model.encoders else None
    if enc is None or not plain_image_encoder(enc):
        return None
    inputs, _, _ = package.prepare([case], set(package.model.modalities) - {"image"})
    if inputs.get("image") is None:
        return None
    with torch.no_grad():
        maps = list(enc._stages(inputs["image"]["pixels"]))
        return enc.from_stages(maps), maps


def remember_stage_maps(ctx: ExplainContext, maps: list[torch.Tensor]) -> None:
    """Keep ``maps`` (from :func:`encode_image_stages` on the same case) for the parts that explain ``ctx``."""
    _MAPS[ctx] = (ctx.model, ctx.inputs["image"]["pixels"], maps)


def stage_maps(ctx: ExplainContext, pixels: torch.Tensor | None = None) -> list[torch.Tensor] | None:
    """The kept stage maps of ``ctx``'s image, if any and still those of its model and of ``pixels`` (default:
    the context's own pixels, the very tensor)."""
    hit = _MAPS.get(ctx)
    if hit is None:
        return None
    model, own, maps = hit
    ok = ctx.model is model and ctx.inputs["image"]["pixels"] is own and (pixels is None or pixels is own)
    return maps if ok else None


def _features(enc: nn.Module, early: torch.Tensor, middle: torch.Tensor, last: torch.Tensor) -> ModalityFeatures:
    """What ``ImageEncoder.forward`` returns, from its three stage activations (early pooled level given)."""
    return enc.from_stages([middle, last], (early,))


def middle_stage_ig(ctx: ExplainContext, n_steps: int = 8, internal_batch_size: int = 8) -> dict[str, Any]:
    """{"map": [S, S] in [0, 1], "convergence_delta", "relative_delta", "n_steps", "layer"} for the target class.

    With ``internal_batch_size >= n_steps`` (the default) the steps run as one batch through the last stage,
    joined there by the black image's row (its last-stage map is kept with its activation, see ``_BLACK``), then
    through fusion and head, and the case's own value is the one its prediction already gave
    (``attributions.integrated_gradients``): Captum's numbers without its two extra passes for the
    convergence delta, and without running the black image through the tail for every case."""
    f, steps_and_black, a, a0, x = _ig_functions(ctx)
    from .attributions import ig_with_delta, integrated_gradients

    if internal_batch_size >= n_steps:   # the steps through the tail, the black row from its kept last map
        attr, delta = integrated_gradients(f, a, a0, n_steps, ctx.target_logit(), steps_and_black)
    else:
        attr, delta = ig_with_delta(f, a, a0, n_steps, ctx.target_logit, internal_batch_size)
    # the delta is sum(attr) - (f(a) - f(a0)), both ends already evaluated: the output difference follows
    # from it without running the two ends again
    gap = float(attr.sum()) - float(delta.reshape(-1)[0])
    m = attr[0].detach().abs().sum(0)[None, None]
    m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0].numpy()
    d = float(delta.abs().max())
    return {"map": (m / max(float(m.max()), 1e-12)).astype(np.float32), "convergence_delta": d,
            "relative_delta": d / max(abs(gap), 1e-6), "output_difference": gap, "n_steps": n_steps,
            "layer": "middle stage", "baseline": "black image"}


def _ig_function(ctx: ExplainContext) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f: middle-stage activations [n, ...] -> calibrated target logits [n], the case's activation, the black
    image's activation, the case's pixels)."""
    f, _, a, a0, x = _ig_functions(ctx)
    return f, a, a0, x


def _ig_functions(ctx: ExplainContext) -> tuple[Any, Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, steps_and_black, the case's activation, the black image's, the case's pixels): ``f`` as in
    :func:`_ig_function`; ``steps_and_black(steps)`` = f(cat(steps, black activation)) with the black row's
    last-stage map taken from the cache instead of running the tail on it."""
    enc_full = ctx.model.encoders["image"]
    dual = enc_full.dual_expert
    enc = enc_full.backbone if dual else enc_full
    head, tail = enc.stage_split()   # the architecture's adapter cuts it (core.encoders.image_backbones)
    tail = fast_tail(enc) or tail
    image = ctx.inputs["image"]
    x = image["pixels"]
    kept = None if dual else stage_maps(ctx)
    with torch.no_grad():
        early, a = (kept[0], kept[1]) if kept is not None else head(x)
        a0, last0 = _black_maps(enc, head, tail, x)
        early = early.mean(dim=(2, 3))
        local = None
        if dual:
            lp = image.get("local_pixels")
            if lp is None:
                lp = enc_full.crop_pixels(x, image.get("crop_box"), image.get("lesion_mask"))
            local = enc_full.local_backbone(lp)

    def logits(act: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        n = act.shape[0]
        g = _features(enc, early.expand(n, -1), act, last)
        if dual:
            cached = {}
            for p, feat in (("g_", g), ("l_", local)):
                rep = (lambda t: t) if p == "g_" else (lambda t: t.expand(n, *t.shape[1:]))
                cached.update({f"{p}pooled": rep(feat.pooled), f"{p}l0": rep(feat.levels[0]), f"{p}l1": rep(feat.levels[1]),
                               f"{p}l2": rep(feat.levels[2]), f"{p}tokens": rep(feat.tokens)})
            box = image.get("crop_box")
            g = enc_full(crop_box=None if box is None else box.expand(n, -1), **cached)
        return ctx.calibrated_logits("image", g)[:, ctx.target]

    def f(act: torch.Tensor) -> torch.Tensor:
        return logits(act, tail(act))

    def steps_and_black(steps: torch.Tensor) -> torch.Tensor:
        return logits(torch.cat([steps, a0]), torch.cat([tail(steps), last0]))

    return f, steps_and_black, a, a0, x


def _black_maps(enc: nn.Module, head: Any, tail: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the middle-stage activation of a black image shaped like ``x``, the last-stage map ``tail`` makes of it),
    cached (see ``_BLACK``)."""
    key = (tuple(x.shape[1:]), x.dtype, weights_key(enc.parameters(), enc.buffers()))
    with _BLACK_LOCK:
        hit = _BLACK.get(enc, {}).get(key)
    if hit is not None:
        return hit[0], hit[1]
    black = (torch.zeros_like(x[:1]) - enc._mean) / enc._std
    with torch.no_grad():
        a0 = head(black)[1]
        last0 = tail(a0)
    with _BLACK_LOCK:
        _BLACK[enc] = {key: [a0, last0]}   # one size per encoder is kept
    return a0, last0


# The CNN's tail (last stage + head conv) of a frozen EfficientNet-Lite0 in eval mode, as middle-stage IG runs it
# for its 8 steps, forward and backward: every batch norm folded into the convolution before it (eval mode: an
# affine map per channel), the 1x1 convolutions (85% of the tail's multiply-adds) as oneDNN matrix products on
# the channels-last layout (torch runs them through its generic im2col + MKL path, whose backward is slow), the
# depthwise convolutions on channels-last (oneDNN), ReLU6 as hardtanh(0, 6) like the block's. Same numbers to
# float rounding (test against ``stage_split``'s tail). Folded weights are kept per encoder (~10 MB), keyed like
# ``_BLACK`` by the parameters' versions.
_FAST_TAIL: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()


def _fold(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution (eval-mode batch norm)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    b = bn.bias - bn.running_mean * scale + (0 if conv.bias is None else conv.bias * scale)
    return w.detach().contiguous(), b.detach().contiguous()


def _pointwise(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A folded 1x1 convolution on channels-last ``x`` [B, C, H, W] as one matrix product -> channels-last."""
    y = FrozenLinear.apply(x.permute(0, 2, 3, 1), wb[0].flatten(1), wb[1])
    return y.permute(0, 3, 1, 2)


def _pointwise_relu6(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``hardtanh(_pointwise(x, wb), 0, 6)``, the clamp inside oneDNN's product where it can be (same numbers)."""
    if not relu6_fusable():
        return F.hardtanh(_pointwise(x, wb), 0.0, 6.0)
    return FrozenLinearReLU6.apply(x.permute(0, 2, 3, 1), wb[0].flatten(1), wb[1]).permute(0, 3, 1, 2)


def _depthwise(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor], stride: tuple[int, int]) -> torch.Tensor:
    """A folded depthwise convolution with TensorFlow's "same" padding (as ``Conv2dDynamicSamePadding``)."""
    k = wb[0].shape[-1]
    ih, iw = x.shape[-2:]
    ph = max((-(-ih // stride[0]) - 1) * stride[0] + k - ih, 0)
    pw = max((-(-iw // stride[1]) - 1) * stride[1] + k - iw, 0)
    if ph % 2 == 0 and pw % 2 == 0:
        return F.conv2d(x, wb[0], wb[1], stride, (ph // 2, pw // 2), 1, x.shape[1])
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, wb[0], wb[1], stride, 0, 1, x.shape[1])


def fast_tail(enc: nn.Module) -> Any:
    """The folded channels-last tail of ``enc`` (middle stage map -> last stage map), or None where ``enc`` is not
    a frozen float32 EfficientNet-Lite0 on the CPU in eval mode without hooks (then ``stage_split``'s tail runs)."""
    from ..encoders.image_backbones import LITE0_CUTS

    if LINEAR is None or getattr(enc, "arch", None) != "efficientnet_lite0" or enc.training:
        return None
    b = enc.backbone
    blocks = list(b._blocks)[LITE0_CUTS[1] + 1:]
    mods = [m for blk in blocks for m in blk.modules()] + [b._conv_head, b._bn1, enc.head_act]
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
           or m.training for m in mods) or any(p.requires_grad for m in mods for p in m.parameters()):
        return None
    if any(blk.has_se or not isinstance(blk._swish, nn.ReLU6) for blk in blocks) or not isinstance(enc.head_act, nn.ReLU6) \
            or any(p.dtype != torch.float32 or p.device.type != "cpu" for m in mods for p in m.parameters()):
        return None   # float32 on the CPU only (oneDNN's linear is a CPU kernel)
    key = weights_key([p for m in mods for p in m.parameters()],
                      [t for m in mods if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)])
    with _BLACK_LOCK:
        hit = _FAST_TAIL.get(enc)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        plan = []
        for blk in blocks:
            a = blk._block_args
            plan.append((_fold(blk._expand_conv, blk._bn0) if a.expand_ratio != 1 else None,
                         _fold(blk._depthwise_conv, blk._bn1), tuple(blk._depthwise_conv.stride),
                         _fold(blk._project_conv, blk._bn2),
                         bool(blk.id_skip and a.stride == 1 and a.input_filters == a.output_filters)))
        head = _fold(b._conv_head, b._bn1)

    def tail(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for expand, dw, stride, project, skip in plan:
            y = _pointwise_relu6(x, expand) if expand is not None else x
            y = F.hardtanh(_depthwise(y, dw, stride), 0.0, 6.0)
            y = _pointwise(y, project)
            x = y + x if skip else y
        return _pointwise_relu6(x, head)

    with _BLACK_LOCK:
        _FAST_TAIL[enc] = (key, tail)
    return tail
