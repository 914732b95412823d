"""One generic CSV: ``case_id, label`` + optional files, split, group and metadata columns."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ...case import parse_spectrum
from ..base import SPLITS, Cohort, CohortItem, DataError, fit_schema
from .common import _check_labels, _check_unique, _is_number, _listing, _read_csv, _split_items

RESERVED = ("case_id", "label", "note", "image_path", "mask_path", "spectrum_path", "split", "group")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


def _spectrum_grid(spectra: list[np.ndarray], path: Path) -> list[float]:
    """The cohort grid: shared wavelengths when every spectrum has the same ones, else an even grid over
    the range all spectra cover (the encoder resamples pairs onto it); point indices for bare values."""
    if all(s.ndim == 1 for s in spectra):
        lengths = sorted({len(s) for s in spectra})
        if len(lengths) > 1:
            raise DataError(f"{path.name}: spectra without wavelengths must all have the same length, found "
                            f"{', '.join(map(str, lengths))} points; add a wavelength column.")
        return [float(i) for i in range(lengths[0])]
    if any(s.ndim == 1 for s in spectra):
        raise DataError(f"{path.name}: some spectra have wavelengths and some do not; use one form throughout.")
    waves = [np.sort(s[:, 0]) for s in spectra]
    if all(len(w) == len(waves[0]) and np.array_equal(w, waves[0]) for w in waves):
        return [float(v) for v in waves[0]]
    lo, hi = max(w[0] for w in waves), min(w[-1] for w in waves)
    if hi <= lo:
        raise DataError(f"{path.name}: the spectra share no common wavelength range.")
    return [float(v) for v in np.linspace(lo, hi, int(np.median([len(w) for w in waves])))]


def load_generic_csv(path: str | Path, seed: int = 0, labels: Sequence[str] | None = None) -> Cohort:
    """One CSV: ``case_id, label`` and optional ``note, image_path, mask_path, spectrum_path`` (relative
    to the CSV's folder), ``split`` (train / val / test) and ``group`` (cases of a group share a split,
    e.g. a patient id). Every other column is metadata: numeric when every non-empty value is a number."""
    path = Path(path)
    header, rows = _read_csv(path, required=("case_id", "label"))
    _check_unique(((line, r["case_id"]) for line, r in rows), path, "case_id")
    for line, r in rows:
        if not r["label"]:
            raise DataError(f"{path.name}, line {line}: the 'label' cell is empty.")
    labels = _check_labels(((line, r["label"]) for line, r in rows), labels, path, "label")
    base = path.parent
    meta_cols = [h for h in header if h not in RESERVED]
    numeric = {c: all(_is_number(r[c]) for _, r in rows if r[c]) for c in meta_cols}

    items, missing = [], []
    for line, r in rows:
        files: dict[str, Path | None] = {}
        for col in ("image_path", "mask_path", "spectrum_path"):
            files[col] = None
            if r.get(col):
                p = base / r[col]
                if not p.is_file():
                    missing.append(f"{col} '{r[col]}' (line {line})")
                files[col] = p
        if files["mask_path"] is not None and files["image_path"] is None:
            raise DataError(f"{path.name}, line {line}: a mask_path without an image_path; a mask needs its image.")
        spectrum = None
        if files["spectrum_path"] is not None and files["spectrum_path"].is_file():
            try:
                spectrum = parse_spectrum(files["spectrum_path"])
            except ValueError as e:
                raise DataError(f"{path.name}, line {line}: spectrum '{r['spectrum_path']}': {e}") from None
        split = None
        if "split" in header:
            split = _SPLIT_NAMES.get(r["split"].lower())
            if split is None:
                raise DataError(f"{path.name}, line {line}: split '{r['split']}' is not one of {', '.join(SPLITS)}.")
        meta = {c: (float(r[c]) if numeric[c] else r[c]) if r[c] else None for c in meta_cols}
        items.append(CohortItem(case_id=r["case_id"], label=r["label"], split=split or "train",
                                image_path=files["image_path"], mask_path=files["mask_path"], note=r.get("note") or None,
                                metadata=meta, spectrum=spectrum, group=r.get("group") or None,
                                extras={"line": line}))
    if missing:
        raise DataError(f"{path.name}: {len(missing)} file(s) not found (paths are relative to {base}): "
                        f"{_listing(missing)}.")
    if "split" not in header:
        _split_items(items, seed)

    present = {"image": any(it.image_path for it in items), "note": any(it.note for it in items),
               "metadata": bool(meta_cols), "spectrum": any(it.spectrum is not None for it in items)}
    features = [{"name": c, "type": "numeric", "description": f"Column '{c}' of {path.name}"} if numeric[c] else
                {"name": c, "type": "categorical", "description": f"Column '{c}' of {path.name}",
                 "categories": sorted({r[c] for _, r in rows if r[c]}) or ["unknown"]} for c in meta_cols]
    spectra = [it.spectrum for it in items if it.spectrum is not None]
    return Cohort(
        name=path.stem, labels=labels, items=items, modalities=[m for m, ok in present.items() if ok],
        schema=fit_schema(features, [it for it in items if it.split == "train"]),
        spectrum_grid=_spectrum_grid(spectra, path) if spectra else None,
        description=f"{len(items)} cases from {path.name}; modalities: "
                    f"{', '.join(m for m, ok in present.items() if ok) or 'none'}.",
        info={"seed": seed, "source": str(path), "split_from": "csv" if "split" in header else "grouped_split"})
