"""Variant comparison (shared encoder passes, agreement measures), the encoder pool, and the case report."""
from __future__ import annotations

import gc
import io
import json
import re

import jsonschema
import numpy as np
import pytest
from pypdf import PdfReader

from core import Case, load_package
from core.cli import main
from core.compare import compare_variants, ensemble_summary, iou, spearman, top_region
from core.report import ReportError, make_report, validate_report
from tiny import LABELS, make_case, save_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    return save_suite(root, ("concat", "gated", "mmtm"), ("image", "note", "metadata", "spectrum"),
                      shared=("image", "note", "spectrum"))


@pytest.fixture(scope="module")
def pkgs(suite):
    return [load_package(p) for p in suite]


def test_identical_frozen_encoders_are_one_module_per_process(suite, pkgs):
    a, b, c = pkgs
    for m in ("image", "note", "spectrum"):
        assert a.model.encoders[m] is b.model.encoders[m] is c.model.encoders[m]
    assert a.model.encoders["metadata"] is not b.model.encoders["metadata"]  # trained inside each package
    private = load_package(suite[0], share_encoders=False)
    assert private.model.encoders["image"] is not a.model.encoders["image"]
    case = make_case(1)
    assert np.allclose(private.predict(case).calibrated, a.predict(case).calibrated, atol=1e-6)


def test_pool_entries_go_with_their_last_package(tmp_path):
    import core.package as P
    from core import save_package
    from tiny import make_model

    model = make_model("concat", modalities=("spectrum", "metadata"), seed=123)
    model.encoders["spectrum"].freeze()
    path = save_package(model, tmp_path / "s" / "concat", LABELS, name="x",
                        shared={"encoders.spectrum.": "../_shared/spectrum_encoder.safetensors"})
    a, b = load_package(path), load_package(path)
    key = a.encoder_fingerprint("spectrum")
    assert key in P._ENCODER_POOL and a.model.encoders["spectrum"] is b.model.encoders["spectrum"]
    del a, b
    gc.collect()
    assert key not in P._ENCODER_POOL


def test_comparison_runs_each_shared_encoder_once_and_matches_single_predictions(pkgs):
    case = make_case(2)
    cmp = compare_variants(pkgs, case, explain=False)
    assert cmp.encoder_passes == {"image": 1, "note": 1, "spectrum": 1, "metadata": 3}
    naive = compare_variants(pkgs, case, explain=False, share_encoders=False)
    assert naive.encoder_passes == {"image": 3, "note": 3, "spectrum": 3, "metadata": 3}
    for col, ncol, pkg in zip(cmp.columns, naive.columns, pkgs):
        single = pkg.predict(case)
        assert np.allclose(col.prediction.calibrated, single.calibrated, atol=1e-6)
        assert np.allclose(ncol.prediction.calibrated, single.calibrated, atol=1e-6)
    d = cmp.to_dict()
    assert [c["variant"] for c in d["columns"]] == ["concat", "gated", "mmtm"]
    assert sum(d["agreement"]["votes"].values()) == 3
    mean = np.mean([c.prediction.calibrated for c in cmp.columns], 0)
    assert np.allclose(d["ensemble"]["mean_probabilities"], mean, atol=1e-6)
    assert d["ensemble"]["label"] == LABELS[int(mean.argmax())]


def test_explanations_share_one_target_and_a_package_agrees_with_itself(pkgs):
    case = make_case(0)
    cmp = compare_variants([pkgs[1], pkgs[1]], case, ig_steps=8, shapley_samples=6)
    assert {c.explanation.target for c in cmp.columns} == {cmp.target}
    mean = cmp.explanation_agreement["mean"]
    assert mean["cam_top_iou"] == pytest.approx(1.0) and mean["table_spearman"] == pytest.approx(1.0)
    assert mean["note_spearman"] == pytest.approx(1.0) and mean["top_modality_same_fraction"] == 1.0
    assert cmp.ensemble["disagreement"] == pytest.approx(0.0, abs=1e-9) and cmp.agreement["all_agree"]
    three = compare_variants(pkgs, case, ig_steps=8, shapley_samples=6)
    assert len(three.explanation_agreement["pairs"]) == 3
    assert three.encoder_passes["image"] == 1 and three.encoder_passes["note"] == 1


