"""The committee vote (core/committee.py): the suite's other fused variants as a second opinion, its
committee.json, and the Prediction page's panel (issue 14 §4)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import load_package
from core.committee import CommitteeError, committee_vote, read_committee, refer_decision
from tiny import make_case, save_suite

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("gated", "mmtm", "concat", "add")


def committee_file(suite: Path, variant: str, members, k: int, **extra) -> Path:
    doc = {"format": 1, "variant": variant, "committee": list(members),
           "threshold": {"min_disagreeing": k, "of": len(members), "threshold": k / len(members),
                         "calibration_referred_fraction": 0.2},
           "data": {"cohort": "dermatology", "calibration": "fresh seed 1, 10 cases",
                    "evaluation": "fresh seed 2, 10 cases"},
           "evaluation": {"error_detection_auroc": {"committee_vote": {"value": 0.8, "ci95": [0.7, 0.9]},
                                                    "entropy_head_mc": {"value": 0.6, "ci95": [0.5, 0.7]}},
                          "error_detection_chance": 0.5}, **extra}
    (suite / "committee.json").write_text(json.dumps(doc))
    return suite / "committee.json"


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("committee")
    paths = save_suite(root, VARIANTS)
    return Path(paths[0]).parent, {Path(p).name: load_package(p) for p in paths}


def test_vote_share_is_the_share_of_other_variants_whose_own_prediction_differs(tiny_suite):
    suite, pkgs = tiny_suite
    case = make_case(0)
    own = {v: p.predict(case).label for v, p in pkgs.items()}   # each package's own prediction, by hand
    for chosen in ("mmtm", "gated"):
        others = [v for v in VARIANTS if v != chosen]
        expected = {v: own[v] for v in others if own[v] != own[chosen]}
        vote = committee_vote(list(pkgs.values()), case, pkgs[chosen])
        assert vote.label == own[chosen]
        assert sorted(vote.members) == sorted(others)
        assert vote.disagreeing == expected
        assert vote.share == pytest.approx(len(expected) / 3)
        assert vote.headline() == f"{len(expected)} of 3 other variants disagree"
        assert vote.refer is None and "no committee.json" in vote.note   # no threshold was fitted


def test_threshold_applies_only_to_the_variant_and_committee_it_was_fitted_for(tiny_suite, tmp_path):
    _, pkgs = tiny_suite
    members = ["gated", "concat", "add"]
    spec = read_committee(committee_file(tmp_path, "mmtm", members, 2).parent)
    assert spec.threshold == pytest.approx(2 / 3)
    assert refer_decision(2, members, "mmtm", spec) == (True, None)
    assert refer_decision(3, members, "mmtm", spec) == (True, None)
    assert refer_decision(1, members, "mmtm", spec) == (False, None)
    refer, note = refer_decision(3, ["mmtm", "concat", "add"], "gated", spec)
    assert refer is None and "'mmtm'" in note and "'gated'" in note
    refer, note = refer_decision(3, ["gated", "concat"], "mmtm", spec)
    assert refer is None and "differ" in note
    # on a case: the flag follows the threshold; the sentence and the AUROC come from the file
    case = make_case(0)
    vote = committee_vote(list(pkgs.values()), case, pkgs["mmtm"], spec)
    assert vote.refer == (vote.k >= 2) and vote.threshold == pytest.approx(2 / 3)
    assert "0.80 (95% interval 0.70–0.90; 0.5 is chance)" in vote.sentence and "fresh seed 2" in vote.sentence
    assert vote.lines[0].startswith("committee_vote: 0.800")
    other = committee_vote(list(pkgs.values()), case, pkgs["gated"], spec)   # fitted for mmtm: vote, no flag
    assert other.refer is None and other.sentence is None and other.n == 3


@pytest.mark.parametrize("text, why", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"variant": "mmtm", "committee": ["gated"], "threshold": {"min_disagreeing": 2, "of": 1},
                 "evaluation": {"error_detection_auroc": {}}}), "min_disagreeing"),
    (json.dumps({"variant": "mmtm", "committee": ["gated"], "threshold": {"min_disagreeing": 1, "of": 1},
                 "evaluation": {"error_detection_auroc": {"committee_vote": {"value": 0.8}}}}), "95% interval"),
])
def test_a_malformed_committee_json_is_one_sentence(tmp_path, text, why):
    (tmp_path / "committee.json").write_text(text)
    with pytest.raises(CommitteeError) as e:
        read_committee(tmp_path)
    msg = str(e.value)
    assert why in msg and "committee.json" in msg and "--write-committee" in msg
    assert "\n" not in msg and msg.endswith(".")
    assert read_committee(tmp_path / "nowhere") is None   # no file: no threshold, not an error


def test_the_script_fits_the_vote_threshold_on_the_calibration_votes():
    spec = importlib.util.spec_from_file_location("uncertainty_signals", ROOT / "scripts" / "uncertainty_signals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vote = np.array([0.0] * 75 + [1 / 4] * 10 + [2 / 4] * 8 + [3 / 4] * 5 + [1.0] * 2)
    # referred shares: k=1 0.25, k=2 0.15, k=3 0.07, k=4 0.02
    fit = mod.fit_vote_threshold(vote, 4, 0.3)
    assert fit["min_disagreeing"] == 1 and fit["calibration_referred_fraction"] == 0.25
    fit = mod.fit_vote_threshold(vote, 4, 0.2)     # 0.25 and 0.15 tie: the higher cut (fewer referrals)
    assert fit["min_disagreeing"] == 2 and fit["calibration_referred_fraction"] == 0.15
    fit = mod.fit_vote_threshold(vote, 4, 0.1)     # 0.15 vs 0.07: 0.07 is closer
    assert fit["min_disagreeing"] == 3 and fit["threshold"] == 0.75


# ---- the Prediction page ------------------------------------------------------------------------------------------

@pytest.fixture
def app(tmp_path, monkeypatch):
    from test_app import write_app_suite

    models, cases = write_app_suite(tmp_path)
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(cases))
    return AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120)


def test_prediction_page_button_shows_the_second_opinion(app):
    from test_app import load_demo, ok

    at = load_demo(app)
    at = ok(at.switch_page("pages/2_Prediction.py").run())
    assert not any("other variants disagree" in m.value for m in at.markdown)   # on demand only
    at = ok(at.button(key="committee_run").click().run())
    shown = [m.value for m in at.markdown if "of 1 other variants disagree" in m.value]
    assert shown, [m.value for m in at.markdown]
    assert any("no committee.json" in c.value for c in at.caption)
    at = ok(at.run())   # kept for this session and case: no second click
    assert any("of 1 other variants disagree" in m.value for m in at.markdown)
