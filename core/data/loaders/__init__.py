"""Loaders for real-data layouts (one module each); each returns a :class:`Cohort`.

* :func:`load_ham10000` — HAM10000 as distributed (metadata CSV + image folders), split by lesion.
* :func:`load_seed_layout` — seed 003: a CSV of image id + label and a JSON of image id -> text.
* :func:`load_generic_csv` — one CSV: ``case_id, label`` + optional files, split and metadata.
* :func:`load_dataset` — picks one of the above from what a path holds.

Every problem is a :class:`DataError` naming the file, column or line. Image existence is checked at
load time; :func:`validate_images` opens every image (slow on big sets, so it is a separate call).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...case import load_image, load_mask
from ..base import Cohort, DataError
from .common import IMAGE_EXTS, MAX_LISTED, _listing
from .generic_csv import RESERVED, load_generic_csv
from .ham10000 import (HAM_COLUMNS, HAM_LABEL_DESCRIPTIONS, HAM_LABELS, HAM_LICENCE, HAM_SCHEMA, HAM_SEXES, HAM_SITES,
                       _has_ham_columns, ham_note, load_ham10000)
from .ham10000 import _ham_csv  # noqa: F401  (core.cli finds a folder's HAM10000 CSV with it)
from .seed_layout import load_seed_layout


def load_dataset(path: str | Path, **kwargs: Any) -> Cohort:
    """Pick the layout: a folder with HAM10000_metadata.csv -> HAM10000; a CSV file -> generic; a folder
    with exactly one CSV and one JSON -> seed 003 layout; a folder with exactly one CSV -> generic."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path.name}: expected a CSV file or a dataset folder.")
        return load_generic_csv(path, **kwargs)
    if (path / "HAM10000_metadata.csv").is_file() or any(_has_ham_columns(p) for p in path.glob("*.csv")):
        masks = path / "HAM10000_segmentations_lesion"
        if masks.is_dir() and "masks_dir" not in kwargs:
            kwargs["masks_dir"] = masks
        return load_ham10000(path, **kwargs)
    csvs, jsons = sorted(path.glob("*.csv")), sorted(path.glob("*.json"))
    if len(csvs) == 1 and len(jsons) == 1:
        return load_seed_layout(csvs[0], jsons[0], path, **kwargs)
    if len(csvs) == 1 and not jsons:
        return load_generic_csv(csvs[0], **kwargs)
    raise DataError(f"{path}: not a known layout (found {len(csvs)} CSV and {len(jsons)} JSON files). Use a folder "
                    "with HAM10000_metadata.csv, a folder with one CSV (image id, label) and one JSON (id -> text), "
                    "or a CSV with case_id and label columns.")


def validate_images(cohort: Cohort) -> int:
    """Open every image (and mask) as the app would; raise a DataError listing the first bad ones.
    Returns the number of images checked."""
    bad, n = [], 0
    for it in cohort.items:
        if it.image_path is None:
            continue
        n += 1
        try:
            img = load_image(it.image_path)
        except ValueError as e:
            bad.append(f"{it.case_id} ({Path(it.image_path).name}): {e}")
            continue
        if it.mask_path is not None:
            try:
                load_mask(it.mask_path, img.size)
            except ValueError as e:
                bad.append(f"{it.case_id} mask ({Path(it.mask_path).name}): {e}")
    if bad:
        raise DataError(f"{len(bad)} of {n} images can't be used: {_listing(bad)}")
    return n


__all__ = ["IMAGE_EXTS", "MAX_LISTED", "RESERVED", "HAM_COLUMNS", "HAM_LABEL_DESCRIPTIONS", "HAM_LABELS", "HAM_LICENCE",
           "HAM_SCHEMA", "HAM_SEXES", "HAM_SITES", "ham_note", "load_ham10000", "load_seed_layout", "load_generic_csv",
           "load_dataset", "validate_images"]