def test_agreement_measures_on_known_inputs():
    cam = np.zeros((10, 10))
    cam[:2] = 1.0                                      # top 20% = the first two rows
    assert top_region(cam).sum() == 20 and iou(top_region(cam), top_region(cam)) == 1.0
    assert iou(top_region(cam), top_region(cam[::-1])) == 0.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None

    class Col:
        def __init__(self, p):
            self.prediction = type("P", (), {"calibrated": np.array(p), "labels": ["a", "b"]})()
    confident_split = ensemble_summary([Col([0.99, 0.01]), Col([0.01, 0.99])])
    assert confident_split["disagreement"] > 0.6       # ~ln 2: confident variants that disagree
    assert ensemble_summary([Col([0.5, 0.5]), Col([0.5, 0.5])])["disagreement"] == pytest.approx(0.0)


def test_comparison_refuses_models_with_other_classes(tmp_path, pkgs):
    other = save_suite(tmp_path, ("concat",), ("note", "metadata"), cohort="x", shared=())[0]
    cfg = json.loads((other / "config.json").read_text())
    cfg["labels"] = ["p", "q", "r"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="predicts different classes"):
        compare_variants([pkgs[0], load_package(other)], make_case(0))


# ---- the report ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(pkgs):
    from core.explain import explain_case

    case = make_case(0)
    case.note = "Itchy <script>alert(1)</script> rash <img src=x onerror=alert(2)>"
    case.metadata = {**case.metadata, "patient_name": "Jane Doe"}
    ex = explain_case(pkgs[2], case, parts=("cam", "lesion_context", "note", "table", "spectrum", "modality", "faithfulness"),
                      ig_steps=8, shapley_samples=6)
    cmp = compare_variants(pkgs, case, explain=False)
    return make_report(pkgs[2], case, ex, cmp, case_reference="study-12"), pkgs[2]


def test_pdf_text_holds_label_probabilities_sha_and_notice(report):
    rep, pkg = report
    pdf = rep.pdf()
    assert pdf.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(pdf))
    text = "\n".join(p.extract_text() for p in reader.pages)
    pred = rep.data["prediction"]
    assert pkg.sha256 in text and "study-12" in text and "not a medical device" in text
    assert f"Predicted class {pred['label']}" in text
    for label, p in pred["calibrated_probabilities"].items():
        assert re.search(rf"{label}\s+{p:.4f}", text), (label, p)
    assert "<script>alert(1)</script>" in text           # printed as text, never interpreted
    assert "Jane Doe" not in text                         # name-like metadata fields never reach a report
    assert "Variant comparison" in text and all(v in text for v in ("concat", "gated", "mmtm"))


def test_html_is_self_contained_with_figures_and_escaped_note(report):
    rep, pkg = report
    html = rep.html()
    assert html.count("Plotly.newPlot") >= 3               # probabilities, Shapley, table, spectrum figures
    assert html.count("data:image/png;base64,") >= 2       # input thumbnail + Grad-CAM overlay
    assert not re.search(r"<script[^>]+src=", html)       # plotly.js inlined, nothing fetched
    assert "<script>alert" not in html and "<img src=x" not in html and "&lt;" in html
    assert pkg.sha256 in html and "Jane Doe" not in html


