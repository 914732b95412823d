"""HAM10000 as distributed (metadata CSV + image folders), split by lesion; also an external test set
in the same format (the ISIC 2018 Task 3 ground truth)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .. import ham10000_schema as ham
from ..base import Cohort, CohortItem, DataError, fit_schema
from .common import (_check_labels, _check_unique, _index_images, _is_number, _listing, _missing_images, _read_csv,
                     _read_json_notes, _split_items)

# the vocabulary lives in core.data.ham10000_schema; these names stay for existing callers
HAM_LABELS = ham.LABELS
HAM_LABEL_DESCRIPTIONS = ham.LABEL_DESCRIPTIONS_SHORT
HAM_SITES = ham.SITES
HAM_SEXES = ham.SEXES
HAM_SCHEMA = ham.SCHEMA
HAM_COLUMNS = ham.COLUMNS
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
_SITE_PHRASE = {"genital": "in the genital area", "acral": "on an acral site (palm or sole)"}


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
