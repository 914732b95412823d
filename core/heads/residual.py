"""Residual MLP classifier (seed 000) with a data-uncertainty output (seed 001).

MC-dropout never flips the shared module into train mode: ``forward(x, mc_samples=T)`` applies
dropout explicitly to T copies of the cached fused features, so T samples cost one batched pass
through this small head and a model shared between dashboard sessions is never mutated.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, sample: bool, generator: torch.Generator | None = None,
            start: int = 0) -> torch.Tensor:
    """Inverted dropout; with a generator the masks are reproducible and touch no global RNG state
    (so concurrent sessions sampling the same shared model don't disturb each other).
    ``start``: only rows ``start:`` are dropped (the rows before pass unchanged); the masks drawn are
    those of ``x[start:]`` alone, so a deterministic block of rows can ride in the same batch."""
    if not sample or p <= 0:
        return x
    if start:
        return torch.cat([x[:start], dropout(x[start:], p, sample, generator)])
    if generator is None:
        return F.dropout(x, p, training=True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1 - p)


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.l1, self.l2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, p: float, sample: bool, generator: torch.Generator | None = None,
                start: int = 0) -> torch.Tensor:
        h = dropout(F.gelu(self.l1(self.norm(x))), p, sample, generator, start)
        return x + self.l2(h)


class ResidualHead(nn.Module):
    SUMMARY = "residual MLP (seed 000) with a log-variance output (seed 001)"
    DIAGNOSTICS: dict[str, str] = {}

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256, blocks: int = 2, dropout: float = 0.2):
        super().__init__()
        self.dropout = dropout
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        self.logits = nn.Linear(hidden, n_classes)
        self.log_var = nn.Linear(hidden, 1)  # predicted data uncertainty (aleatoric), seed 001

    def forward(self, fused: torch.Tensor, mc_samples: int = 0, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits, log_var). With ``mc_samples=T`` the shapes are [T, B, C] and [T, B]."""
        sample = self.training or mc_samples > 0
        x = fused if mc_samples <= 0 else fused.unsqueeze(0).expand(mc_samples, *fused.shape).reshape(-1, fused.shape[-1])
        h = dropout(self.inp(x), self.dropout, sample, generator)
        for blk in self.blocks:
            h = blk(h, self.dropout, sample, generator)
        h = self.norm(h)
        logits, log_var = self.logits(h), self.log_var(h).squeeze(-1)
        if mc_samples > 0:
            return logits.view(mc_samples, -1, logits.shape[-1]), log_var.view(mc_samples, -1)
        return logits, log_var

    def forward_with_samples(self, fused: torch.Tensor, sampled: torch.Tensor, mc_samples: int,
                             generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward(fused)`` (dropout off) and ``forward(sampled, mc_samples, generator)`` in one batched
        pass: the same numbers and the same dropout masks as the two calls, one pass of fixed costs.
        -> (logits [B, C], log_var [B], MC logits [T, b, C], MC log_var [T, b])."""
        n, T = fused.shape[0], mc_samples
        # the input layer on each distinct row once: the T copies of a sampled row differ only after its dropout
        y = self.inp(torch.cat([fused, sampled]))
        h = torch.cat([y[:n], y[n:].unsqueeze(0).expand(T, *sampled.shape[:-1], y.shape[-1]).reshape(-1, y.shape[-1])])
        h = dropout(h, self.dropout, True, generator, n)
        for blk in self.blocks:
            h = blk(h, self.dropout, True, generator, n)
        h = self.norm(h)
        logits, log_var = self.logits(h), self.log_var(h).squeeze(-1)
        return (logits[:n], log_var[:n], logits[n:].view(T, -1, logits.shape[-1]), log_var[n:].view(T, -1))
