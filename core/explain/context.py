"""One case held still while one modality is explained.

An :class:`ExplainContext` validates and prepares a case once, runs every encoder once (no grad)
and keeps the features. Each explainer then varies a single modality's input and recomputes only
that encoder; the other modalities enter as their cached features, exactly as in the prediction.
The quantity explained is the *calibrated* logit (logit / T_cal) of the target class.
"""
from __future__ import annotations

import copy
import threading
import weakref
from typing import Any, Callable

import torch
from torch import nn

from ..case import Case
from ..encoders import ModalityFeatures
from ..package import Package


class ExplainContext:
    def __init__(self, package: Package, case: Case, target: int | None = None,
                 features: dict[str, ModalityFeatures] | None = None, classify: bool = True):
        """``features``: modality -> encoder output of this case already computed (by this package's
        encoder or one with the same fingerprint); those encoders are not run again.
        ``classify=False``: the fusion + head pass that gives the case's logits (and the default target)
        is left to the caller, who hands them over with ``set_logits`` (``explain_case`` takes them from
        its prediction's pass on these features)."""
        self.package, self.case = package, case
        self.model = package.model
        self.temperature = package.temperature
        self.inputs, self.present, self.warnings = package.prepare([case])
        given = {m: f for m, f in (features or {}).items() if self.inputs.get(m) is not None}
        with torch.no_grad():  # not inference_mode: these features later sit in graphs that need gradients
            self.features = self.model.encode({**self.inputs, **given}, self.present)
            out = self.model.fuse_and_classify(self.features, self.present) if classify else None
        self.logits: torch.Tensor | None = None
        self.target: int | None = target
        if out is not None:
            self.set_logits(out.logits[0])

    def set_logits(self, logits: torch.Tensor) -> None:
        """The case's [C] logits (dropout off); the target becomes their argmax unless one was given."""
        self.logits = logits.detach().clone()
        target = self.target
        self.target = int(self.logits.argmax()) if target is None else int(target)
        if not 0 <= self.target < len(self.package.labels):
            raise ValueError(f"target class {target} is outside 0..{len(self.package.labels) - 1}.")

    def target_logit(self) -> torch.Tensor:
        """The case's calibrated target logit (0-d), the value every forward function here gives the case as it is."""
        return self.logits[self.target] / self.temperature

    # -- which modalities the case has -------------------------------------------------------
    def has(self, modality: str) -> bool:
        return modality in self.model.modalities and bool(self.present[0, self.model.modalities.index(modality)])

    @property
    def pixel_encoder(self) -> nn.Module:
        """The plain image encoder that turns images into ``pixels`` (a dual expert's global backbone):
        its ``prepare`` and normalisation, without the dual expert's lesion segmentation and crop."""
        enc = self.model.encoders["image"]
        return enc.backbone if enc.dual_expert else enc

    def image_fixed(self) -> dict[str, torch.Tensor]:
        """Image inputs to hold fixed when the whole image is varied: a dual-expert encoder's lesion
        box (its lesion stream is then cut from the varied image, so both streams see the change) and,
        with ``lesion_mask_fill`` on, the case's lesion mask (else every varied image would be segmented
        anew, and the fill would follow that segmentation instead of the case's mask)."""
        image = self.inputs.get("image") or {}
        return {k: image[k] for k in ("crop_box", "lesion_mask") if k in image}

    def present_features(self) -> dict[str, ModalityFeatures]:
        """Every present modality's encoder output (what ``Package.predict(features=...)`` takes)."""
        return {m: self.raw_features(m) for m in self.model.modalities if self.has(m)}

    def raw_features(self, modality: str) -> ModalityFeatures:
        """The encoder output of the present case only (the form ``encode`` accepts for a modality)."""
        j = self.model.modalities.index(modality)
        return self.features[j].index(torch.tensor([0]))

    # -- forward functions for Captum / pytorch-grad-cam ----------------------------------------
    def fixed_inputs(self, vary: str, n: int) -> dict[str, Any]:
        """Inputs for a batch of ``n`` copies of the case in which only ``vary`` will be replaced."""
        return {m: (self.raw_features(m).repeat(n) if self.has(m) else None) for m in self.model.modalities if m != vary}

    def private_encoder(self, modality: str) -> nn.Module:
        """A private copy of one encoder for explainers that attach hooks (pytorch-grad-cam, Captum's
        layer methods): hooks on the shared model would also record other sessions' forward passes."""
        return copy.deepcopy(self.model.encoders[modality])

    def calibrated_logits(self, vary: str, modality_inputs: dict[str, torch.Tensor] | ModalityFeatures,
                          mc_generator: torch.Generator | None = None, encoder: nn.Module | None = None) -> torch.Tensor:
        """[n, C] calibrated logits with ``vary``'s input replaced by ``modality_inputs`` (batch of n),
        encoded by ``encoder`` when given (a private copy), else by the model's own encoder."""
        x = next(iter(modality_inputs.values())) if isinstance(modality_inputs, dict) else modality_inputs.pooled
        n = x.shape[0]
        inputs = self.fixed_inputs(vary, n)
        if encoder is not None and isinstance(modality_inputs, dict):
            modality_inputs = encoder(**modality_inputs)
        inputs[vary] = modality_inputs
        present = self.present.expand(n, -1).clone()
        present[:, self.model.modalities.index(vary)] = True
        feats = self.model.encode(inputs, present)
        fused, _ = self.model.fusion(feats, present)
        if mc_generator is None:
            logits, _ = self.model.head(fused)
        else:
            logits, _ = self.model.head(fused, 1, mc_generator)
            logits = logits[0]
        return logits / self.temperature

    def target_fn(self, vary: str, extra_key: str, encoder: nn.Module | None = None,
                  **fixed: torch.Tensor) -> Callable[..., torch.Tensor]:
        """f(x) -> [n] calibrated target logit, varying input tensor ``extra_key`` of ``vary``."""
        def f(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            inp = {extra_key: x, **{k: v.expand(n, *v.shape[1:]) for k, v in fixed.items()}}
            return self.calibrated_logits(vary, inp, encoder=encoder)[:, self.target]
        return f


# Private copies of a shared encoder for explainers that hook layers, kept for reuse: a deep copy of an
# image backbone costs as much as a forward pass, and every Grad-CAM run needs one. A copy is handed to
# one user at a time and comes back (hook-free) when that user is gone; a few are kept per encoder.
_PRIVATE: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()
_PRIVATE_LOCK = threading.Lock()
_PRIVATE_KEEP = 4


def borrow_private_copy(shared: nn.Module) -> nn.Module:
    with _PRIVATE_LOCK:
        free = _PRIVATE.get(shared)
        if free:
            return free.pop()
    return copy.deepcopy(shared)


def return_private_copy(shared_ref: "weakref.ref[nn.Module]", private: nn.Module) -> None:
    shared = shared_ref()
    if shared is None or any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or
                             getattr(m, "_backward_pre_hooks", None) for m in private.modules()):
        return  # a copy that still carries hooks (an explainer failed mid-way) is dropped, never reused
    with _PRIVATE_LOCK:
        free = _PRIVATE.setdefault(shared, [])
        if len(free) < _PRIVATE_KEEP:
            free.append(private)


