"""Post-hoc temperature scaling (Guo et al. 2017) and the expected calibration error."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The single T > 0 minimising validation NLL of softmax(logits / T)."""
    logits, labels = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Equal-width confidence bins -> (bin confidence, bin accuracy, bin count) arrays."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore"):
        bin_conf = np.bincount(idx, conf, n_bins) / count
        bin_acc = np.bincount(idx, correct, n_bins) / count
    return bin_conf, bin_acc, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """sum_b |acc_b - conf_b| * n_b / n over equal-width confidence bins."""
    bin_conf, bin_acc, count = reliability_bins(probs, labels, n_bins)
    ok = count > 0
    return float(np.sum(np.abs(bin_acc[ok] - bin_conf[ok]) * count[ok]) / count.sum())


def ece_noise_floor(probs: np.ndarray, n_bins: int = 15, n_sim: int = 2000, goal: float | None = None,
                    seed: int = 0) -> dict[str, float]:
    """What :func:`expected_calibration_error` reads for a **perfectly calibrated** model with these
    predicted probabilities on this many cases: each case's top-label hit is drawn as Bernoulli(its
    confidence) ``n_sim`` times and the ECE recomputed. The estimator is biased upwards on small samples
    (every bin's |accuracy - confidence| is positive under noise), so an observed ECE near this floor is
    indistinguishable from perfect calibration, and a goal below the floor cannot be verified on this n.

    Returns the floor's mean, its 2.5 / 97.5 % quantiles and, with ``goal``, the share of perfectly
    calibrated draws that would still read above the goal."""
    probs = np.asarray(probs, dtype=float)
    conf = probs.max(1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    bin_conf_sum = np.bincount(idx, conf, n_bins)
    rng = np.random.default_rng(seed)
    hits = (rng.random((n_sim, conf.size)) < conf).astype(float)          # (n_sim, n) perfectly calibrated draws
    onehot = np.zeros((conf.size, n_bins))
    onehot[np.arange(conf.size), idx] = 1.0
    bin_hits = hits @ onehot                                                # (n_sim, n_bins)
    eces = np.abs(bin_hits - bin_conf_sum).sum(1) / count.sum()           # sum_b |acc_b - conf_b| n_b / n
    out = {"mean": float(eces.mean()), "q025": float(np.quantile(eces, 0.025)),
           "q975": float(np.quantile(eces, 0.975)), "n": int(conf.size)}
    if goal is not None:
        out["goal"] = float(goal)
        out["share_above_goal"] = float((eces > goal).mean())
    return out
