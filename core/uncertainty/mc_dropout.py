"""Predictive uncertainty from T stochastic forward passes of the head.

With p_t the (calibrated) class probabilities of sample t and p̄ their mean:
  predictive entropy  H[p̄]                   total uncertainty
  expected entropy    mean_t H[p_t]          aleatoric (noise in the data the model can't remove)
  mutual information  H[p̄] - mean_t H[p_t]   epistemic (disagreement between samples: the model doesn't know)
All three are in nats and are also reported divided by log(C), so 1.0 means "uniform over C classes".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim)


@dataclass
class UncertaintySummary:
    mean_probs: torch.Tensor          # [B, C]
    sample_probs: torch.Tensor        # [T, B, C]
    predictive_entropy: torch.Tensor  # [B]
    aleatoric: torch.Tensor           # [B]
    epistemic: torch.Tensor           # [B]
    data_variance: torch.Tensor       # [B] exp(mean predicted log-variance)
    n_classes: int

    @property
    def normalised_entropy(self) -> torch.Tensor:
        return self.predictive_entropy / math.log(self.n_classes)


def decompose(sample_logits: torch.Tensor, sample_log_var: torch.Tensor, temperature: float = 1.0) -> UncertaintySummary:
    """[T, B, C] logits (and [T, B] predicted log-variances) -> mean probabilities and the three
    entropy-based measures, after dividing the logits by the calibration temperature."""
    probs = torch.softmax(sample_logits / temperature, -1)
    mean = probs.mean(0)
    total = entropy(mean)
    aleatoric = entropy(probs).mean(0)
    return UncertaintySummary(mean, probs, total, aleatoric, (total - aleatoric).clamp_min(0.0),
                              sample_log_var.mean(0).exp(), probs.shape[-1])