class ImageTargetModel(nn.Module):
    """pixels -> calibrated logits of the fused model, the other modalities held fixed: the single-input
    model pytorch-grad-cam expects."""

    def __init__(self, ctx: ExplainContext, mc_seed: int | None = None, stream: str = "global",
                 input_grad: bool = True):
        """``input_grad=False``: the pixels do not require gradients (a CAM that cuts the graph at its
        target layer gets the same layer gradients without the backward pass through the layers before it)."""
        super().__init__()
        self.input_grad = input_grad
        self.ctx = ctx
        shared = ctx.model.encoders["image"]
        self.encoder = borrow_private_copy(shared)  # hooks go on this copy, never on the shared model
        weakref.finalize(self, return_private_copy, weakref.ref(shared), self.encoder)
        self.mc_seed = mc_seed
        # a dual-expert encoder has two image inputs: vary one stream, hold the other at the case's
        self.key = "pixels" if stream == "global" else "local_pixels"
        # > 1: one image in, this many rows out: a hook on the encoder repeats the image's activations at
        # some layer (see gradcam.cam_stability), the encoder's other outputs are repeated here
        self.rows = 1

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.input_grad and not pixels.requires_grad and pixels.is_leaf:
            pixels.requires_grad_(True)  # the shared model's weights are frozen; gradients flow from the input
        gen = None if self.mc_seed is None else torch.Generator().manual_seed(self.mc_seed)
        n = pixels.shape[0]
        inp = {self.key: pixels, **{k: v.expand(n, *v.shape[1:]) for k, v in self.ctx.inputs["image"].items() if k != self.key}}
        if self.rows > 1 and n == 1:
            feats = self.encoder(**inp)
            r = self.rows
            rep = lambda t: t.expand(r, *t.shape[1:]) if t.shape[0] == 1 else t  # noqa: E731
            feats = ModalityFeatures(rep(feats.pooled), tuple(rep(x) for x in feats.levels), rep(feats.tokens),
                                     rep(feats.token_mask), feats._extras(rep))
            return self.ctx.calibrated_logits("image", feats, gen)
        return self.ctx.calibrated_logits("image", inp, gen, encoder=self.encoder)
