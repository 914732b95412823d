"""Cohort explanations: ``python -m core explain-cohort`` writes one row per (case, package) to Parquet
(``runner``, ``engine``, ``rows``, ``store``); ``analysis`` turns a results set into the Cohort page's views.

Names are imported lazily, so the CLI's parser does not load pyarrow."""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"ROW_PARTS": "rows", "CohortError": "rows", "CohortExplainer": "engine", "LoopExplainer": "engine",
          "item_record": "rows", "record_case": "rows", "ENGINES": "runner", "load_records": "runner",
          "ray_available": "runner", "run_cohort": "runner", "ResultsStore": "store"}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
