"""Lesion vs context as a model (seed 003, "human-like diagnosis"): a dual-expert image encoder.

A global stream reads the whole image, a local stream reads the lesion region (the bounding box of
the uploaded mask, or of the automatic segmentation, widened by a margin and resized to the input
size). Both streams are the same frozen backbone; they are combined per case by a gate

* ``learned``: ``[w_l, w_g] = softmax(W [f_l; f_g])``, or
* ``entropy``: ``w_l = sigmoid(-H(p_l))`` with ``p_l`` the prediction of a small classifier on the
  lesion stream (trained with an auxiliary loss), so cases whose lesion alone is ambiguous lean on
  the context; ``w_g = 1 - w_l``.

The output is one ModalityFeatures like any image encoder's (so every fusion variant takes it): the
pooled vector and levels are the gated mix, the tokens are the lesion tokens followed by the global
tokens. ``extras['lesion_gate']`` (w_l per case) reaches the prediction's diagnostics as
``image_lesion_gate``.

The local stream is a second module whose parameters *are* the global backbone's (tied, one copy in
memory and none in the package); it exists so Grad-CAM can hook each stream separately.

``lesion_mask_fill`` (issue 15 §3; default ``"none"``: the crop as it is, what every package saved before
the option has): the lesion stream sees only the lesion. Inside the crop, the pixels outside the lesion
mask (the case's mask, else the automatic segmentation) are replaced by a neutral fill, blended with the
mask's soft (bilinearly resized) edge:

* ``"mean"``: the whole image's mean colour;
* ``"blur"``: a wide Gaussian blur of the crop's own outside pixels (normalised convolution: the lesion's
  pixels do not bleed into it), i.e. the local skin tone without its fine structure.

Where the fill is applied: ``prepare`` (every prediction, training cache and explanation that starts from
a case) and ``crop_pixels`` (explanations that vary the whole image and cut the lesion stream from the
varied pixels). ``prepare`` returns the mask at the input size as ``lesion_mask``, and ``crop_pixels`` /
``forward`` cut it with the crop box; a caller that holds only ``crop_box`` fixed (no ``lesion_mask``)
gets the mask segmented automatically from the varied pixels instead (see ``crop_pixels``). With the
default ``"none"`` nothing of this runs and ``prepare`` returns the same three tensors as before.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from PIL import Image

from ..imaging import auto_lesion_mask
from .base import Encoder, ModalityFeatures
from .image import ImageEncoder

STREAM_KEYS = ("pooled", "l0", "l1", "l2", "tokens")
#: what the lesion stream sees outside the lesion mask (``DualExpertEncoder(lesion_mask_fill=...)``)
LESION_MASK_FILLS = ("none", "mean", "blur")
#: the ``"blur"`` fill's Gaussian sigma, as a fraction of the crop's side
BLUR_SIGMA = 0.1


def _tie(dst: nn.Module, src: nn.Module) -> None:
    """Make every parameter and buffer of ``dst`` the very tensor of ``src`` (same architecture)."""
    for (_, a), (_, b) in zip(dst.named_modules(), src.named_modules()):
        a._parameters = b._parameters
        a._buffers = b._buffers


def lesion_box(image: Image.Image, mask: np.ndarray | None, margin: float = 0.15) -> tuple[int, int, int, int]:
    """A square-ish box around the lesion (mask, else automatic segmentation), widened by ``margin``
    of its size on each side and clamped to the image."""
    w, h = image.size
    if mask is None:
        mask = auto_lesion_mask(image)
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        x0, y0, x1, y1 = w * 0.25, h * 0.25, w * 0.75, h * 0.75
    else:
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = max(side, 0.2 * min(w, h))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx0, by0 = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    bx1, by1 = min(w, int(round(cx + side / 2))), min(h, int(round(cy + side / 2)))
    return bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)


def mask_array(image: Image.Image, mask: Any | None) -> np.ndarray:
    """The lesion mask as a boolean [H, W] array at the image's size (None: the automatic segmentation)."""
    w, h = image.size
    m = np.asarray(auto_lesion_mask(image) if mask is None else mask)
    if m.ndim == 3:
        m = m.any(-1)
    m = m > 0
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    return m


