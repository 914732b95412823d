"""Cohort B (Pima patients + simulated serum spectra): real counts, no glucose in the table, spectra
that carry each patient's glucose, determinism, and the full-table ceiling anchor."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.cohorts.diabetes import build_diabetes, estimate_glucose, logistic_baseline, spectral_components


@pytest.fixture(scope="module")
def cohort():
    return build_diabetes(seed=0)


def test_real_patients_and_outcomes(cohort):
    assert len(cohort.items) == 768
    assert cohort.labels == ["no_diabetes", "diabetes"]
    assert cohort.class_counts() == {"no_diabetes": 500, "diabetes": 268}
    assert not cohort.synthetic and cohort.info["spectra"] == "simulated from real glucose-mixture spectra"
    assert cohort.modalities == ["spectrum", "metadata"]
    assert {it.split for it in cohort.items} == {"train", "val", "test"}
    assert len(cohort.split("train")) == pytest.approx(0.7 * 768, abs=10)
    for s in ("val", "test"):                                  # stratified
        counts = cohort.class_counts(s)
        assert counts["diabetes"] / sum(counts.values()) == pytest.approx(268 / 768, abs=0.03)


def test_table_excludes_glucose_and_zeros_are_missing(cohort):
    names = [f["name"] for f in cohort.schema]
    assert names == ["pregnancies", "blood_pressure", "skin_thickness", "insulin", "bmi", "diabetes_pedigree", "age"]
    assert not any("glucose" in n for n in names)
    for f in cohort.schema:
        assert f["description"] and f["min"] is not None and f["max"] is not None and f["std"] > 0
    units = {f["name"]: f["unit"] for f in cohort.schema}
    assert units["blood_pressure"] == "mm Hg" and units["bmi"] == "kg/m2" and units["age"] == "years"
    insulin_missing = sum(it.metadata["insulin"] is None for it in cohort.items)
    assert insulin_missing == sum(it.extras["row"]["Insulin"] == 0 for it in cohort.items) == 374
    for it in cohort.items:
        assert "glucose" not in " ".join(it.metadata)
        for f in cohort.schema:                                # every value inside its declared range
            v = it.metadata[f["name"]]
            assert v is None or f["min"] <= v <= f["max"]


def test_spectra_on_declared_grid(cohort):
    grid = np.asarray(cohort.spectrum_grid)
    assert len(grid) == 1000 and np.all(np.diff(grid) > 0)
    spectra = np.stack([it.spectrum for it in cohort.items])
    assert spectra.shape == (768, 1000) and np.isfinite(spectra).all()


def test_glucose_band_carries_true_glucose(cohort):
    measured = [it for it in cohort.items if it.extras["glucose_mg_dl"] is not None]
    assert len(measured) == 763                                # 5 patients have no glucose measurement
    spectra = np.stack([it.spectrum for it in measured])
    truth = np.array([it.extras["glucose_mg_dl"] for it in measured])
    assert np.corrcoef(estimate_glucose(spectra), truth)[0, 1] > 0.8
    # the component has its bands where glucose absorbs (C-O stretches ~1035 / 1080 cm-1)
    comp = spectral_components(1000)
    assert 1000 < comp["grid"][np.argmax(np.abs(comp["glucose"]))] < 1120


def test_missing_glucose_is_imputed_and_recorded(cohort):
    imputed = [it for it in cohort.items if it.extras["glucose_imputed"]]
    assert len(imputed) == cohort.info["glucose_imputed"] == 5
    for it in imputed:
        assert it.extras["glucose_mg_dl"] is None and 40 <= it.extras["spectrum_glucose_mg_dl"] <= 200


def test_deterministic_for_a_seed(cohort):
    again = build_diabetes(seed=0)
    assert [it.split for it in again.items] == [it.split for it in cohort.items]
    assert all(np.array_equal(a.spectrum, b.spectrum) for a, b in zip(again.items, cohort.items))
    other = build_diabetes(seed=1)
    assert not np.array_equal(other.items[0].spectrum, cohort.items[0].spectrum)


def test_every_item_converts_to_a_case(cohort):
    for it in cohort.items:
        case = it.to_case()
        assert case.spectrum is not None and case.spectrum.shape == (1000,)


def test_logistic_baseline_is_sane(cohort):
    r = logistic_baseline(cohort)
    assert r["auroc"] > 0.75 and 0.6 < r["accuracy"] <= 1 and 0.5 < r["balanced_accuracy"] <= 1
    assert r["n_test"] == len(cohort.split("test"))


def test_write_demo_cases(tmp_path):
    from core import Case
    from core.data.cohorts.diabetes import write_demo_cases

    cohort = build_diabetes(seed=0)
    folders = write_demo_cases(cohort, tmp_path, n=4)
    assert len(folders) == 4
    labels = set()
    for f in folders:
        meta = json.loads((f / "metadata.json").read_text())
        labels.add(meta.pop("label"))
        case = Case.from_inputs(spectrum=(f / "spectrum.csv").read_bytes(), metadata=meta)
        assert case.spectrum.shape == (len(cohort.spectrum_grid), 2)
    assert labels == set(cohort.labels)
