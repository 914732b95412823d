"""Shared parts of the real-data loaders: CSV reading with line-numbered errors, id / label checks,
image indexing, grouped splits and JSON notes. Every problem is a :class:`DataError` naming the file,
column or line."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..base import CohortItem, DataError, grouped_split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_LISTED = 5
ID_COLUMNS = ("image_id", "image", "id", "image_name", "filename", "file", "img")
TEXT_KEYS = ("text", "description", "note", "response", "report")


def _listing(problems: Sequence[str]) -> str:
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more


def _read_csv(path: Path, required: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs with stripped cells; empty / header-only files and missing
    or repeated columns are errors."""
    if not path.is_file():
        raise DataError(f"{path}: the file does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path.name}: not UTF-8 text; save the CSV as UTF-8.") from None
    if not text.strip():
        raise DataError(f"{path.name}: the file is empty.")
    reader = csv.reader(io.StringIO(text, newline=""))   # keeps quoted newlines
    header = [h.strip() for h in next(reader)]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path.name}: the column(s) {', '.join(dupes)} appear more than once in the header.")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}.")
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue                                           # blank lines are harmless
        if len(cells) > len(header):
            raise DataError(f"{path.name}, line {reader.line_num}: {len(cells)} cells but the header has "
                            f"{len(header)} columns.")
        rows.append((reader.line_num, {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}))
    if not rows:
        raise DataError(f"{path.name}: the file has a header but no rows.")
    return header, rows


def _check_unique(ids: Iterable[tuple[int, str]], path: Path, column: str) -> None:
    seen: dict[str, int] = {}
    dupes = []
    for line, i in ids:
        if not i:
            raise DataError(f"{path.name}, line {line}: the '{column}' cell is empty.")
        if i in seen:
            dupes.append(f"'{i}' on lines {seen[i]} and {line}")
        seen.setdefault(i, line)
    if dupes:
        raise DataError(f"{path.name}: duplicate {column} values: {_listing(dupes)}.")


def _check_labels(found: Iterable[tuple[int, str]], labels: Sequence[str] | None, path: Path, column: str) -> list[str]:
    """The label list: ``labels`` if given (every row's label must be in it), else the sorted unique labels."""
    found = list(found)
    if labels is None:
        return sorted({y for _, y in found})
    bad = [f"'{y}' on line {line}" for line, y in found if y not in labels]
    if bad:
        raise DataError(f"{path.name}: unknown label(s) in column '{column}': {_listing(bad)}; "
                        f"expected one of {', '.join(labels)}.")
    return list(labels)


def _index_images(root: Path) -> dict[str, Path]:
    """Every image file below ``root`` by stem and by file name (first in sorted order wins)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            index.setdefault(p.stem, p)
            index.setdefault(p.name, p)
    return index


def _split_items(items: list[CohortItem], seed: int) -> None:
    splits = grouped_split([it.case_id for it in items], [it.group or it.case_id for it in items],
                           [it.label for it in items], seed=seed)
    for it, s in zip(items, splits):
        it.split = s


def _missing_images(missing: list[str], where: Path) -> DataError:
    return DataError(f"{len(missing)} image(s) not found below {where}: {_listing(missing)}.")


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _read_json_notes(path: Path) -> dict[str, str]:
    """{id: text}, {id: {"text": ...}} or [{"id": ..., "text": ...}] -> {id: text}."""
    if not path.is_file():
        raise DataError(f"{path}: the file does not exist.")
    raw = path.read_text(encoding="utf-8-sig")
    if not raw.strip():
        raise DataError(f"{path.name}: the file is empty.")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name}: not valid JSON (line {e.lineno}: {e.msg}).") from None

    def text_of(v: Any, where: str) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, Mapping):
            for k in TEXT_KEYS:
                if isinstance(v.get(k), str):
                    return v[k]
        raise DataError(f"{path.name}: {where} has no text (expected a string or an object with one of "
                        f"{', '.join(TEXT_KEYS)}).")

    if isinstance(data, Mapping):
        return {str(k): text_of(v, f"entry '{k}'") for k, v in data.items()}
    if isinstance(data, list):
        out = {}
        for i, v in enumerate(data):
            key = next((v[k] for k in ID_COLUMNS if isinstance(v, Mapping) and k in v), None)
            if key is None:
                raise DataError(f"{path.name}: item {i} has no id (expected one of {', '.join(ID_COLUMNS)}).")
            out[str(key)] = text_of(v, f"item {i}")
        return out
    raise DataError(f"{path.name}: expected an object of image id -> text, not {type(data).__name__}.")
