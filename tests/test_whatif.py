"""What-if on one case (core.whatif, `predict --set`, the Prediction page's what-if section) on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tiny import LABELS, make_case, save_suite, write_demo_case

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    from core import load_package

    paths = save_suite(tmp_path_factory.mktemp("whatif"), ("mmtm",))
    return load_package(paths[0])


def count_encoder_calls(pkg):
    calls = {m: 0 for m in pkg.modalities}
    handles = []
    for m in pkg.modalities:
        def hook(module, args, kwargs, output, m=m):
            calls[m] += 1
        handles.append(pkg.model.encoders[m].register_forward_hook(hook, with_kwargs=True))
    return calls, handles


@pytest.mark.parametrize("edit_kwargs, reencoded", [
    ({"metadata": {"age": 85}}, ["metadata"]),
    ({"note": "Rapidly growing, bleeding, irregular dark lesion."}, ["note"]),
    ({"blur": "lesion"}, ["image"]),
])
def test_only_the_edited_modality_is_re_encoded_and_the_answer_equals_a_fresh_prediction(pkg, edit_kwargs, reencoded):
    from core.whatif import Edit, WhatIfSession

    case = make_case(3)
    session = WhatIfSession(pkg, case)
    calls, handles = count_encoder_calls(pkg)
    try:
        result = session.run(Edit(**edit_kwargs))
    finally:
        for h in handles:
            h.remove()
    assert result.reencoded == reencoded
    assert {m for m, n in calls.items() if n} == set(reencoded)          # the other encoders did not run
    fresh = pkg.predict(result.case)                                     # everything re-encoded from scratch
    np.testing.assert_allclose(result.edited.prediction.calibrated, fresh.calibrated, atol=1e-5)
    np.testing.assert_allclose(result.original.prediction.calibrated, pkg.predict(case).calibrated, atol=1e-5)
    assert not np.allclose(result.edited.prediction.calibrated, result.original.prediction.calibrated, atol=1e-7)
    d = result.to_dict()
    assert set(d["original"]["modality_shapley"]) == {"image", "note", "metadata"} and d["changes"] != ["no change"]


def test_dropping_a_modality_and_a_bad_value(pkg):
    from core import CaseError
    from core.whatif import Edit, what_if

    r = what_if(pkg, make_case(1), Edit(drop=("note",)))
    assert r.edited.prediction.present["note"] is False and "note" not in r.edited.summary()["modality_shapley"]
    assert r.changes == ["note dropped"]
    with pytest.raises(CaseError) as e:
        what_if(pkg, make_case(1), Edit(metadata={"age": 400}))
    assert "metadata.age" in e.value.errors


def test_predict_set_on_the_command_line(pkg, tmp_path, capsys):
    from core.cli import main

    case = make_case(2)
    img = tmp_path / "image.png"
    case.image.save(img)
    args = ["predict", "--model", str(pkg.path), "--image", str(img), "--note", case.note, "--mc-samples", "8",
            "--meta", "age=50", "--meta", "sex=female", "--meta", "site=back"]
    assert main(args + ["--set", "age=90", "--set", "sex=male", "--set-note", "Bleeding nodule.", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["reencoded"] == ["metadata", "note"] and "age: 50 → 90" in d["changes"]
    assert set(d["original"]["probabilities"]) == set(LABELS) and "not a medical device" in d["notice"]
    assert main(args + ["--set", "age=400"]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert main(args + ["--set", "age"]) == 2


def test_nearest_cases_in_fused_space():
    from core.whatif import nearest_cases

    rows = [{"case_id": f"c{i}", "package_sha256": "s", "status": "ok", "label": "x", "pred_label": "y",
             "fused": np.array([1.0, i * 0.1], np.float16)} for i in range(6)]
    rows.append({"case_id": "other", "package_sha256": "t", "status": "ok", "fused": np.array([1.0, 0.0])})
    near = nearest_cases(rows, np.array([1.0, 0.0]), "s", k=3, exclude="c0")
    assert [n["case_id"] for n in near] == ["c1", "c2", "c3"]
    assert near[0]["distance"] <= near[1]["distance"] <= near[2]["distance"]


# ---- the Prediction page's what-if section (AppTest) ------------------------------------------------------------------

def test_whatif_controls_on_the_prediction_page(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from test_app import APP, goto, load_demo, ok

    models, cases = _app_suite(tmp_path)
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(cases))
    monkeypatch.setenv("FUSIONLENS_RESULTS", str(tmp_path / "no-results"))
    monkeypatch.setenv("FUSIONLENS_CACHE", str(tmp_path / "cache"))
    at = load_demo(AppTest.from_file(APP, default_timeout=180).run())
    goto(at, "pages/2_Prediction.py")
    assert any(s.value == "What if?" for s in at.subheader)
    age = next(w for w in at.number_input if w.key.startswith("wi_meta_age_"))
    assert age.min == 0 and age.max == 120 and "years" in age.label          # range and unit from the schema
    site = next(w for w in at.selectbox if w.key.startswith("wi_meta_site_"))
    assert site.options == ["(missing)", "back", "face", "leg"]
    submit = next(b for b in at.button if b.label == "Show what changes")
    ok(submit.click().run())
    assert any("Nothing was changed" in i.value for i in at.info)
    at.number_input(key=age.key).set_value(119.0)
    at.selectbox(key=site.key).set_value("face")
    ok(next(b for b in at.button if b.label == "Show what changes").click().run())
    assert not at.error, [e.value for e in at.error]
    changes = next(m.value for m in at.markdown if m.value.startswith("**Changes:**"))
    assert "age" in changes and "site" in changes and "re-encoded: metadata" in changes
    table = next(d.value for d in at.dataframe if "quantity" in d.value)
    assert list(table["quantity"][:3]) == [f"p({l})" for l in LABELS]
    assert (table["change"].abs() > 1e-6).any()                       # the prediction moved


def _app_suite(tmp_path):
    """The tiny suite + demo case of tests/test_app.py (its fixture is module-scoped there)."""
    models = tmp_path / "models"
    save_suite(models, ("gated", "mmtm"))
    write_demo_case(tmp_path / "cases" / "dermatology" / "demo-1")
    return models, tmp_path / "cases"
