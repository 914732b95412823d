"""The shipped demo packages and cases: every package loads (sha256-checked) and predicts the demo
cases of its cohort; the suite stays small."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import Case, CaseError, discover_packages, load_package

ROOT = Path(__file__).resolve().parents[1] / "assets"
PACKAGES = discover_packages(ROOT / "models")


def demo_case(folder: Path) -> tuple[Case, str]:
    meta = json.loads((folder / "metadata.json").read_text())
    label = meta.pop("label")
    for k in ("evidence", "kind"):
        meta.pop(k, None)
    files = {n: folder / f for n, f in (("image", "image.png"), ("mask", "mask.png"), ("spectrum", "spectrum.csv"))
             if (folder / f).is_file()}
    note = (folder / "note.txt").read_text() if (folder / "note.txt").is_file() else None
    return Case.from_inputs(note=note, metadata=meta, case_id=folder.name,
                            **{k: v.read_bytes() for k, v in files.items()}), label


def test_assets_are_small():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    # the project brief's limit (< ~150 MB); it was 80 MB before the real HAM10000 suite (its fine-tuned image
    # encoder, 13 MB, is stored once in _shared/)
    assert total < 150 * 2**20, f"assets/ is {total / 2**20:.1f} MB"


@pytest.mark.parametrize("path", PACKAGES, ids=[f"{p.parent.name}/{p.name}" for p in PACKAGES])
def test_shipped_package_predicts_its_demo_cases(path):
    pkg = load_package(path)
    assert pkg.config["metrics"]["balanced_accuracy"]["value"] > 0
    cases = sorted((ROOT / "cases" / pkg.config["cohort"]).iterdir())
    assert cases, f"no demo cases for {pkg.config['cohort']}"
    predicted = 0
    for folder in cases:
        case, label = demo_case(folder)
        if not any(case.present()[m] for m in pkg.modalities):  # e.g. a note-only model and a case without a note
            with pytest.raises(CaseError, match="none of the inputs this model uses"):
                pkg.predict(case)
            continue
        pred = pkg.predict(case, mc_samples=8)
        predicted += 1
        assert label in pkg.labels and pred.label in pkg.labels
        assert abs(sum(pred.calibrated) - 1) < 1e-5
    assert predicted >= len(cases) // 2
