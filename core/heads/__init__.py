"""Classifier heads."""
from .residual import ResidualHead

__all__ = ["ResidualHead"]
