"""Disagreement between several predictive distributions of one case."""
from __future__ import annotations

import torch


def mean_pairwise_symmetric_kl(logp: torch.Tensor) -> torch.Tensor:
    """Mean over all pairs of rows of ``logp`` ([k, C] log-probabilities, k >= 2) of the symmetric
    KL divergence (KL(p||q) + KL(q||p)) / 2, in nats; a 0-d tensor.

    (KL(p||q) + KL(q||p)) / 2 = sum (p - q)(log p - log q) / 2, every pair in one batched expression."""
    p = logp.exp()
    if len(logp) == 2:  # one pair (two modalities): no index tensors
        return ((p[0] - p[1]) * (logp[0] - logp[1])).sum(-1) / 2
    a, b = torch.triu_indices(len(logp), len(logp), 1)
    return ((p[a] - p[b]) * (logp[a] - logp[b])).sum(-1).mean() / 2
