"""``python -m core``: JSON out on success; exit 2 and one ``error:`` line on bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import save_package
from core.cli import main
from tiny import LABELS, make_model


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return save_package(make_model("mmtm"), tmp_path_factory.mktemp("m") / "pkg", LABELS, name="tiny-mmtm")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "img.png")
    (d / "spec.csv").write_text("wl,val\n" + "\n".join(f"{1000 + i * 2},{np.sin(i / 5):.4f}" for i in range(60)))
    (d / "note.txt").write_bytes("Itchy lesion, bleeding.".encode())
    return d


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json(pkg, files, capsys):
    code, out, err = run(["predict", "--model", pkg, "--image", files / "img.png", "--note-file", files / "note.txt",
                          "--meta", "age=55", "--meta", "sex=male", "--spectrum", files / "spec.csv", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["label"] in LABELS and set(d["calibrated_probabilities"]) == set(LABELS)
    assert np.isclose(sum(d["calibrated_probabilities"].values()), 1, atol=1e-4)
    assert d["model"]["variant"] == "mmtm" and len(d["model"]["sha256"]) == 64
    assert d["present"] == {"image": True, "note": True, "metadata": True, "spectrum": True}
    assert {"gates", "temperature", "scale_weights", "attention"} <= set(d["diagnostics"])
    assert {"predictive_entropy", "aleatoric", "epistemic"} <= set(d["uncertainty"]) and isinstance(d["refer"], bool)


def test_variants_lists_registry(capsys):
    code, out, _ = run(["variants", "--json"], capsys)
    names = [r["name"] for r in json.loads(out)]
    assert code == 0 and "mmtm" in names and "irene" in names


@pytest.mark.parametrize("args,needle", [
    (["predict", "--model", "{pkg}", "--meta", "age=999", "--json"], "metadata.age: age (years) = 999 is outside"),
    (["predict", "--model", "{pkg}", "--meta", "noequals"], "--meta expects key=value"),
    (["predict", "--model", "{pkg}", "--image", "{files}/note.txt"], "image: The image file could not be read"),
    (["predict", "--model", "{pkg}", "--image", "/nonexistent.png"], "does not exist"),
    (["predict", "--model", "/nonexistent"], "no such model folder"),
    (["predict", "--model", "{pkg}", "--note", "x", "--note-file", "{files}/note.txt"], "either --note or --note-file"),
    (["predict", "--model", "{pkg}", "--mc-samples", "abc"], "invalid int value"),
    (["predict", "--model", "{pkg}"], "none of the inputs"),
    (["frobnicate"], "invalid choice"),
    (["predict"], "required: --model"),
])
def test_bad_input_exit_2_one_line(pkg, files, capsys, args, needle):
    code, out, err = run([a.format(pkg=pkg, files=files) for a in args], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err


def test_real_process_has_no_traceback(pkg):
    r = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(pkg), "--meta", "sex=robot"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: metadata.sex:")


def test_debug_prints_the_traceback_instead(pkg, capsys):
    code, out, err = run(["--debug", "predict", "--model", "/nonexistent"], capsys)
    assert code == 2 and out == "" and err.startswith("Traceback") and "no such model folder" in err


def test_cohort_choices_come_from_the_registry():
    from core.cli import build_parser
    from core.data.cohorts import COHORTS, generated_cohorts

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices
    cohort = {v: next(a for a in sub[v]._actions if a.dest == "cohort").choices
              for v in ("train-suite", "evaluate", "bench", "explain-cohort")}
    assert cohort["train-suite"] == [n for n in COHORTS.names() if COHORTS.get(n).suite]
    assert cohort["evaluate"] == cohort["bench"] == cohort["explain-cohort"] == generated_cohorts()
    assert "ham10000" in cohort["train-suite"] and "ham10000" not in generated_cohorts()


def test_explain_json(pkg, files, capsys):
    code, out, err = run(["predict", "--model", pkg, "--meta", "age=55", "--json"], capsys)
    code, out, err = run(["explain", "--model", pkg, "--image", files / "img.png", "--note", "Itchy bleeding lesion",
                          "--meta", "age=55", "--parts", "cam", "lesion_context", "note", "modality", "--ig-steps", "8",
                          "--target", "1", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["target"] == 1 and d["target_label"] == LABELS[1]
    assert np.asarray(d["cams"]["gradcam"]).shape == (32, 32)
    assert [w["text"] for w in d["note"]["words"]] == ["Itchy", "bleeding", "lesion"]
    assert set(d["modality"]["values"]) == {"image", "note", "metadata"}
    code, out, err = run(["explain", "--model", pkg, "--meta", "age=55", "--parts", "telepathy"], capsys)
    assert code == 2 and err.startswith("error: unknown part 'telepathy'")


def test_predict_and_report_follow_the_committee_vote_where_committee_json_was_fitted(tmp_path, capsys):
    """The referral flag of `predict` and `report` is the Prediction page's: the committee vote where the suite's
    committee.json was fitted for the package (named), else the package's own entropy flag (unchanged)."""
    from pathlib import Path

    from core import load_package
    from test_committee import committee_file, set_referral_threshold
    from tiny import make_case, save_suite

    paths = save_suite(tmp_path / "models", ("concat", "gated", "mmtm"), ("image", "note", "metadata"))
    suite = Path(paths[0]).parent
    committee_file(suite, "mmtm", ["concat", "gated"], 1)
    from core import Case

    case_dir, c = tmp_path / "case", make_case(3)
    case_dir.mkdir()
    c.image.save(case_dir / "image.png")
    (case_dir / "note.txt").write_text(c.note)
    (case_dir / "metadata.json").write_text(json.dumps(c.metadata))
    case = Case.from_folder(case_dir)
    labels = {Path(p).name: load_package(p).predict(case).label for p in paths}
    refer = labels["concat"] != labels["mmtm"] or labels["gated"] != labels["mmtm"]
    k = sum(labels[v] != labels["mmtm"] for v in ("concat", "gated"))
    set_referral_threshold(suite / "mmtm", 1.0 if refer else 0.0)       # the own flag says the opposite
    code, out, err = run(["predict", "--model", suite / "mmtm", "--case-dir", case_dir, "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["refer"] is refer and d["referral_decision"]["signal"] == "committee_vote"
    assert d["referral_decision"]["own_refer"] is (not refer) and d["referral_decision"]["vote"]["disagreeing"] == k
    assert "AUROC of 0.800" in d["referral_decision"]["sentence"]
    code, out, err = run(["predict", "--model", suite / "mmtm", "--case-dir", case_dir], capsys)
    assert code == 0 and (f"{'REFER' if refer else 'no referral flag'} (committee vote: {k} of 2 other fusion "
                          "variants predict another class; raised from 1)") in out
    code, out, err = run(["report", "--model", suite / "mmtm", "--case-dir", case_dir, "--out", tmp_path / "r.json",
                          "--no-explain"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["refer"] is refer and rep["referral"]["signal"] == "committee_vote"
    # a package the file was not fitted for: its own flag, printed as before
    set_referral_threshold(suite / "gated", 0.0)
    code, out, err = run(["predict", "--model", suite / "gated", "--case-dir", case_dir, "--json"], capsys)
    d = json.loads(out)
    assert d["refer"] is True and d["referral_decision"]["signal"] == "entropy_head_mc"
    code, out, err = run(["predict", "--model", suite / "gated", "--case-dir", case_dir], capsys)
    assert "REFER: advise re-check by a clinician" in out and "committee" not in out
