"""Fusion registry. Importing this package registers every variant, simple to complex."""
from .base import COMMON_DIAGNOSTICS, FUSIONS, GLOBAL_DIAGNOSTICS, Fusion, case_diagnostics
from . import simple, attention, hierarchical  # noqa: F401  (registration side effect, explicit)

__all__ = ["FUSIONS", "Fusion", "COMMON_DIAGNOSTICS", "GLOBAL_DIAGNOSTICS", "case_diagnostics"]