def _mask_tensor(mask: np.ndarray, box: tuple[int, int, int, int] | None, size: int) -> torch.Tensor:
    """[1, size, size] float in [0, 1]: the mask (cut to ``box``), resized like the image (bilinear)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    if box is not None:
        im = im.crop(box)
    im = im.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).unsqueeze(0)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [n, c, h, w] with reflected borders (torchvision's ``gaussian_blur``), radius ~3 sigma, at
    most the image's side less one (reflect padding needs it)."""
    from torchvision.transforms.functional import gaussian_blur

    r = max(1, min(int(3 * sigma + 0.5), x.shape[-1] - 1, x.shape[-2] - 1))
    return gaussian_blur(x, [2 * r + 1, 2 * r + 1], [sigma, sigma])


def fill_outside(local: torch.Tensor, alpha: torch.Tensor, whole: torch.Tensor, fill: str) -> torch.Tensor:
    """The lesion crop ``local`` [n, 3, s, s] with its pixels outside the lesion (``alpha`` [n, 1, s, s], 1 in the
    lesion) replaced by ``fill``: ``"mean"`` the whole image's (``whole`` [n, 3, S, S]) mean colour, ``"blur"`` the
    Gaussian-blurred outside pixels of the crop itself (normalised convolution over the pixels wholly outside the
    lesion; where the crop has none nearby, the image's mean colour)."""
    if fill == "none":
        return local
    mean = whole.mean(dim=(2, 3), keepdim=True)
    if fill == "mean":
        value = mean.expand_as(local)
    elif fill == "blur":
        out = (alpha <= 1e-3).to(local.dtype)     # only pixels wholly outside: the soft edge carries lesion colour
        sigma = BLUR_SIGMA * local.shape[-1]
        num, den = _gaussian_blur(local * out, sigma), _gaussian_blur(out, sigma)
        value = torch.where(den > 1e-3, num / den.clamp_min(1e-3), mean.expand_as(local))
    else:
        raise ValueError(f"lesion_mask_fill must be one of {', '.join(LESION_MASK_FILLS)}, not '{fill}'.")
    return alpha * local + (1.0 - alpha) * value


def _features(d: dict[str, torch.Tensor], p: str) -> ModalityFeatures:
    t = d[f"{p}tokens"]
    return ModalityFeatures(d[f"{p}pooled"], (d[f"{p}l0"], d[f"{p}l1"], d[f"{p}l2"]), t,
                            torch.ones(t.shape[:2], dtype=torch.bool, device=t.device))


