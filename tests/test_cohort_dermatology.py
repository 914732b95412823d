"""The generated dermatology cohort: deterministic, consistent masks, valid cases, long tail, cache reuse."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from core.data.cohorts.dermatology import (DEMO_KINDS, DERM_SCHEMA, EVIDENCE, HAM_COUNTS, LABELS, SITES,
                                           draw_case, generate_dermatology, label_counts, sample_labels,
                                           write_demo_cases)
from core.encoders import TabularSchema

N, SIZE = 40, 96


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_dermatology(N, seed=3, cache_dir=tmp_path_factory.mktemp("derm") / "a", workers=1, image_size=SIZE)


def _fields(item) -> tuple:
    return (item.case_id, item.label, item.split, item.note, json.dumps(item.metadata, sort_keys=True),
            item.evidence, json.dumps(item.extras, sort_keys=True))


def test_cohort_contract(cohort):
    assert cohort.labels == LABELS and cohort.synthetic and "Synthetic demo data" in cohort.description
    assert cohort.modalities == ["image", "note", "metadata"] and len(cohort.items) == N
    assert {it.split for it in cohort.items} == {"train", "val", "test"}
    assert all(cohort.class_counts("test")[k] >= 1 for k in LABELS)  # every class in every split, even at n=40
    assert [f["name"] for f in cohort.schema] == [f["name"] for f in DERM_SCHEMA]
    assert "mean" in cohort.schema[0] and cohort.schema[1]["most_frequent"] in ("male", "female")
    assert len({it.case_id for it in cohort.items}) == N and all(it.group == it.case_id for it in cohort.items)


def test_deterministic_and_worker_independent(cohort, tmp_path):
    again = generate_dermatology(N, seed=3, cache_dir=tmp_path / "b", workers=2, image_size=SIZE)
    assert [_fields(a) for a in cohort.items] == [_fields(b) for b in again.items]
    for a, b in zip(cohort.items, again.items):
        for p, q in ((a.image_path, b.image_path), (a.mask_path, b.mask_path), (a.context_path, b.context_path)):
            assert p.read_bytes() == q.read_bytes()


def test_different_seed_differs():
    a = draw_case(3, 0, "mel", SIZE)
    b = draw_case(4, 0, "mel", SIZE)
    assert not np.array_equal(a["image"], b["image"])
    other = sample_labels(N, 4)
    assert other != sample_labels(N, 3) and Counter(other) == Counter(sample_labels(N, 3))


def test_images_and_masks_consistent(cohort):
    for it in cohort.items:
        img = Image.open(it.image_path)
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        lesion = np.asarray(Image.open(it.mask_path)) > 127
        ring = np.asarray(Image.open(it.context_path)) > 127
        assert lesion.shape == ring.shape == (SIZE, SIZE)
        assert lesion.any() and ring.any() and not (lesion & ring).any()
        # the ring hugs the lesion: (almost) every pixel just outside the lesion belongs to it
        border = _dilate(lesion) & ~lesion
        assert (ring[border]).mean() > 0.9, it.case_id
        # ... and reaches out about one lesion radius, no further
        r_eq = np.sqrt(lesion.sum() / np.pi)
        ys, xs = np.nonzero(ring)
        ly, lx = np.nonzero(lesion)
        far = max(np.min(np.hypot(xs[i] - lx, ys[i] - ly)) for i in range(0, len(xs), 7))
        assert far <= r_eq + 2


def _dilate(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def test_items_are_valid_cases_within_schema(cohort):
    schema = TabularSchema(cohort.schema)
    for it in cohort.items:
        case = it.to_case()
        assert case.image.size == (SIZE, SIZE) and case.mask.any()
        values, warnings = schema.validate(it.metadata)
        assert warnings == []
        assert values["localization"] in SITES and it.label in LABELS
        assert it.evidence in EVIDENCE or (it.evidence is None and it.extras["ambiguous"])
        # the ground truth matches what was drawn: the decisive modality shows the true class
        x = it.extras
        assert (x["lesion_look"] == it.label) >= (it.evidence == "lesion")
        assert (x["context_cue"] == it.label) >= (it.evidence == "context")
        assert (x["note_kind"] == "decisive") == (it.evidence == "note")
        assert (x["metadata_kind"] == "prototype") == (it.evidence == "metadata")
        assert (it.note is None) == (x["note_kind"] == "missing")
        assert it.note is None or it.note.strip()
        age = it.metadata["age"]
        assert age is None or 0 <= age <= 100


def test_long_tail_label_frequencies():
    labels = sample_labels(5000, 0)
    counts = Counter(labels)
    total = sum(HAM_COUNTS.values())
    for k, v in HAM_COUNTS.items():
        assert abs(counts[k] - 5000 * v / total) <= 1.0
    assert [k for k, _ in counts.most_common()] == ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"]
    assert sum(label_counts(9)[k] for k in LABELS) == 9 and min(label_counts(40).values()) == 3


def test_metadata_follows_class():
    # class-conditional metadata (HAM10000-like): akiec/bcc older than nv, df mostly on the legs
    def draws(label, k):
        return [draw_case(0, i, label, 64)["metadata"] for i in range(k)]  # renders too: keep k small
    ages = {lab: np.nanmean([m["age"] if m["age"] is not None else np.nan for m in draws(lab, 80)])
            for lab in ("akiec", "nv")}
    assert ages["akiec"] > ages["nv"] + 10
    sites = Counter(m["localization"] for m in draws("df", 80))
    assert sites.most_common(1)[0][0] == "lower extremity"


def test_cache_reused_not_regenerated(cohort):
    root = cohort.items[0].image_path.parents[1]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    again = generate_dermatology(N, seed=3, cache_dir=root, workers=1, image_size=SIZE)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before
    assert [_fields(a) for a in cohort.items] == [_fields(b) for b in again.items]


def test_cache_regenerated_when_version_differs(tmp_path):
    root = tmp_path / "c"
    generate_dermatology(12, seed=0, cache_dir=root, workers=1, image_size=64)
    index = json.loads((root / "index.json").read_text())
    index["version"] = "old"
    (root / "index.json").write_text(json.dumps(index))
    generate_dermatology(12, seed=0, cache_dir=root, workers=1, image_size=64)
    assert json.loads((root / "index.json").read_text())["version"] != "old"


def test_write_demo_cases(cohort, tmp_path):
    folders = write_demo_cases(cohort, tmp_path / "cases", per_kind=1)
    assert folders and len({f.name for f in folders}) == len(folders)
    kinds = set()
    for f in folders:
        meta = json.loads((f / "metadata.json").read_text())
        assert {"label", "evidence", "kind", "age", "sex", "localization"} <= set(meta)
        assert (f / "image.png").is_file() and (f / "mask.png").is_file()
        item = next(it for it in cohort.items if it.case_id == f.name)
        assert item.split == "test" and meta["label"] == item.label and meta["evidence"] == item.evidence
        assert (f / "note.txt").is_file() == (item.note is not None)
        if meta["kind"] == "missing-note":
            assert item.note is None
        assert (f / "image.png").read_bytes() == item.image_path.read_bytes()
        assert (f / "image.png").stat().st_size < 150_000
        kinds.add(meta["kind"])
    assert kinds <= set(DEMO_KINDS) and len(kinds) >= 3
