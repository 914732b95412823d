"""Uncertainty: MC-dropout decomposition, temperature scaling, ECE and referral."""
from .calibration import expected_calibration_error, fit_temperature, reliability_bins
from .disagreement import mean_pairwise_symmetric_kl
from .mc_dropout import UncertaintySummary, decompose

__all__ = ["decompose", "UncertaintySummary", "fit_temperature", "expected_calibration_error", "reliability_bins",
           "mean_pairwise_symmetric_kl"]
