"""Head, MC-dropout decomposition and calibration."""
from __future__ import annotations

import math

import numpy as np
import torch

from core.heads import ResidualHead
from core.uncertainty import decompose, expected_calibration_error, fit_temperature


def test_mc_dropout_samples_only_the_head_and_never_mutates_it():
    head = ResidualHead(16, 4, hidden=32, dropout=0.3).eval()
    x = torch.randn(5, 16)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    logits, log_var = head(x, mc_samples=30, generator=g1)
    assert logits.shape == (30, 5, 4) and log_var.shape == (30, 5)
    assert not head.training
    assert torch.equal(logits, head(x, mc_samples=30, generator=g2)[0])  # reproducible from the generator
    assert logits.std(0).mean() > 0  # the samples differ
    det, _ = head(x)
    assert torch.equal(det, head(x)[0])  # without samples: deterministic


def test_decomposition_identities():
    torch.manual_seed(0)
    logits = torch.randn(20, 3, 5) * 3
    u = decompose(logits, torch.zeros(20, 3))
    assert torch.allclose(u.predictive_entropy, u.aleatoric + u.epistemic, atol=1e-6)
    assert (u.epistemic >= 0).all() and (u.normalised_entropy <= 1 + 1e-6).all()
    same = decompose(logits[:1].expand(20, 3, 5), torch.zeros(20, 3))
    assert torch.allclose(same.epistemic, torch.zeros(3), atol=1e-6)  # identical samples: no epistemic part
    flat = decompose(torch.zeros(4, 1, 5), torch.zeros(4, 1))
    assert math.isclose(float(flat.normalised_entropy), 1.0, rel_tol=1e-6)


def test_ece_and_temperature_scaling_fix_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 4000, 4
    labels = rng.integers(0, c, n)
    true_logits = rng.normal(size=(n, c))
    true_logits[np.arange(n), labels] += 1.5
    # x_k ~ N(1.5 [k = y], 1) makes the Bayes posterior softmax(1.5 x): logits 4 x are overconfident
    # by exactly T = 4 / 1.5 = 2.67
    logits = torch.tensor(true_logits * 4.0)
    probs = torch.softmax(logits, -1).numpy()
    before = expected_calibration_error(probs, labels)
    t = fit_temperature(logits, torch.tensor(labels))
    after = expected_calibration_error(torch.softmax(logits / t, -1).numpy(), labels)
    assert abs(t - 4.0 / 1.5) < 0.2
    assert after < before / 3 and after < 0.03


def test_ece_of_perfect_calibration_is_small_and_of_wrong_confidence_is_large():
    labels = np.array([0, 1] * 50)
    assert expected_calibration_error(np.eye(2)[labels], labels) == 0.0
    assert np.isclose(expected_calibration_error(np.eye(2)[1 - labels], labels), 1.0)
