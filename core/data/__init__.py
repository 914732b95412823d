"""Datasets: generated demo cohorts and loaders for real data layouts."""
from .base import SPLITS, Cohort, CohortItem, DataError, fit_schema, grouped_split

__all__ = ["SPLITS", "Cohort", "CohortItem", "DataError", "fit_schema", "grouped_split"]