class DualExpertEncoder(Encoder):
    modality = "image"
    dual_expert = True          # prepare() receives (image, mask or None) pairs: see case_input

    def __init__(self, arch: str = "efficientnet_lite0", pretrained: bool | str = True, image_size: int = 224,
                 token_grid: int | None = None, gate: str = "learned", n_classes: int | None = None,
                 margin: float = 0.15, lesion_mask_fill: str = "none") -> None:
        super().__init__()
        if lesion_mask_fill not in LESION_MASK_FILLS:
            raise ValueError(f"lesion_mask_fill must be one of {', '.join(LESION_MASK_FILLS)}, not '{lesion_mask_fill}'.")
        if gate not in ("learned", "entropy"):
            raise ValueError(f"gate must be 'learned' or 'entropy', not '{gate}'.")
        if gate == "entropy" and not n_classes:
            raise ValueError("the entropy gate needs n_classes (its lesion-stream classifier predicts them).")
        self.backbone = ImageEncoder(arch, pretrained, image_size, token_grid).freeze()
        self.local_backbone = ImageEncoder(arch, False, image_size, token_grid).freeze()
        _tie(self.local_backbone, self.backbone)
        self._register_state_dict_hook(_drop_tied_keys)
        self.register_load_state_dict_post_hook(_ignore_tied_keys)
        self.arch, self.pretrained, self.image_size, self.token_grid = arch, pretrained, int(image_size), token_grid
        self.gate_mode, self.n_classes, self.margin = gate, n_classes, float(margin)
        self.lesion_mask_fill = lesion_mask_fill
        self.external_weights = self.backbone.external_weights
        d = self.backbone.out_dim
        self.out_dim, self.token_dim, self.level_dims = d, self.backbone.token_dim, self.backbone.level_dims
        if gate == "learned":
            self.gate = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, 2))
        else:
            self.lesion_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, int(n_classes)))
        self.last_aux_logits: torch.Tensor | None = None
        self.eval()

    def external_state_prefixes(self) -> list[str]:
        return ["backbone."] if self.backbone.external_weights else []

    # --- data ---------------------------------------------------------------------------------
    def case_input(self, case: Any) -> tuple[Any | None, list[str]]:
        """The image with its lesion mask (None: segmented automatically in ``prepare``)."""
        image = getattr(case, self.modality)
        return ((image, case.mask) if image is not None else None), []

    def prepare(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        """(image, mask or None) pairs -> ``pixels`` (whole images), ``local_pixels`` (the lesion crops),
        ``crop_box`` (each crop as fractions of its image), and with ``lesion_mask_fill`` on ``lesion_mask``
        ([n, 1, s, s], the mask at the input size: what ``crop_pixels`` cuts when the whole image is varied)."""
        fill = self.lesion_mask_fill != "none"
        images, crops, boxes, masks, cut = [], [], [], [], []
        for v in values:
            img, mask = v if isinstance(v, tuple) else (v, None)
            if fill:
                mask = mask_array(img, mask)      # segmented once: the box and the fill read the same mask
            box = lesion_box(img, mask, self.margin)
            images.append(img)
            crops.append(img.crop(box))
            w, h = img.size
            boxes.append([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
            if fill:
                masks.append(_mask_tensor(mask, None, self.image_size))
                cut.append(_mask_tensor(mask, box, self.image_size))
        out = {"pixels": self.backbone.prepare(images)["pixels"], "local_pixels": self.backbone.prepare(crops)["pixels"],
               "crop_box": torch.tensor(boxes, dtype=torch.float32)}
        if fill:
            out["local_pixels"] = fill_outside(out["local_pixels"], torch.stack(cut), out["pixels"], self.lesion_mask_fill)
            out["lesion_mask"] = torch.stack(masks)
        return out

    def crop_pixels(self, pixels: torch.Tensor, crop_box: torch.Tensor | None,
                    lesion_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The lesion crop cut from already prepared pixels (when only the whole image is varied, e.g. a
        blurred-context check, the local stream must see the same change).

        With ``lesion_mask_fill`` on, the crop's pixels outside the lesion get the fill, as in ``prepare``:
        the mask is ``lesion_mask`` ([n or 1, 1, s, s], from ``prepare``) cut with the same box. Without it
        (a caller that holds only ``crop_box`` fixed) each varied image is segmented automatically, as
        ``prepare`` would segment it without an uploaded mask: the fill then follows the varied image's own
        segmentation, not the case's mask (hold ``lesion_mask`` fixed too to keep the case's)."""
        n, _, s, _ = pixels.shape
        if crop_box is None:
            crop_box = torch.tensor([[0.25, 0.25, 0.75, 0.75]], dtype=pixels.dtype)
        crop_box = crop_box.expand(n, 4)
        fill = self.lesion_mask_fill != "none"
        if fill and lesion_mask is None:
            lesion_mask = self._segment(pixels)
        if fill:
            lesion_mask = lesion_mask.to(pixels.dtype).expand(n, 1, s, s)
        out, cut = [], []
        for i in range(n):
            x0, y0, x1, y1 = (crop_box[i] * s).round().long().tolist()
            ys, xs = slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))
            out.append(F.interpolate(pixels[i:i + 1, :, ys, xs], size=(s, s), mode="bilinear", align_corners=False))
            if fill:
                cut.append(F.interpolate(lesion_mask[i:i + 1, :, ys, xs], size=(s, s), mode="bilinear",
                                         align_corners=False))
        local = torch.cat(out)
        return fill_outside(local, torch.cat(cut).clamp(0, 1), pixels, self.lesion_mask_fill) if fill else local

    def _segment(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 1, s, s] automatic lesion masks of prepared pixels (see ``crop_pixels``)."""
        with torch.no_grad():
            rgb = (self.backbone.denormalize(pixels.detach().float()) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return torch.stack([_mask_tensor(mask_array(Image.fromarray(a), None), None, pixels.shape[-1]) for a in rgb])

    def frozen_inputs(self, pixels: torch.Tensor, local_pixels: torch.Tensor,
                      crop_box: torch.Tensor | None = None, lesion_mask: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        """Both streams' backbone outputs (what training caches once); ``forward`` accepts them."""
        with torch.no_grad():
            g, l = self.backbone(pixels), self.local_backbone(local_pixels)
        out = {}
        for p, f in (("g_", g), ("l_", l)):
            out.update({f"{p}pooled": f.pooled, f"{p}l0": f.levels[0], f"{p}l1": f.levels[1], f"{p}l2": f.levels[2],
                        f"{p}tokens": f.tokens})
        return out

    # --- model --------------------------------------------------------------------------------
    def weights(self, g: ModalityFeatures, l: ModalityFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[B, 2] (lesion, global) weights and extra per-case diagnostics."""
        if self.gate_mode == "learned":
            w = torch.softmax(self.gate(torch.cat([l.pooled, g.pooled], -1)), -1)
            return w, {}
        logits = self.lesion_head(l.pooled)
        self.last_aux_logits = logits if self.training else None
        p = torch.softmax(logits, -1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
        wl = torch.sigmoid(-entropy)
        return torch.stack([wl, 1 - wl], -1), {"lesion_entropy": entropy}

    def forward(self, pixels: torch.Tensor | None = None, local_pixels: torch.Tensor | None = None,  # type: ignore[override]
                crop_box: torch.Tensor | None = None, lesion_mask: torch.Tensor | None = None,
                **cached: torch.Tensor) -> ModalityFeatures:
        g = self.backbone(pixels) if pixels is not None else _features(cached, "g_")
        if local_pixels is None and pixels is not None and "l_pooled" not in cached:
            local_pixels = self.crop_pixels(pixels, crop_box, lesion_mask)
        l = self.local_backbone(local_pixels) if local_pixels is not None else _features(cached, "l_")
        w, extra = self.weights(g, l)
        wl, wg = w[:, :1], w[:, 1:]
        tokens = torch.cat([l.tokens, g.tokens], 1)
        return ModalityFeatures(wl * l.pooled + wg * g.pooled,
                                tuple(wl * a + wg * b for a, b in zip(l.levels, g.levels)),  # type: ignore[arg-type]
                                tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device),
                                extras={"lesion_gate": w[:, 0], **extra})

    def cam_layers(self, stream: str = "global") -> "OrderedDict[str, nn.Module]":
        if stream not in ("global", "lesion"):
            raise ValueError("stream must be 'global' or 'lesion'.")
        return (self.backbone if stream == "global" else self.local_backbone).cam_layers()

    def frozen_config(self) -> dict[str, Any]:
        """What the cached backbone outputs depend on (training caches them under this key)."""
        from . import encoder_config

        out = {"backbone": encoder_config(self.backbone), "margin": self.margin}
        if self.lesion_mask_fill != "none":     # absent by default: caches keyed before the option stay valid
            out["lesion_mask_fill"] = self.lesion_mask_fill
        return out

    def config(self) -> dict[str, Any]:
        return {"arch": self.arch, "pretrained": self.pretrained if isinstance(self.pretrained, bool) else False,
                "image_size": self.image_size, "token_grid": self.token_grid, "gate": self.gate_mode,
                "n_classes": self.n_classes, "margin": self.margin, "lesion_mask_fill": self.lesion_mask_fill}


def _ignore_tied_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """The local stream's weights are the global stream's: a state dict never holds them, and a strict
    load must not ask for them."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if "local_backbone." not in k]


def _drop_tied_keys(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    for k in [k for k in state if k.startswith(prefix + "local_backbone.")]:
        del state[k]