def test_json_follows_the_documented_schema_and_the_schema_bites(report):
    rep, _ = report
    data = json.loads(rep.json())
    validate_report(data)
    assert data["case"]["case_reference"] == "study-12" and "patient_name" not in data["case"]["inputs"]["metadata"]
    assert data["comparison"]["agreement"]["majority_label"] in LABELS
    assert set(data["explanation"]["lesion_context"]["shares"]["gradcam"]) >= {"lesion", "context", "background"}
    broken = json.loads(rep.json())
    broken["prediction"]["probability"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        validate_report(broken)
    broken = json.loads(rep.json())
    broken["model"]["sha256"] = "not-a-sha"
    with pytest.raises(jsonschema.ValidationError):
        validate_report(broken)


def test_case_reference_is_one_short_line(pkgs):
    case = make_case(1)
    with pytest.raises(ReportError, match="keep it to 80"):
        make_report(pkgs[0], case, case_reference="x" * 81)
    rep = make_report(pkgs[0], case, case_reference="  ticket\n\t42\x07 ")
    assert rep.data["case"]["case_reference"] == "ticket 42" and rep.data["explanation"] is None


def test_report_for_a_case_without_image_or_note(pkgs):
    case = make_case(1, missing=("image", "note"))
    rep = make_report(pkgs[0], case)
    validate_report(rep.data)
    assert rep.data["case"]["inputs"].get("image") is None and rep.data["prediction"]["present"]["image"] is False
    assert PdfReader(io.BytesIO(rep.pdf())).pages and "Plotly.newPlot" in rep.html()


# ---- CLI and case folders --------------------------------------------------------------------------------------------

def _case_folder(path, i=0):
    case = make_case(i)
    path.mkdir(parents=True)
    case.image.save(path / "image.png")
    (path / "note.txt").write_text(case.note)
    (path / "metadata.json").write_text(json.dumps({**case.metadata, "label": "benign", "evidence": "lesion"}))
    np.savetxt(path / "spectrum.csv", case.spectrum, delimiter=",")
    return path


def test_case_from_folder_takes_out_label_and_generator_fields(tmp_path):
    case = Case.from_folder(_case_folder(tmp_path / "c-1"))
    assert case.case_id == "c-1" and case.extras["label"] == "benign" and case.extras["evidence"] == "lesion"
    assert set(case.metadata) == {"age", "sex", "site"} and case.spectrum is not None


def test_cli_report_single_and_batch(tmp_path, suite, capsys):
    folder = _case_folder(tmp_path / "cases" / "c-1")
    _case_folder(tmp_path / "cases" / "c-2", 1)
    out = tmp_path / "r.pdf"
    assert main(["report", "--model", str(suite[1]), "--case-dir", str(folder), "--out", str(out), "--reference", "T-9",
                 "--parts", "cam", "note", "table", "modality"]) == 0
    text = "\n".join(p.extract_text() for p in PdfReader(str(out)).pages)
    assert "T-9" in text and json.loads((suite[1] / "config.json").read_text())["weights"]["sha256"] in text
    assert main(["report", "--model", str(suite[1]), "--cases-root", str(tmp_path / "cases"), "--out", str(tmp_path / "batch"),
                 "--format", "json", "--no-explain", "--compare", str(suite[0])]) == 0
    got = sorted(p.name for p in (tmp_path / "batch").iterdir())
    assert got == ["c-1.json", "c-2.json"]
    validate_report(json.loads((tmp_path / "batch" / "c-1.json").read_text()))
    capsys.readouterr()
    assert main(["report", "--model", str(suite[1]), "--case-dir", str(folder), "--out", str(tmp_path / "r.docx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown report format 'docx'")
    assert main(["report", "--model", str(suite[1]), "--case-dir", str(folder), "--note", "x", "--out", str(out)]) == 2
    assert "either --case-dir or single inputs" in capsys.readouterr().err


def test_cli_compare_json(suite, tmp_path, capsys):
    folder = _case_folder(tmp_path / "c-1")
    assert main(["compare", "--model", str(suite[0]), "--compare", str(suite[1]), str(suite[2]), "--case-dir", str(folder),
                 "--no-explain", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["columns"]) == 3 and d["encoder_passes"]["image"] == 1


def test_a_package_that_cannot_read_the_case_sits_out(tmp_path, pkgs):
    from core import CaseError

    note_only = load_package(save_suite(tmp_path, ("unimodal",), ("note",), cohort="n", shared=())[0])
    case = make_case(0, missing=("note",))
    cmp = compare_variants([pkgs[0], note_only], case, explain=False)
    assert [c.package.name for c in cmp.columns] == [pkgs[0].name] and note_only.name in cmp.skipped
    with pytest.raises(CaseError):
        compare_variants([note_only], case, explain=False)


def test_cohort_metrics_show_the_fair_faithfulness_measures_beside_chance_and_drop_the_old_format():
    from core.compare import _faithfulness_columns

    new = {"predicted": {"all": {"lesion_ratio_lesion_decided": 3.5, "ratio_chance": 1.0, "pointing_game_decisive": 0.45,
                                 "pointing_game_decisive_chance": 0.22, "shapley_decisive_balanced": float("nan")}}}
    cols = _faithfulness_columns(new)
    assert cols == {"faithfulness_gradcam_lesion_ratio_lesion_decided": 3.5,
                    "faithfulness_gradcam_lesion_ratio_lesion_decided_chance": 1.0,
                    "faithfulness_gradcam_pointing_game_decisive": 0.45, "faithfulness_gradcam_pointing_game_decisive_chance": 0.22}
    old = {"cam_lesion_share_lesion_decided": 0.33, "pointing_game_rate": 0.45, "shapley_top_equals_evidence": 0.75}
    assert _faithfulness_columns(old) == {}


def test_report_file_name_names_the_package_not_its_variant_type():
    """Two packages of one variant type (HAM10000 `gated`, `gated_kan`) must not download under one name."""
    from core.report.render import CaseReport

    def name(model):
        rep = CaseReport.__new__(CaseReport)
        rep.data = {"case": {"case_id": "ham-05"}, "model": model}
        return rep.filename("pdf")

    a = name({"name": "ham10000/gated", "variant": "gated"})
    b = name({"name": "ham10000/gated_kan", "variant": "gated"})
    assert a == "fusionlens-report-ham-05-gated.pdf" and b == "fusionlens-report-ham-05-gated_kan.pdf"
    assert name({"name": "../x/y z", "variant": "mmtm"}) == "fusionlens-report-ham-05-y_z.pdf"


# ---- the referral flag of the report follows the Prediction page's (issue 14 §4 / 17) ---------------------------------

@pytest.fixture
def voted_suite(tmp_path):
    """A tiny suite (concat, gated, mmtm) with a committee.json fitted for mmtm (committee concat + gated, flag
    from 1 disagreeing), mmtm's own entropy flag set to the opposite of the vote on the case -> (suite, pkgs, case, refer)."""
    from pathlib import Path

    from test_committee import committee_file, set_referral_threshold

    paths = save_suite(tmp_path, ("concat", "gated", "mmtm"), ("image", "note", "metadata"))
    suite = Path(paths[0]).parent
    committee_file(suite, "mmtm", ["concat", "gated"], 1)
    case = make_case(3)
    labels = {Path(p).name: load_package(p).predict(case).label for p in paths}   # each variant's own label, by hand
    refer = labels["concat"] != labels["mmtm"] or labels["gated"] != labels["mmtm"]
    set_referral_threshold(suite / "mmtm", 1.0 if refer else 0.0)     # own flag: never / always raised
    return suite, {Path(p).name: load_package(p) for p in paths}, case, refer


def test_the_report_follows_the_committee_vote_where_committee_json_was_fitted(voted_suite):
    suite, pkgs, case, refer = voted_suite
    mmtm = pkgs["mmtm"]
    rep = make_report(mmtm, case)
    d = rep.data
    validate_report(d)
    assert d["prediction"]["refer"] is (not refer)               # the package's own flag, kept as it is
    assert d["referral"]["signal"] == "committee_vote" and d["referral"]["refer"] is refer
    assert d["summary"]["refer"] is refer and d["summary"]["referral_signal"] == "committee_vote"
    assert "the committee vote, this model's referral signal" in d["summary"]["referral"]
    assert d["summary"]["referral"].startswith("Advise re-check" if refer else "No referral flag")
    assert "(the referral flag comes from the committee vote)" in d["summary"]["uncertainty"]["sentence"]
    assert any("AUROC of 0.800 (95% bootstrap interval 0.700–0.900" in x for x in d["summary"]["referral_details"])
    assert d["referral"]["vote"]["of"] == 2 and d["referral"]["own_refer"] is (not refer)
    html = rep.render("html").decode()
    pdf = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(rep.render("pdf"))).pages[:1])
    for text in (html, pdf):
        assert "committee vote" in text and "AUROC of 0.800" in text
    rows = rep.render("csv").decode("utf-8-sig")
    assert "referral signal,committee_vote" in rows
    # a package the file was not fitted for keeps its own flag, and says nothing about a vote
    gated = make_report(pkgs["gated"], case).data
    assert gated["referral"]["signal"] == "entropy_head_mc" and gated["summary"]["refer"] is gated["prediction"]["refer"]
    assert "committee" not in gated["summary"]["referral"] and not gated["summary"]["referral_details"]


def test_the_report_falls_back_to_the_own_flag_with_the_reason_and_takes_a_decision_already_made(voted_suite, monkeypatch):
    import core.committee as C
    from test_committee import committee_file

    suite, pkgs, case, refer = voted_suite
    committee_file(suite, "mmtm", ["concat", "gated", "add"], 1)   # 'add' is not in this suite
    d = make_report(pkgs["mmtm"], case).data
    assert d["referral"]["signal"] == "entropy_head_mc" and d["summary"]["refer"] is (not refer)
    assert "could not be used (1 of the 3 variants it was fitted for did not vote here: add (not in this suite))" \
        in d["summary"]["referral"]
    # the dashboard hands over the vote it made: the report does not vote again
    committee_file(suite, "mmtm", ["concat", "gated"], 1)
    decision = C.decide_referral(pkgs["mmtm"], case, pkgs["mmtm"].predict(case))

    def no_second_vote(*a, **k):
        raise AssertionError("voted twice")

    monkeypatch.setattr(C, "compare_variants", no_second_vote)
    d = make_report(pkgs["mmtm"], case, referral=decision).data
    assert d["referral"]["signal"] == "committee_vote" and d["summary"]["refer"] is refer
