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


def _features(d: dict[str, torch.Tensor], p: str) -> ModalityFeatures:
    t = d[f"{p}tokens"]
    return ModalityFeatures(d[f"{p}pooled"], (d[f"{p}l0"], d[f"{p}l1"], d[f"{p}l2"]), t,
                            torch.ones(t.shape[:2], dtype=torch.bool, device=t.device))


class DualExpertEncoder(Encoder):
    modality = "image"
    dual_expert = True          # prepare() receives (image, mask or None) pairs: see case_input

    def __init__(self, arch: str = "efficientnet_lite0", pretrained: bool | str = True, image_size: int = 224,
                 token_grid: int | None = None, gate: str = "learned", n_classes: int | None = None,
                 margin: float = 0.15) -> None:
        super().__init__()
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
        images, crops, boxes = [], [], []
        for v in values:
            img, mask = v if isinstance(v, tuple) else (v, None)
            box = lesion_box(img, mask, self.margin)
            images.append(img)
            crops.append(img.crop(box))
            w, h = img.size
            boxes.append([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
        return {"pixels": self.backbone.prepare(images)["pixels"], "local_pixels": self.backbone.prepare(crops)["pixels"],
                "crop_box": torch.tensor(boxes, dtype=torch.float32)}

    @staticmethod
    def crop_pixels(pixels: torch.Tensor, crop_box: torch.Tensor | None) -> torch.Tensor:
        """The lesion crop cut from already prepared pixels (when only the whole image is varied, e.g. a
        blurred-context check, the local stream must see the same change)."""
        n, _, s, _ = pixels.shape
        if crop_box is None:
            crop_box = torch.tensor([[0.25, 0.25, 0.75, 0.75]], dtype=pixels.dtype)
        crop_box = crop_box.expand(n, 4)
        out = []
        for i in range(n):
            x0, y0, x1, y1 = (crop_box[i] * s).round().long().tolist()
            patch = pixels[i:i + 1, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            out.append(F.interpolate(patch, size=(s, s), mode="bilinear", align_corners=False))
        return torch.cat(out)

    def frozen_inputs(self, pixels: torch.Tensor, local_pixels: torch.Tensor,
                      crop_box: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
                crop_box: torch.Tensor | None = None, **cached: torch.Tensor) -> ModalityFeatures:
        g = self.backbone(pixels) if pixels is not None else _features(cached, "g_")
        if local_pixels is None and pixels is not None and "l_pooled" not in cached:
            local_pixels = self.crop_pixels(pixels, crop_box)
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

        return {"backbone": encoder_config(self.backbone), "margin": self.margin}

    def config(self) -> dict[str, Any]:
        return {"arch": self.arch, "pretrained": self.pretrained if isinstance(self.pretrained, bool) else False,
                "image_size": self.image_size, "token_grid": self.token_grid, "gate": self.gate_mode,
                "n_classes": self.n_classes, "margin": self.margin}


def _ignore_tied_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """The local stream's weights are the global stream's: a state dict never holds them, and a strict
    load must not ask for them."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if "local_backbone." not in k]


def _drop_tied_keys(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    for k in [k for k in state if k.startswith(prefix + "local_backbone.")]:
        del state[k]
