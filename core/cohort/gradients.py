"""The gradient parts of the batched cohort engine, computed once where several packages share a frozen encoder.

* **Note integrated gradients** (``note_ig``): case by case at the note's own token length (no padding:
  padding a batch to its longest note made the transformer do up to 3x the work of the per-case loop),
  the interpolated word embeddings go through the shared frozen text encoder **once** for every package
  that uses it (same ``encoder_fingerprint``); each package then back-propagates its own target logit
  from those features (``retain_graph``). Gauss-Legendre points and weights are Captum's, so the scores
  are those of ``core.explain.attributions.note_attributions``. Notes are not grouped: MiniLM's forward and
  input-gradient passes are matrix products already large enough at one note x 24 steps to run at the
  core's full speed with one thread (measured per note, forward + 2 backward, one at a time vs groups of 4
  notes of the same length: 12 tokens 0.52 vs 0.61 s, 18 tokens 0.72 vs 0.73 s, 40 tokens 1.59 vs 1.70 s),
  and fusion + head, the only part with small operations, are ~12% of the note's time. Nor does one
  batched backward for all packages (``is_grads_batched``, 18 tokens: 0.67 s vs 0.61 s for two in turn).
  The work is F + P x B (one forward, one backward per package) against the loop's P x (F + B). Padding
  several notes into one pass (with attention masks; equal to per-note IG within 1.1e-6) was measured
  slower again: groups of 4 / 8 / 16 notes sorted by length 0.84 / 1.17 / 1.80 vs 0.68 CPU s per note.
* **Grad-CAM of the last stage** (``tail_gradcam``): the last feature map of every image of the batch is
  computed once (shared by the packages, see ``image_stages``); each package's CAM needs only the gradient
  of its target logit with respect to that map, i.e. a backward pass through pooling, fusion and head,
  not through the backbone. The map is pytorch-grad-cam's ``GradCAM`` (same weights, ReLU, min-max scaling
  and resize as for the whole model), computed from the map and its gradient without importing the library.

* **Table integrated gradients** (``table_ig``): the batch's cases x Gauss-Legendre steps in one forward and
  one backward pass (the arithmetic of Captum's ``IntegratedGradients`` with ``method="gausslegendre"``,
  which the engine called before; Captum, which pulls in matplotlib, is no longer imported by the engine).

Only a plain :class:`~core.encoders.image.ImageEncoder` takes the CAM shortcut (``fast_cam_encoder``);
a dual-expert or any other image encoder goes through the whole-model Grad-CAM of the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..encoders import ModalityFeatures
from ..explain.attributions import gauss_legendre, note_ig_inputs

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
    return enc.from_stages(maps, tuple(early) if early is not None else ())


def tail_gradcam(b: "_Batch", rows: torch.Tensor, targets: torch.Tensor, last: torch.Tensor,
                 early: Sequence[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """[n, H, W] Grad-CAM maps of the image rows ``rows`` (``last``: their last-stage maps, ``early``: their
    pooled early / middle levels, ``size``: the model's input (width, height)).

    pytorch-grad-cam's ``GradCAM`` on the last stage, computed here from the map and its gradient (one
    backward pass from the target logits through pooling, fusion and head): the channel weights are the
    gradient's spatial mean, the map the ReLU of the weighted channel sum, min-max scaled, resized to
    ``size`` with OpenCV, then scaled again -- pytorch-grad-cam's ``BaseCAM`` steps, in its float32 numpy
    arithmetic (a test compares the two). The library is not imported: it loads torchvision and
    scikit-learn (~3 CPU s), which every Ray actor would pay at start-up."""
    act = last.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        feats = image_features(b.model.encoders["image"], [act], early)
        logits = b.logits(rows, replace={"image": feats})
        score = logits.gather(1, targets[rows].view(-1, 1)).sum()
        grad, = torch.autograd.grad(score, act)
    a, g = act.detach().numpy(), grad.numpy()
    weights = np.mean(g, axis=(2, 3))
    cam = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0)
    return _scale_cams(np.maximum(_scale_cams(cam, size), 0))


def _scale_cams(cams: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: each map min-max scaled (1e-7 guard), resized to ``size``."""
    import cv2

    out = []
    for m in cams:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        out.append(cv2.resize(np.float32(m), size) if size is not None else m)
    return np.float32(out)


# ---- note: one forward of the shared encoder per case, one backward per package ----------------------------------

def note_ig(batches: Sequence["_Batch"], notes: Sequence[str | None], targets: Sequence[torch.Tensor], n_steps: int,
            merge: Callable[..., list[dict[str, Any]]]) -> list[list[list[dict[str, Any]] | None]]:
    """Word scores of every case's note for each package of ``batches`` (which share one note encoder:
    ``batches[0]``'s); ``targets[p][i]`` is package p's target class for case i. Returns
    ``[package][case] -> words`` (None where the case has no note)."""
    enc = batches[0].model.encoders["note"]
    step_sizes, alphas = gauss_legendre(n_steps)
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


# ---- table: the batch's cases x steps in one pass ------------------------------------------------------------------

def table_ig(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
             rows: torch.Tensor, targets: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Integrated gradients of ``f(values [m, D], rows [m]) -> logits [m, C]`` at the table rows ``x`` [n, D]
    (the cases ``rows`` [n], explained for class ``targets`` [n]) from ``baseline`` [n, D]: what Captum's
    ``IntegratedGradients(f).attribute(x, baselines=baseline, n_steps=n_steps, method="gausslegendre",
    additional_forward_args=(rows,), target=targets)`` computes -- the same step-major batch of n x n_steps
    scaled inputs, one backward pass of the summed target logits, the steps' gradients weighted, summed per
    case and multiplied by ``x - baseline`` -- without Captum. -> [n, D]."""
    n = x.shape[0]
    step_sizes, alphas = gauss_legendre(n_steps)
    with torch.enable_grad():
        scaled = torch.cat([baseline + a * (x - baseline) for a in alphas]).requires_grad_()
        logits = f(scaled, rows.repeat(n_steps))
        score = logits.gather(1, targets.repeat(n_steps).view(-1, 1)).sum()
        grads, = torch.autograd.grad(score, scaled)
    scaled_grads = grads.reshape(n_steps, -1) * step_sizes.view(n_steps, 1)
    total = scaled_grads.reshape((n_steps, n) + tuple(x.shape[1:])).sum(0)
    return total * (x - baseline)
