"""The gradient parts of the batched cohort engine, computed once where several packages share a frozen encoder.

* **Note integrated gradients** (``note_ig``): case by case at the note's own token length (no padding:
  padding a batch to its longest note made the transformer do up to 3x the work of the per-case loop),
  the interpolated word embeddings go through the shared frozen text encoder **once** for every package
  that uses it (same ``encoder_fingerprint``); each package then back-propagates its own target logit
  from those features (``retain_graph``). Gauss-Legendre points and weights are Captum's, so the scores
  are those of ``core.explain.attributions.note_attributions``.
* **Grad-CAM of the last stage** (``tail_gradcam``): the last feature map of every image of the batch is
  computed once (shared by the packages, see ``image_stages``); each package's CAM needs only the gradient
  of its target logit with respect to that map, i.e. a backward pass through pooling, fusion and head,
  not through the backbone. pytorch-grad-cam still computes the map from activations and gradients (same
  weights, ReLU, min-max scaling and resize as for the whole model).

Only a plain :class:`~core.encoders.image.ImageEncoder` takes the CAM shortcut (``fast_cam_encoder``);
a dual-expert or any other image encoder goes through the whole-model Grad-CAM of the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..encoders import ModalityFeatures
from ..explain.attributions import note_ig_inputs

if TYPE_CHECKING:
    from .engine import _Batch


# ---- image: the stages once, the features from them --------------------------------------------------------------

def fast_cam_encoder(enc: nn.Module) -> bool:
    """True for the plain image encoder, whose last-stage CAM layer output is the last map of ``_stages``."""
    from ..encoders.image import ImageEncoder

    return type(enc) is ImageEncoder


def image_stages(enc: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    return enc._stages(pixels)


def image_features(enc: nn.Module, maps: Sequence[torch.Tensor], early: Sequence[torch.Tensor] | None = None
                   ) -> ModalityFeatures:
    """``ImageEncoder.forward`` from its stage maps (``maps``: the three maps; or the last one alone with
    ``early`` the pooled early / middle levels, as when only the last map varies)."""
    last = maps[-1]
    levels = (*early, last.mean(dim=(2, 3))) if early is not None else tuple(f.mean(dim=(2, 3)) for f in maps)
    grid = nn.functional.adaptive_avg_pool2d(last, enc.token_grid) if enc.token_grid else last
    tokens = grid.flatten(2).transpose(1, 2)
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return ModalityFeatures(levels[2], levels, tokens, mask)  # type: ignore[arg-type]


class _Tail(nn.Module):
    """last map of the batch's image rows -> calibrated logits (the other modalities held at their features)."""

    def __init__(self, b: "_Batch", rows: torch.Tensor, early: Sequence[torch.Tensor]):
        super().__init__()
        self.b, self.rows, self.early = b, rows, early
        self.layer = nn.Identity()                                       # pytorch-grad-cam hooks this
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # BaseCAM reads the device from a parameter

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        if not last.requires_grad and last.is_leaf:
            last.requires_grad_(True)
        feats = image_features(self.b.model.encoders["image"], [self.layer(last)], self.early)
        return self.b.logits(self.rows, replace={"image": feats})


def tail_gradcam(b: "_Batch", rows: torch.Tensor, targets: torch.Tensor, last: torch.Tensor,
                 early: Sequence[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """[n, H, W] Grad-CAM maps of the image rows ``rows`` (``last``: their last-stage maps, ``early``: their
    pooled early / middle levels, ``size``: the model's input (width, height))."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class _GradCAM(GradCAM):
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return size

    tail = _Tail(b, rows, early)
    cam_targets = [ClassifierOutputTarget(int(targets[i])) for i in rows]
    with _GradCAM(model=tail, target_layers=[tail.layer]) as cam, torch.enable_grad():
        return np.asarray(cam(input_tensor=last.detach().clone(), targets=cam_targets), np.float32)


# ---- note: one forward of the shared encoder per case, one backward per package ----------------------------------

def _gauss_legendre(n_steps: int) -> tuple[torch.Tensor, list[float]]:
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_func, alphas_func = approximation_parameters("gausslegendre")
    return torch.tensor(step_sizes_func(n_steps)).float(), list(alphas_func(n_steps))


def note_ig(batches: Sequence["_Batch"], notes: Sequence[str | None], targets: Sequence[torch.Tensor], n_steps: int,
            merge: Callable[..., list[dict[str, Any]]]) -> list[list[list[dict[str, Any]] | None]]:
    """Word scores of every case's note for each package of ``batches`` (which share one note encoder:
    ``batches[0]``'s); ``targets[p][i]`` is package p's target class for case i. Returns
    ``[package][case] -> words`` (None where the case has no note)."""
    enc = batches[0].model.encoders["note"]
    step_sizes, alphas = _gauss_legendre(n_steps)
    out: list[list[list[dict[str, Any]] | None]] = [[None] * len(notes) for _ in batches]
    js = [b.model.modalities.index("note") for b in batches]
    for i, note in enumerate(notes):
        users = [p for p, b in enumerate(batches) if bool(b.present[i, js[p]])]
        if not users or not note:
            continue
        tok, ids, mask, emb, base_emb = note_ig_inputs(enc, note)
        scaled = torch.cat([base_emb + a * (emb - base_emb) for a in alphas]).requires_grad_()
        rows = torch.full((n_steps,), i, dtype=torch.long)
        with torch.enable_grad():
            feats = enc(inputs_embeds=scaled, attention_mask=mask.expand(n_steps, -1))
            for k, p in enumerate(users):
                logits = batches[p].logits(rows, replace={"note": feats})
                grad, = torch.autograd.grad(logits[:, int(targets[p][i])].sum(), scaled,
                                            retain_graph=k < len(users) - 1)
                total = (grad.reshape(n_steps, -1) * step_sizes.view(n_steps, 1)).sum(0).view(emb.shape)
                scores = (total * (emb - base_emb)).sum(-1)[0].detach().numpy()
                out[p][i] = merge(note, tok.word_ids(0), tok["offset_mapping"][0].tolist(), scores)
    return out
