"""MultimodalClassifier = encoders + fusion + head, the one place they are assembled.

Any modality may be absent for any case. ``inputs[m]`` holds the prepared tensors of only the
cases where modality ``m`` is present (``present[:, m]``); the encoder runs on those rows and a
learned "missing" embedding fills the others (pooled vector, three levels and one token), so every
fusion variant sees full-batch features and the prediction comes from what is there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .encoders import Encoder, ModalityFeatures, ModalitySpec
from .fusion import FUSIONS
from .heads import build_head


class MissingEmbedding(nn.Module):
    """Learned stand-in features for an absent modality."""

    def __init__(self, spec: ModalitySpec):
        super().__init__()
        self.pooled = nn.Parameter(torch.zeros(spec.dim))
        self.levels = nn.ParameterList(nn.Parameter(torch.zeros(d)) for d in spec.level_dims)
        self.token = nn.Parameter(torch.randn(spec.token_dim) * 0.02)

    def fill(self, feats: ModalityFeatures | None, present: torch.Tensor) -> ModalityFeatures:
        """Scatter the present rows' features into a full batch; absent rows get the embedding."""
        B = present.shape[0]
        idx = present.nonzero().squeeze(1)
        absent = (~present).unsqueeze(-1)

        def scatter(x: torch.Tensor | None, miss: torch.Tensor) -> torch.Tensor:
            full = miss.expand(B, *miss.shape)
            if x is None:
                return full
            if x.shape[1:] == miss.shape and x.dtype == miss.dtype:  # one copy: the embedding, the present rows over it
                return full.index_copy(0, idx, x)
            base = torch.zeros(B, *x.shape[1:], dtype=x.dtype, device=x.device).index_copy(0, idx, x)
            return torch.where(absent.view(B, *([1] * (x.dim() - 1))), full, base)

        n = 1 if feats is None else max(feats.tokens.shape[1], 1)
        tok_miss = torch.zeros(n, self.token.shape[0], dtype=self.token.dtype, device=self.token.device)
        tok_miss = torch.cat([self.token.unsqueeze(0), tok_miss[1:]], 0)
        mask_miss = torch.zeros(n, dtype=torch.bool, device=present.device)
        mask_miss[0] = True
        if feats is None:
            return ModalityFeatures(scatter(None, self.pooled), tuple(scatter(None, l) for l in self.levels),  # type: ignore[arg-type]
                                    scatter(None, tok_miss), mask_miss.expand(B, n))
        mask = mask_miss.expand(B, n).index_copy(0, idx, feats.token_mask) if feats.token_mask.shape[1] == n else \
            torch.where(absent, mask_miss.expand(B, n),
                        torch.zeros(B, n, dtype=torch.bool, device=present.device).index_copy(0, idx, feats.token_mask))
        extras = None
        if feats.extras:  # per-case encoder diagnostics: NaN for the absent rows
            extras = {k: torch.full((B, *v.shape[1:]), float("nan"), dtype=v.dtype, device=v.device).index_copy(0, idx, v)
                      for k, v in feats.extras.items()}
        return ModalityFeatures(scatter(feats.pooled, self.pooled),
                                tuple(scatter(x, l) for x, l in zip(feats.levels, self.levels)),  # type: ignore[arg-type]
                                scatter(feats.tokens, tok_miss), mask, extras)


