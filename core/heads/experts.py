"""Two more heads from seed 003: a mixture of experts with top-2 routing and a KAN-style spline head.

Both follow the residual head's contract: ``forward(fused, mc_samples, generator) -> (logits, log_var)``
with MC dropout applied explicitly (the shared module is never put in train mode), and
``diagnostics(fused)`` -> per-case tensors the dashboard shows.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from .residual import dropout


def _mc_expand(fused: torch.Tensor, mc_samples: int) -> torch.Tensor:
    return fused if mc_samples <= 0 else fused.unsqueeze(0).expand(mc_samples, *fused.shape).reshape(-1, fused.shape[-1])


def _mc_view(logits: torch.Tensor, log_var: torch.Tensor, mc_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    if mc_samples > 0:
        return logits.view(mc_samples, -1, logits.shape[-1]), log_var.view(mc_samples, -1)
    return logits, log_var


class MoEHead(nn.Module):
    """``experts`` small MLPs; a router on the fused vector picks the top ``k`` per case and mixes
    their hidden vectors with renormalised router weights. A Switch-style balance loss
    (``experts * sum_e fraction_e * mean_prob_e``, 1 when balanced) keeps every expert in use; it is
    left in ``last_balance_loss`` during training for the training loop to add."""

    SUMMARY = "mixture of experts: top-2 of 4 expert MLPs per case, chosen by a router, with a balance loss"
    DIAGNOSTICS = {"expert_weights": "router weight of each expert for this case (top-2 kept, renormalised; 0 = not used)"}

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, experts: int = 4, top_k: int = 2,
                 dropout: float = 0.2, **_: Any):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k must be between 1 and the number of experts ({experts}).")
        self.dropout, self.top_k, self.n_experts = dropout, top_k, experts
        self.norm_in = nn.LayerNorm(in_dim)
        self.router = nn.Linear(in_dim, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
                                     for _ in range(experts))
        self.norm = nn.LayerNorm(hidden)
        self.logits = nn.Linear(hidden, n_classes)
        self.log_var = nn.Linear(hidden, 1)
        self.last_balance_loss: torch.Tensor | None = None

    def routing(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (sparse renormalised top-k weights [B, E], full router probabilities [B, E])."""
        probs = torch.softmax(self.router(self.norm_in(fused)), -1)
        top, idx = probs.topk(self.top_k, -1)
        weights = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        return weights, probs

    def forward(self, fused: torch.Tensor, mc_samples: int = 0, generator: torch.Generator | None = None):
        sample = self.training or mc_samples > 0
        weights, probs = self.routing(fused)                      # routing is deterministic: dropout varies experts
        if self.training:
            used = (weights > 0).float().mean(0)                  # fraction of cases routed to each expert
            self.last_balance_loss = self.n_experts * (used / self.top_k * probs.mean(0)).sum()
        x = dropout(self.norm_in(_mc_expand(fused, mc_samples)), self.dropout, sample, generator)
        w = _mc_expand(weights, mc_samples)
        h = sum(w[:, e:e + 1] * dropout(expert(x), self.dropout, sample, generator) for e, expert in enumerate(self.experts))
        h = self.norm(h)
        return _mc_view(self.logits(h), self.log_var(h).squeeze(-1), mc_samples)

    def forward_with_samples(self, fused: torch.Tensor, sampled: torch.Tensor, mc_samples: int,
                             generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward(fused)`` (dropout off) and ``forward(sampled, mc_samples, generator)`` in one pass: the
        rows are routed and run together, dropout touches only the sampled rows and draws their masks in
        the order the separate call draws them (input, then each expert), so the numbers are the two
        calls'. -> (logits [B, C], log_var [B], MC logits [T, b, C], MC log_var [T, b])."""
        n, T = fused.shape[0], mc_samples
        x = torch.cat([fused, _mc_expand(sampled, T)])
        weights, _ = self.routing(x)
        h = dropout(self.norm_in(x), self.dropout, True, generator, n)
        h = sum(weights[:, e:e + 1] * dropout(expert(h), self.dropout, True, generator, n)
                for e, expert in enumerate(self.experts))
        h = self.norm(h)
        logits, log_var = self.logits(h), self.log_var(h).squeeze(-1)
        return logits[:n], log_var[:n], logits[n:].view(T, -1, logits.shape[-1]), log_var[n:].view(T, -1)

    def diagnostics(self, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"expert_weights": self.routing(fused)[0]}


class KANLayer(nn.Module):
    """y_j = sum_i [ a_ij * silu(x_i) + sum_k c_ijk * B_k(x_i) ]: a learnable univariate function per
    edge, as a cubic B-spline on a uniform grid over [-bound, bound] plus a SiLU base term."""

    def __init__(self, in_dim: int, out_dim: int, grid: int = 8, order: int = 3, bound: float = 3.0):
        super().__init__()
        self.order = order
        h = 2 * bound / grid
        knots = torch.arange(-order, grid + order + 1, dtype=torch.float32) * h - bound
        self.register_buffer("knots", knots)
        self.base = nn.Linear(in_dim, out_dim)
        self.coef = nn.Parameter(torch.randn(out_dim, in_dim, grid + order) * (1.0 / math.sqrt(in_dim * (grid + order))))

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in] -> [N, in, grid + order] cubic B-spline values (Cox-de Boor on the uniform knots)."""
        t = self.knots
        x = x.unsqueeze(-1)
        b = ((x >= t[:-1]) & (x < t[1:])).to(x.dtype)
        for k in range(1, self.order + 1):
            left = (x - t[: -(k + 1)]) / (t[k:-1] - t[: -(k + 1)]) * b[..., :-1]
            right = (t[k + 1:] - x) / (t[k + 1:] - t[1:-k]) * b[..., 1:]
            b = left + right
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spline = torch.einsum("nik,oik->no", self.basis(x), self.coef)
        return self.base(F.silu(x)) + spline


class KANHead(nn.Module):
    """KAN-style head: LayerNorm, a linear squeeze to ``hidden``, then two spline layers."""

    SUMMARY = "KAN-style head: learnable cubic-spline functions on every edge (two layers) after a linear squeeze"
    DIAGNOSTICS: dict[str, str] = {}

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 32, grid: int = 8, dropout: float = 0.2, **_: Any):
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(in_dim)
        self.squeeze = nn.Linear(in_dim, hidden)
        self.kan1 = KANLayer(hidden, hidden, grid)
        self.norm2 = nn.LayerNorm(hidden)
        self.kan2 = KANLayer(hidden, n_classes + 1, grid)   # logits + log-variance

    def forward(self, fused: torch.Tensor, mc_samples: int = 0, generator: torch.Generator | None = None):
        sample = self.training or mc_samples > 0
        x = _mc_expand(fused, mc_samples)
        h = dropout(torch.tanh(self.squeeze(self.norm(x))) * 2.5, self.dropout, sample, generator)
        h = dropout(self.norm2(self.kan1(h)), self.dropout, sample, generator)
        out = self.kan2(h)
        return _mc_view(out[:, :-1], out[:, -1], mc_samples)

    def forward_with_samples(self, fused: torch.Tensor, sampled: torch.Tensor, mc_samples: int,
                             generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward(fused)`` (dropout off) and ``forward(sampled, mc_samples, generator)`` in one pass (dropout
        on the sampled rows only, their masks drawn in the separate call's order): the two calls' numbers.
        -> (logits [B, C], log_var [B], MC logits [T, b, C], MC log_var [T, b])."""
        n, T = fused.shape[0], mc_samples
        x = torch.cat([fused, _mc_expand(sampled, T)])
        h = dropout(torch.tanh(self.squeeze(self.norm(x))) * 2.5, self.dropout, True, generator, n)
        h = dropout(self.norm2(self.kan1(h)), self.dropout, True, generator, n)
        out = self.kan2(h)
        return out[:n, :-1], out[:n, -1], out[n:, :-1].reshape(T, -1, out.shape[-1] - 1), out[n:, -1].reshape(T, -1)
