"""Vector-level fusion of the pooled modality features, simple to complex (seed 003's table)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..encoders.base import ModalityFeatures, ModalitySpec
from .base import FUSIONS, Fusion, contribution_shares, norm_shares, projector, unit_scale


@FUSIONS.register("unimodal")
class UnimodalBaseline(Fusion):
    SUMMARY = "baseline, not a fusion: one modality's pooled vector -> projection (for 'is fusion worth it?')."
    unimodal = True

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        self.proj = nn.Sequential(projector(specs[0].dim, out_dim), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        return self.proj(feats[0].pooled), {"modality_weights": torch.ones_like(present, dtype=feats[0].pooled.dtype)}


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    SUMMARY = "[v; t; ...] -> linear: one weight block per modality."
    DIAGNOSTICS = {"contribution_norms": "[B, M] L2 norm of W_m x_m, each modality's block of the linear map"}

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        self.sizes = [s.dim for s in specs]
        self.linear = nn.Linear(sum(self.sizes), out_dim)
        self.post = nn.Sequential(nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        xs = [f.pooled for f in feats]
        fused = self.post(self.linear(torch.cat(xs, -1)))
        blocks = self.linear.weight.split(self.sizes, dim=1)
        parts = [x @ w.T for x, w in zip(xs, blocks)]  # the linear map is the sum of these blocks
        norms = torch.stack([p.norm(dim=-1) for p in parts], -1)
        return fused, {"modality_weights": norm_shares(norms), "contribution_norms": norms}


class _ProjectedFusion(Fusion):
    """Shared by add / multiply: project every modality to a common width first."""

    DIAGNOSTICS = {"contribution_norms": "[B, M] L2 norm of each modality's projection h_m"}

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        self.proj = nn.ModuleList(projector(s.dim, dim) for s in specs)
        self.out = nn.Sequential(nn.Linear(dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def combine(self, hs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        hs = [p(f.pooled) for p, f in zip(self.proj, feats)]
        norms = torch.stack([h.norm(dim=-1) for h in hs], -1)
        return self.out(self.combine(hs)), {"modality_weights": norm_shares(norms), "contribution_norms": norms}


@FUSIONS.register("add")
class AddFusion(_ProjectedFusion):
    SUMMARY = "sum of per-modality projections (assumes one shared space)."

    def combine(self, hs):
        return torch.stack(hs).sum(0)


@FUSIONS.register("multiply")
class MultiplyFusion(_ProjectedFusion):
    SUMMARY = "element-wise product of per-modality projections (keeps co-occurring signal)."

    def __init__(self, specs, out_dim, dim: int = 128, **options):
        super().__init__(specs, out_dim, dim=dim, **options)
        self.norm = nn.LayerNorm(dim)  # a product of k vectors drifts in scale; renormalise it

    def combine(self, hs):
        return self.norm(torch.stack(hs).prod(0))


class GateMixer(nn.Module):
    """Seed 001's gate over k vectors of one width. Two: ``g = sigmoid(W[a; b])``,
    ``g*a + (1-g)*b``; more: a sigmoid gate per modality from all of them, normalised to sum to 1.

    ``identifiable=False`` (packages saved before the option): LayerNorm over the mix plus a residual
    mean of the inputs; each input keeps its own learned scale, so a modality's share is set as much
    by the scale of its projection as by its gate. ``identifiable=True`` (what training now uses):
    the gate still reads the raw inputs, but what it weighs is each input brought to unit scale
    (:func:`unit_scale`) and there is no ungated residual, so the gate alone sets each modality's share."""

    def __init__(self, k: int, dim: int, identifiable: bool = False, gate_per: str = "dim"):
        super().__init__()
        if gate_per not in ("dim", "modality"):
            raise ValueError("gate_per must be 'dim' (a gate per dimension, seed 001) or 'modality' (one gate per input).")
        self.k, self.dim, self.identifiable, self.gate_per = k, dim, identifiable, gate_per
        width = 1 if gate_per == "modality" else dim
        self.gate = nn.Linear(k * dim, width if k == 2 else k * width)
        self.norm = nn.LayerNorm(dim)

    def forward(self, hs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mixed [B, d], effective weights [B, M, d] summing to 1 over modalities)."""
        z = self.gate(torch.cat(list(hs), -1))
        if self.k == 2:
            g = torch.sigmoid(z)
            w = torch.stack([g, 1 - g], 1)
        elif self.gate_per == "modality":   # one weight per input and case: softmax over the inputs
            w = torch.softmax(z.view(z.shape[0], self.k, 1), 1)
        else:
            g = torch.sigmoid(z.view(z.shape[0], self.k, -1))
            w = g / g.sum(1, keepdim=True).clamp_min(1e-6)
        w = w.expand(-1, -1, self.dim)
        stacked = torch.stack(list(hs), 1)
        if self.identifiable:
            return self.norm((w * unit_scale(stacked)).sum(1)), w
        return self.norm((w * stacked).sum(1) + stacked.mean(1)), w


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    SUMMARY = "g = sigmoid(W[a; b]); fused = g*a + (1-g)*b (k>2: one sigmoid gate per modality, normalised)."
    DIAGNOSTICS = {
        "gates": "[B, M] mean over dimensions of each modality's effective gate (rows sum to 1)",
        "gates_per_dim": "[B, M, d] per-dimension effective gate (sums to 1 over modalities)",
    }
    # one gate per input and case (a softmax over the inputs), trained with the balance loss: measured on the
    # training seed's validation split (scripts/mechanism_sweep.py, README #14), per-dimension gates stayed
    # near-constant (spread 0.02-0.03) and did not follow the case's evidence; one gate per input cannot
    # split the dimensions between the inputs, so it has to choose which input this case rests on
    TRAINING_DEFAULTS = {"identifiable": True, "gate_per": "modality"}
    TRAIN_OPTION_DEFAULTS = {"gate_balance_weight": 0.1}
    MECHANISM_PARAMETERS = ("mixer.gate.weight", "mixer.gate.bias")

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, dropout: float = 0.1,
                 identifiable: bool = False, gate_per: str = "dim", **options: Any):
        super().__init__(specs, out_dim, **options)
        self.proj = nn.ModuleList(projector(s.dim, dim) for s in specs)
        self.mixer = GateMixer(len(specs), dim, identifiable, gate_per)
        self.out = nn.Sequential(nn.Linear(dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        mixed, w = self.mixer([p(f.pooled) for p, f in zip(self.proj, feats)])
        gates = w.mean(-1)
        return self.out(mixed), {"modality_weights": gates, "gates": gates, "gates_per_dim": w}


@FUSIONS.register("bilinear")
class LowRankBilinearFusion(Fusion):
    SUMMARY = "low-rank bilinear: sum over rank of the Hadamard product of projections [x_m; 1]."
    DIAGNOSTICS = {
        "contribution_norms": "[B, M] L2 norm of each modality's factor beyond its constant term",
        "rank_weights": "[R] learned weight of each rank-1 term",
    }
    MECHANISM_PARAMETERS = ("rank_logits",)

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, rank: int = 4, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        self.rank, self.dim = rank, dim
        # appending 1 to each input (LMF) keeps the unimodal terms inside the product
        self.factors = nn.ModuleList(nn.Linear(s.dim + 1, rank * dim) for s in specs)
        self.rank_logits = nn.Parameter(torch.zeros(rank))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        prod, parts = None, []
        for fac, f in zip(self.factors, feats):
            x = f.pooled
            h = fac(torch.cat([x, torch.ones_like(x[:, :1])], -1)).view(-1, self.rank, self.dim)
            parts.append((x @ fac.weight[:, :-1].T).view(-1, self.rank, self.dim).flatten(1))
            prod = h if prod is None else prod * h
        rw = torch.softmax(self.rank_logits, 0)
        z = (prod * rw.view(1, -1, 1)).sum(1)
        norms = torch.stack([p.norm(dim=-1) for p in parts], -1)
        return self.out(z), {"modality_weights": contribution_shares(parts), "contribution_norms": norms, "rank_weights": rw}
