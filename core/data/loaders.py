"""Loaders for real-data layouts; each returns a :class:`Cohort`.

* :func:`load_ham10000` — HAM10000 as distributed (metadata CSV + image folders), split by lesion.
* :func:`load_seed_layout` — seed 003: a CSV of image id + label and a JSON of image id -> text.
* :func:`load_generic_csv` — one CSV: ``case_id, label`` + optional files, split and metadata.
* :func:`load_dataset` — picks one of the above from what a path holds.

Every problem is a :class:`DataError` naming the file, column or line. Image existence is checked at
load time; :func:`validate_images` opens every image (slow on big sets, so it is a separate call).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..case import load_image, load_mask, parse_spectrum
from .base import SPLITS, Cohort, CohortItem, DataError, fit_schema, grouped_split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
HAM_LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
HAM_LABEL_DESCRIPTIONS = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis-like lesion", "df": "Dermatofibroma",
    "mel": "Melanoma", "nv": "Melanocytic nevus", "vasc": "Vascular lesion"}
HAM_SITES = ["abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity",
             "neck", "scalp", "trunk", "upper extremity", "unknown"]
HAM_SEXES = ["male", "female", "unknown"]
# Same names, categories and order as the dermatology cohort, so a model trained on one reads the other's cases.
HAM_SCHEMA: list[dict[str, Any]] = [
    {"name": "age", "type": "numeric", "unit": "years", "min": 0, "max": 100,
     "description": "Age at the time of imaging (HAM10000 records it in steps of 5 years)."},
    {"name": "sex", "type": "categorical", "categories": HAM_SEXES, "description": "Sex as recorded."},
    {"name": "localization", "type": "categorical", "categories": HAM_SITES,
     "description": "Anatomical site of the lesion (HAM10000's 15 sites)."},
]
HAM_LICENCE = {
    "licence": "CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial): non-commercial research use only",
    "provenance": "HAM10000 training set (ViDIR Group, Medical University of Vienna, and Cliff Rosendahl's practice) "
                  "via the ISIC archive; images downsized to 200 x 150",
    "citation": ["Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
                 "dermatoscopic images of common pigmented skin lesions. Scientific Data 5, 180161 (2018).",
                 "Codella N. et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the "
                 "International Skin Imaging Collaboration (ISIC). arXiv:1902.03368 (2019).",
                 "Lesion masks: Tschandl P. et al. Human-computer collaboration for skin cancer recognition. "
                 "Nature Medicine 26, 1229-1234 (2020)."],
}
HAM_COLUMNS = ("lesion_id", "image_id", "dx")
_SITE_PHRASE = {"genital": "in the genital area", "acral": "on an acral site (palm or sole)"}
MAX_LISTED = 5


# ---------------------------------------------------------------- shared helpers

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


# ---------------------------------------------------------------- HAM10000

def ham_note(age: float | None, sex: str | None, site: str | None) -> str:
    """Seed 003's template narrative from metadata; unknown fields are left out.
    ``ham_note(45, "male", "back")`` -> "A 45-year-old male with a lesion on the back." """
    who = sex if sex in ("male", "female") else "patient"
    years = int(round(age)) if age is not None else None
    age_text = f"{years}-year-old " if years is not None else ""
    article = "An" if years in (8, 11, 18) or (years is not None and 80 <= years <= 89) else "A"   # "an eighty..."
    if site and site != "unknown":
        return f"{article} {age_text}{who} with a lesion {_SITE_PHRASE.get(site, f'on the {site}')}."
    return f"{article} {age_text}{who} with a skin lesion."


def _read_notes(notes: str | Path | None) -> dict[str, str] | None:
    if notes is None or str(notes) in ("metadata", "none"):
        return None
    path = Path(notes)
    if path.suffix.lower() == ".json":
        return _read_json_notes(path)
    _, rows = _read_csv(path, required=("image_id", "note"))
    return {r["image_id"]: r["note"] for _, r in rows if r["note"]}


def _ham_csv(root: Path) -> Path:
    """``HAM10000_metadata.csv``, else the one CSV in ``root`` with HAM10000's columns (the ISIC 2018
    Task 3 ground truth, ``ISIC2018_Task3_Test_GroundTruth.csv``, has them)."""
    if (root / "HAM10000_metadata.csv").is_file():
        return root / "HAM10000_metadata.csv"
    found = [p for p in sorted(root.glob("*.csv")) if _has_ham_columns(p)]
    if len(found) != 1:
        raise DataError(f"{root}: expected HAM10000_metadata.csv or one CSV with the columns "
                        f"{', '.join(HAM_COLUMNS)}; found {len(found)}.")
    return found[0]


def _has_ham_columns(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        return False
    return all(c in header for c in HAM_COLUMNS)


def load_ham10000(root: str | Path, masks_dir: str | Path | None = None, seed: int = 0,
                  notes: str | Path | None = "metadata", labels: Sequence[str] | None = None) -> Cohort:
    """HAM10000 as distributed: ``HAM10000_metadata.csv`` + images ``<image_id>.jpg`` anywhere below
    ``root``; optional masks ``<image_id>_segmentation.png`` in ``masks_dir``. Splits are grouped by
    lesion_id. ``notes``: "metadata" (template narratives), "none", or a JSON / CSV of image_id -> note;
    a ``note`` column in the metadata CSV wins over both.

    A folder with another CSV in the same format instead (the ISIC 2018 Task 3 test ground truth, whose
    lesions are ``HAMTEST_...`` and whose age / sex may be empty) is an external test set: every image
    goes to the ``test`` split."""
    root = Path(root)
    meta_path = _ham_csv(root)
    external = meta_path.name != "HAM10000_metadata.csv"
    header, rows = _read_csv(meta_path, required=("lesion_id", "image_id", "dx"))
    labels = list(labels) if labels is not None else list(HAM_LABELS)
    _check_labels(((line, r["dx"]) for line, r in rows), labels, meta_path, "dx")
    _check_unique(((line, r["image_id"]) for line, r in rows), meta_path, "image_id")
    images = _index_images(root)
    masks = _index_images(Path(masks_dir)) if masks_dir is not None else {}
    if masks_dir is not None and not masks:
        raise DataError(f"{masks_dir}: no mask images found (expected <image_id>_segmentation.png).")
    external_notes = _read_notes(notes)

    items, missing, bad = [], [], []
    for line, r in rows:
        image_id = r["image_id"]
        if not r["lesion_id"]:
            raise DataError(f"{meta_path.name}, line {line}: the 'lesion_id' cell is empty.")
        path = images.get(image_id)
        if path is None:
            missing.append(f"{image_id}.jpg (line {line})")
        meta = {"age": None, "sex": None, "localization": None}
        age = r.get("age", "")
        if age and age.lower() not in ("nan", "unknown"):
            if not _is_number(age) or not 0 <= float(age) <= 100:
                bad.append(f"line {line}: age '{age}' is not a number from 0 to 100")
            else:
                meta["age"] = float(age)
        for col, allowed in (("sex", HAM_SEXES), ("localization", HAM_SITES)):
            v = r.get(col, "").lower()
            if v and v != "nan":
                if v not in allowed:
                    bad.append(f"line {line}: {col} '{r[col]}' is not one of {', '.join(allowed)}")
                else:
                    meta[col] = v
        if r.get("note"):
            note = r["note"]
        elif external_notes is not None:
            note = external_notes.get(image_id)
        elif str(notes) == "metadata":
            note = ham_note(meta["age"], meta["sex"], meta["localization"])
        else:
            note = None
        items.append(CohortItem(case_id=image_id, label=r["dx"], split="train", image_path=path,
                                mask_path=masks.get(f"{image_id}_segmentation"), note=note, metadata=meta,
                                group=r["lesion_id"],
                                extras={"lesion_id": r["lesion_id"], "dx_type": r.get("dx_type") or None}))
    if bad:
        raise DataError(f"{meta_path.name}: {_listing(bad)}.")
    if missing:
        raise _missing_images(missing, root)
    if external:
        for it in items:
            it.split = "test"
    else:
        _split_items(items, seed)
    note_source = ("metadata column 'note'" if "note" in header else "file" if external_notes is not None
                   else "generated from age / sex / site" if str(notes) == "metadata" else "none")
    modalities = ["image", "note", "metadata"] if any(it.note for it in items) else ["image", "metadata"]
    n_lesions = len({it.group for it in items})
    what = ("an external test set in HAM10000's format (every image in 'test')" if external
            else "HAM10000 (real dermoscopy, CC BY-NC)")
    return Cohort(
        name="ham10000", labels=labels, items=items, modalities=modalities,
        schema=fit_schema(HAM_SCHEMA, [it for it in items if it.split == ("test" if external else "train")]),
        description=(f"{what}, {meta_path.name}: {len(items)} images of {n_lesions} lesions"
                     f"{'' if external else ', split by lesion'}. Notes: {note_source}. dx_type is never an input."),
        synthetic=False, label_descriptions={k: v for k, v in HAM_LABEL_DESCRIPTIONS.items() if k in labels},
        info={"seed": seed, "source": meta_path.name, "notes": note_source, "n_lesions": n_lesions,
              "n_masks": sum(it.mask_path is not None for it in items), "external_test_set": external,
              **HAM_LICENCE})


# ---------------------------------------------------------------- seed 003 layout

ID_COLUMNS = ("image_id", "image", "id", "image_name", "filename", "file", "img")
LABEL_COLUMNS = ("label", "dx", "class", "diagnosis", "category", "target")
TEXT_KEYS = ("text", "description", "note", "response", "report")


def _pick(header: Sequence[str], names: Sequence[str], fallback: int) -> str:
    lower = {h.lower(): h for h in header}
    for n in names:
        if n in lower:
            return lower[n]
    return header[fallback]


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


# ---------------------------------------------------------------- generic CSV

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


# ---------------------------------------------------------------- detection and image checks

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
