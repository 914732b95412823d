"""Disagreement between several predictive distributions of one case."""
from __future__ import annotations

import torch


def mean_pairwise_symmetric_kl(logp: torch.Tensor) -> torch.Tensor:
    """Mean over all pairs of rows of ``logp`` ([k, C] log-probabilities, k >= 2) of the symmetric
    KL divergence (KL(p||q) + KL(q||p)) / 2, in nats; a 0-d tensor."""
    p = logp.exp()
    kl = [((p[a] * (logp[a] - logp[b])).sum() + (p[b] * (logp[b] - logp[a])).sum()) / 2
          for a in range(len(logp)) for b in range(a + 1, len(logp))]
    return torch.stack(kl).mean()
