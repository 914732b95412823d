"""Seed 003's layout: a CSV of image id + label and a JSON of image id -> text description."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..base import Cohort, CohortItem, DataError
from .common import (ID_COLUMNS, _check_labels, _check_unique, _index_images, _missing_images, _read_csv,
                     _read_json_notes, _split_items)

LABEL_COLUMNS = ("label", "dx", "class", "diagnosis", "category", "target")


def _pick(header: Sequence[str], names: Sequence[str], fallback: int) -> str:
    lower = {h.lower(): h for h in header}
    for n in names:
        if n in lower:
            return lower[n]
    return header[fallback]


def load_seed_layout(csv_path: str | Path, json_path: str | Path, images_dir: str | Path, seed: int = 0,
                     labels: Sequence[str] | None = None) -> Cohort:
    """Seed 003: CSV of image id + label (columns found by name, else the first two), JSON of
    image id -> text description, images below ``images_dir`` named by id. No metadata."""
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    header, rows = _read_csv(csv_path)
    if len(header) < 2:
        raise DataError(f"{csv_path.name}: needs an image id column and a label column; the header has "
                        f"{', '.join(header)}.")
    id_col, label_col = _pick(header, ID_COLUMNS, 0), _pick(header, LABEL_COLUMNS, 1)
    if id_col == label_col:
        raise DataError(f"{csv_path.name}: could not tell the image id column from the label column; name them "
                        "'image_id' and 'label'.")
    _check_unique(((line, r[id_col]) for line, r in rows), csv_path, id_col)
    for line, r in rows:
        if not r[label_col]:
            raise DataError(f"{csv_path.name}, line {line}: the '{label_col}' cell is empty.")
    labels = _check_labels(((line, r[label_col]) for line, r in rows), labels, csv_path, label_col)
    texts = _read_json_notes(Path(json_path))
    images = _index_images(images_dir)
    items, missing = [], []
    for line, r in rows:
        i = r[id_col]
        path = images.get(i) or images.get(Path(i).stem)
        if path is None:
            missing.append(f"{i} (line {line})")
        items.append(CohortItem(case_id=i, label=r[label_col], split="train", image_path=path,
                                note=texts.get(i) or texts.get(Path(i).stem)))
    if missing:
        raise _missing_images(missing, images_dir)
    _split_items(items, seed)
    n_notes = sum(it.note is not None for it in items)
    return Cohort(
        name=csv_path.stem, labels=labels, items=items,
        modalities=["image", "note"] if n_notes else ["image"],
        description=f"Seed 003 layout: {len(items)} images from {images_dir}, labels from {csv_path.name}, "
                    f"descriptions from {Path(json_path).name} ({n_notes} of {len(items)} cases have one).",
        info={"seed": seed, "source": str(csv_path), "n_notes": n_notes})