class FeatureReconstructor(nn.Module):
    """Missing-modality compensation (seed 001): an absent modality's pooled vector and levels are
    regressed from the pooled vectors of the modalities that are present (absent ones zeroed, plus
    the presence flags); its first token is the learned missing token plus a projection of the
    reconstruction. Trained with the model: on rows where the modality is present, the
    reconstruction from the others is pulled towards its real (detached) features."""

    def __init__(self, specs: Sequence[ModalitySpec], target: ModalitySpec, hidden: int = 128):
        super().__init__()
        self.sources = [s.name for s in specs if s.name != target.name]
        d_in = sum(s.dim for s in specs if s.name != target.name) + len(specs)
        self.body = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.pooled = nn.Linear(hidden, target.dim)
        self.levels = nn.ModuleList(nn.Linear(hidden, d) for d in target.level_dims)
        self.token = nn.Linear(target.dim, target.token_dim)

    def forward(self, pooled: Mapping[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = torch.cat([pooled[m] for m in self.sources] + [present.to(next(iter(pooled.values())).dtype)], -1)
        h = self.body(x)
        return self.pooled(h), tuple(l(h) for l in self.levels)


@dataclass
class ModelOutput:
    logits: torch.Tensor                  # [B, C] (or [T, B, C] with MC samples)
    log_var: torch.Tensor                 # [B]    (or [T, B])
    fused: torch.Tensor                   # [B, F]
    diagnostics: dict[str, Any]
    features: list[ModalityFeatures]


class MultimodalClassifier(nn.Module):
    def __init__(self, encoders: Mapping[str, Encoder], n_classes: int, fusion: str = "concat",
                 fusion_options: Mapping[str, Any] | None = None, fused_dim: int = 256,
                 head_options: Mapping[str, Any] | None = None, missing: str = "embedding"):
        """``missing``: "embedding" (a learned stand-in per absent modality) or "reconstruct" (regress
        the absent modality's features from the present ones, see FeatureReconstructor)."""
        super().__init__()
        if missing not in ("embedding", "reconstruct"):
            raise ValueError(f"missing must be 'embedding' or 'reconstruct', not '{missing}'.")
        if not encoders:
            raise ValueError("A classifier needs at least one modality.")
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        specs = [enc.spec() for enc in encoders.values()]
        self.missing = nn.ModuleDict({s.name: MissingEmbedding(s) for s in specs})
        self.missing_mode = missing
        self.reconstruct = nn.ModuleDict({s.name: FeatureReconstructor(specs, s) for s in specs}) \
            if missing == "reconstruct" and len(specs) > 1 else None
        self.last_reconstruction_loss: torch.Tensor | None = None
        self.fusion_name = fusion
        self.fusion = FUSIONS.get(fusion)(specs, fused_dim, **dict(fusion_options or {}))
        self.head = build_head(fused_dim, n_classes, dict(head_options or {}))
        self.n_classes = n_classes
        self.fused_dim = fused_dim
        self.fusion_options = dict(fusion_options or {})
        self.head_options = dict(head_options or {})

    def encode(self, inputs: Mapping[str, Mapping[str, torch.Tensor] | ModalityFeatures | None],
               present: torch.Tensor) -> list[ModalityFeatures]:
        """``inputs[m]``: prepared tensors of the present rows, or their already computed
        ModalityFeatures (cached outputs of a frozen encoder), or None."""
        feats = []
        for j, m in enumerate(self.modalities):
            col = present[:, j].bool()
            x = inputs.get(m)
            if x is None or not bool(col.any()):
                raw = None
            else:
                raw = x if isinstance(x, ModalityFeatures) else self.encoders[m](**x)
            feats.append(self.missing[m].fill(raw, col))
        if self.reconstruct is not None:
            feats = self._compensate(feats, present.bool())
        return feats

    def _compensate(self, feats: list[ModalityFeatures], present: torch.Tensor) -> list[ModalityFeatures]:
        """Absent rows get features reconstructed from the present modalities (see FeatureReconstructor)."""
        pooled = {m: f.pooled * present[:, j:j + 1].to(f.pooled.dtype) for j, (m, f) in enumerate(zip(self.modalities, feats))}
        out, losses = [], []
        for j, (m, f) in enumerate(zip(self.modalities, feats)):
            col = present[:, j]
            others = present.clone()
            others[:, j] = False
            usable = others.any(1)          # something to reconstruct from
            if not bool(usable.any()):
                out.append(f)
                continue
            hat, hat_levels = self.reconstruct[m](pooled, others)
            if self.training and bool((col & usable).any()):
                rows = col & usable
                losses.append(F.mse_loss(hat[rows], f.pooled[rows].detach()))
            fill = (~col & usable).unsqueeze(-1)
            if not bool(fill.any()):
                out.append(f)
                continue
            tokens = f.tokens.clone()
            tokens[:, 0] = torch.where(fill, f.tokens[:, 0] + self.reconstruct[m].token(hat), f.tokens[:, 0])
            out.append(ModalityFeatures(torch.where(fill, hat, f.pooled),
                                        tuple(torch.where(fill, h, l) for h, l in zip(hat_levels, f.levels)),  # type: ignore[arg-type]
                                        tokens, f.token_mask, f.extras))
        self.last_reconstruction_loss = torch.stack(losses).mean() if (self.training and losses) else None
        return out

    def fuse_and_classify(self, feats: Sequence[ModalityFeatures], present: torch.Tensor, mc_samples: int = 0,
                          generator: torch.Generator | None = None) -> ModelOutput:
        fused, diag = self.fusion(feats, present)
        logits, log_var = self.head(fused, mc_samples, generator)
        if hasattr(self.head, "diagnostics"):
            diag = {**diag, **self.head.diagnostics(fused)}
        for m, f in zip(self.modalities, feats):
            for k, v in (f.extras or {}).items():
                diag[f"{m}_{k}"] = v
        return ModelOutput(logits, log_var, fused, diag, list(feats))

    def forward(self, inputs: Mapping[str, Mapping[str, torch.Tensor] | None], present: torch.Tensor,
                mc_samples: int = 0, generator: torch.Generator | None = None) -> ModelOutput:
        return self.fuse_and_classify(self.encode(inputs, present), present, mc_samples, generator)
