"""The ECE noise floor: what a perfectly calibrated model reads on n cases (issue 14 §4's ECE goals)."""
import numpy as np

from core.uncertainty.calibration import ece_noise_floor, expected_calibration_error


def _probs(n, seed=0):
    return np.random.default_rng(seed).dirichlet([2.0, 1.0, 1.0], size=n)


def test_certain_predictions_have_no_floor():
    p = np.eye(3)[np.arange(90) % 3]                       # confidence 1: every draw is a hit
    f = ece_noise_floor(p, n_sim=200)
    assert f["mean"] == 0.0 and f["q975"] == 0.0


def test_floor_matches_simulated_perfect_calibration_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    small, large = _probs(115), _probs(5000, seed=1)
    f_small, f_large = ece_noise_floor(small, goal=0.03), ece_noise_floor(large, goal=0.03)
    # independent check: draw labels from the probabilities themselves (perfect calibration) and use the
    # product's own ECE; the mean over draws must sit on the floor
    eces = [expected_calibration_error(small, np.array([rng.choice(3, p=row) for row in small])) for _ in range(300)]
    assert abs(np.mean(eces) - f_small["mean"]) < 0.01
    assert f_small["q025"] < f_small["mean"] < f_small["q975"]
    assert f_large["mean"] < f_small["mean"] / 4               # ~1 / sqrt(n)
    assert f_small["share_above_goal"] > 0.9                    # 115 cases cannot verify ECE <= 0.03
    assert f_large["share_above_goal"] < 0.1


def test_a_miscalibrated_model_reads_above_its_floor():
    p = _probs(4000, seed=2)
    conf = p.max(1)
    hits = np.random.default_rng(5).random(conf.size) < np.clip(conf - 0.15, 0, 1)   # over-confident by 0.15
    y = np.where(hits, p.argmax(1), (p.argmax(1) + 1) % 3)
    assert expected_calibration_error(p, y) > ece_noise_floor(p)["q975"] + 0.05
