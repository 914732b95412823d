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


# ---- the vote as the referral signal (where a committee.json was fitted for the selected package) ------------------

VOTE_SENTENCE = "The referral flag comes from the committee vote"
FALLBACK = "The committee vote fitted for this model could not be used"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The app's tiny suite (dermatology gated + mmtm) and its demo case -> (AppTest, the suite folder)."""
    from test_app import write_app_suite

    models, cases = write_app_suite(tmp_path)
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(cases))
    return AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120), models / "dermatology"


def set_referral_threshold(pkg: Path, threshold: float) -> None:
    """The package's own (entropy) referral threshold: 0 refers every case, 1 none."""
    cfg = json.loads((pkg / "config.json").read_text())
    cfg["referral"]["threshold"] = threshold
    (pkg / "config.json").write_text(json.dumps(cfg))


def prediction_page(at: AppTest, variant: str) -> AppTest:
    from test_app import load_demo, ok

    at = load_demo(at)
    at = ok(at.selectbox(key="w_variant").set_value(variant).run())
    return ok(at.switch_page("pages/2_Prediction.py").run())


def flags(at: AppTest) -> tuple[list[str], list[str]]:
    """(referral warnings, no-referral successes) on the page."""
    return ([w.value for w in at.warning if "Advise re-check" in w.value],
            [s.value for s in at.success if "No referral flag" in s.value])


def captions(at: AppTest, text: str) -> list[str]:
    return [c.value for c in at.caption if text in c.value]


@pytest.mark.parametrize("own_threshold", [0.0, 1.0])   # the package's own flag: always raised / never raised
def test_the_vote_decides_the_referral_flag_where_committee_json_was_fitted_for_the_package(site, own_threshold):
    at, suite = site
    committee_file(suite, "mmtm", ["gated"], 1)
    set_referral_threshold(suite / "mmtm", own_threshold)
    at = prediction_page(at, "mmtm")
    # computed with the page, no button: the panel below shows the same vote
    shown = [m.value for m in at.markdown if "of 1 other variants disagree" in m.value]
    assert len(shown) == 1, [m.value for m in at.markdown]
    k = int(shown[0].split("**")[1].split(" ")[0])
    refer, keep = flags(at)
    if k >= 1:   # the threshold of the file: 1 of 1 disagreeing refers
        assert len(refer) == 1 and not keep and "1 of the 1 other fusion variants predict another class" in refer[0]
    else:
        assert len(keep) == 1 and not refer and "0 of the 1 other fusion variants" in keep[0]
    # one sentence naming the signal, with the AUROC and its interval read from committee.json
    sentence = captions(at, VOTE_SENTENCE)
    assert len(sentence) == 1 and "AUROC of 0.800 (95% bootstrap interval 0.700–0.900; 0.5 is chance)" in sentence[0]
    assert "fresh seed 2, 10 cases" in sentence[0] and "at least 1 of the 1 other" in sentence[0]
    # the package's own entropy flag, as secondary information
    own = captions(at, "The model's own uncertainty says")
    assert len(own) == 1
    assert ("**refer**" in own[0]) == (own_threshold == 0.0) and "(its AUROC on the same cases: 0.600, 0.500–0.700)" in own[0]
    assert not captions(at, FALLBACK) and captions(at, "This curve follows the model's own uncertainty")
    assert not [b for b in at.button if b.key == "committee_run"]   # nothing left to ask for


def test_with_tta_the_second_opinion_names_the_plain_label_it_was_counted_against(site, monkeypatch):
    """The vote's threshold was fitted on plain predictions, so it is counted against the plain label; where
    test-time augmentation changes the label the panel says which label the variants were compared with."""
    from dataclasses import replace

    from core.package import Package
    from test_app import ok

    def other_label(self, case, mc_samples=None, seed=0):
        p = self.predict(case, mc_samples, seed)
        k = (p.label_index + 1) % len(p.labels)
        return replace(p, label=p.labels[k], label_index=k)

    at, suite = site
    committee_file(suite, "mmtm", ["gated"], 1)
    monkeypatch.setattr(Package, "predict_tta", other_label)
    at = prediction_page(at, "mmtm")
    assert not captions(at, "without test-time augmentation")
    at = ok(at.toggle(key="pred_tta").set_value(True).run())
    said = captions(at, "without test-time augmentation")
    assert len(said) == 1 and "with it the model predicts" in said[0]


def test_the_package_s_own_flag_applies_where_committee_json_was_fitted_for_another_variant(site):
    at, suite = site
    committee_file(suite, "mmtm", ["gated"], 1)
    set_referral_threshold(suite / "gated", 0.0)      # gated's own flag: always raised
    set_referral_threshold(suite / "mmtm", 0.0)
    at = prediction_page(at, "gated")
    refer, keep = flags(at)
    assert len(refer) == 1 and "is above the package's referral threshold (0.00)" in refer[0] and not keep
    assert not captions(at, VOTE_SENTENCE) and not captions(at, FALLBACK)
    assert not captions(at, "The model's own uncertainty says")
    assert not any("other variants disagree" in m.value for m in at.markdown)   # the vote stays on demand here
    assert [b for b in at.button if b.key == "committee_run"]
    # the same session on mmtm, the variant the file was fitted for: the vote decides
    from test_app import ok
    at = ok(at.selectbox(key="w_variant").set_value("mmtm").run())
    assert captions(at, VOTE_SENTENCE) and captions(at, "The model's own uncertainty says **refer**")


def test_the_page_reads_the_vote_the_background_job_made_once(site, monkeypatch):
    """The referral vote is made once, in the session's background job right after the prediction (not by the
    page's script); the flag, the second-opinion panel and a rerun all read that one vote."""
    import threading

    import core.committee as C
    from test_app import ok

    at, suite = site
    committee_file(suite, "mmtm", ["gated"], 1)
    calls, real = [], C.compare_variants

    def counting(pkgs, case, **kw):
        calls.append((threading.current_thread().name, sorted(Path(p.path).name for p in pkgs)))
        return real(pkgs, case, **kw)

    monkeypatch.setattr(C, "compare_variants", counting)
    at = prediction_page(at, "mmtm")
    assert captions(at, VOTE_SENTENCE) and len([m for m in at.markdown if "of 1 other variants disagree" in m.value]) == 1
    assert calls == [("fusionlens-default-explanation", ["gated"])]     # only the committee: mmtm's own prediction is reused
    at = ok(at.run())
    assert len(calls) == 1 and captions(at, VOTE_SENTENCE)


def test_a_committee_json_refitted_during_the_session_is_followed(site):
    """Another helper may refit committee.json (a retrained suite): the session's vote made under the old file is
    not used; the page votes again under the new one (its threshold and AUROC), and a file fitted for weights
    that are not these (package_sha256) falls back to the model's own flag."""
    import os

    from test_app import ok

    at, suite = site
    f = committee_file(suite, "mmtm", ["gated"], 1)
    at = prediction_page(at, "mmtm")
    assert captions(at, "AUROC of 0.800 (95% bootstrap interval 0.700–0.900")
    doc = json.loads(f.read_text())
    doc["evaluation"]["error_detection_auroc"]["committee_vote"] = {"value": 0.9, "ci95": [0.85, 0.95]}
    f.write_text(json.dumps(doc))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    at = ok(at.run())
    assert captions(at, "AUROC of 0.900 (95% bootstrap interval 0.850–0.950") and not captions(at, "AUROC of 0.800")
    doc["package_sha256"] = {"mmtm": "0" * 64}          # fitted for an mmtm that is not this one
    f.write_text(json.dumps(doc))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 2 * 10**9))
    at = ok(at.run())
    fallback = captions(at, FALLBACK)
    assert len(fallback) == 1 and "retrained after the vote's threshold was fitted" in fallback[0]


def test_the_compare_page_shows_the_selected_package_s_referral_flag_from_the_vote(site):
    """Compare shows each variant's flag; for the selected package whose committee.json was fitted, the flag is
    the Prediction page's (the session's vote), not its own entropy flag."""
    from test_app import ok

    at, suite = site
    committee_file(suite, "mmtm", ["gated"], 1)
    set_referral_threshold(suite / "mmtm", 0.0)      # mmtm's own flag: always raised
    set_referral_threshold(suite / "gated", 1.0)     # gated's: never
    at = prediction_page(at, "mmtm")
    k = int(next(m.value for m in at.markdown if "of 1 other variants disagree" in m.value).split("**")[1].split(" ")[0])
    at = ok(at.switch_page("pages/6_Compare.py").run())
    refer = [w.value for w in at.warning if w.value.startswith("Refer:")]
    if k >= 1:
        assert refer == ["Refer: the committee vote."]
    else:
        assert not refer and captions(at, "its referral flag is the committee vote, which does not refer")


@pytest.mark.parametrize("broken", ["damaged weights", "missing member"])
def test_the_flag_falls_back_to_the_package_s_own_when_the_vote_fails(site, broken):
    at, suite = site
    if broken == "damaged weights":
        committee_file(suite, "mmtm", ["gated"], 1)
        weights = suite / "gated" / json.loads((suite / "gated" / "config.json").read_text())["weights"]["file"]
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        why = "does not match config.json"
    else:
        committee_file(suite, "mmtm", ["gated", "concat"], 1)     # concat is not in this suite
        why = "1 of the 2 variants it was fitted for did not vote here: concat (not in this suite)"
    set_referral_threshold(suite / "mmtm", 1.0)      # mmtm's own flag: never raised
    at = prediction_page(at, "mmtm")
    refer, keep = flags(at)
    assert len(keep) == 1 and "is below the package's referral threshold (1.00)" in keep[0] and not refer
    fallback = captions(at, FALLBACK)
    assert len(fallback) == 1 and why in fallback[0], [c.value for c in at.caption]
    assert fallback[0].endswith("so the flag comes from the model's own uncertainty (head MC-dropout entropy).")
    assert not captions(at, VOTE_SENTENCE) and not captions(at, "not the committee vote")
    if broken == "damaged weights":   # the failure is kept for this case: a rerun does not load the suite again
        from dashboard import loaders

        calls = []
        real = loaders.load

        def counting(summary):
            calls.append(Path(summary["path"]).name)
            return real(summary)

        loaders.load = counting
        try:
            at.run(timeout=120)
        finally:
            loaders.load = real
        assert not at.exception and "gated" not in calls and len(captions(at, FALLBACK)) == 1


def test_fitted_spec_and_referral_signal_pick_the_flag(tiny_suite, tmp_path):
    from types import SimpleNamespace

    from core.committee import OWN_SIGNAL, SIGNAL, fitted_spec, referral_signal

    suite, pkgs = tiny_suite
    mmtm, gated = pkgs["mmtm"], pkgs["gated"]
    pred = SimpleNamespace(refer=False, referral={"value": 0.3, "threshold": 0.5})
    spec_file = committee_file(suite, "mmtm", ["gated", "concat", "add"], 1)
    try:
        spec, why = fitted_spec(mmtm)
        assert spec is not None and why is None and fitted_spec(gated) == (None, None)
        vote = committee_vote(list(pkgs.values()), make_case(0), mmtm, spec)
        ref = referral_signal(pred, spec, vote)
        assert ref.signal == SIGNAL and ref.refer == (vote.k >= 1) and ref.sentence.startswith(
            "The referral flag comes from the committee vote") and "0.800 (95% bootstrap interval 0.700–0.900" in ref.sentence
        assert "says **no referral flag**" in ref.secondary and ref.fallback is None
        own = referral_signal(pred, None)           # no committee for this package: the package's flag, nothing said
        assert own.signal == OWN_SIGNAL and own.refer is False and own.sentence is None and own.curve_note is None
        assert "below the package's referral threshold (0.50)" in own.flag
        broken = referral_signal(pred, spec, None, "x.safetensors: the weights file is missing.")
        assert broken.signal == OWN_SIGNAL and broken.refer is False
        assert broken.sentence == ("The committee vote fitted for this model could not be used (x.safetensors: the weights "
                                   "file is missing), so the flag comes from the model's own uncertainty (head MC-dropout "
                                   "entropy).")
        # a damaged committee.json: said where it names this package, ignored for the others
        spec_file.write_text(json.dumps({"variant": "mmtm"}))
        spec, why = fitted_spec(mmtm)
        assert spec is None and "cannot be used" in why and fitted_spec(gated) == (None, None)
        assert referral_signal(pred, spec, None, why).fallback
    finally:
        spec_file.unlink()


def test_a_member_or_model_retrained_after_the_fit_does_not_vote_under_it(tiny_suite):
    """committee.json records the weights it was fitted with: a retrained member is left out of the vote (and
    named), a retrained chosen model falls back to its own flag."""
    from types import SimpleNamespace

    from core.committee import OWN_SIGNAL, committee_vote, fitted_spec, read_committee, referral_signal

    suite, pkgs = tiny_suite
    mmtm, gated = pkgs["mmtm"], pkgs["gated"]
    spec_file = committee_file(suite, "mmtm", ["gated"], 1)
    doc = json.loads(spec_file.read_text())
    try:
        doc["package_sha256"] = {"mmtm": mmtm.sha256, "gated": "0" * 64}      # gated was retrained since
        spec_file.write_text(json.dumps(doc))
        spec, why = fitted_spec(mmtm)
        assert spec is not None and why is None and spec.fitted_with(mmtm) and not spec.fitted_with(gated)
        with pytest.raises(Exception, match="no other fusion variants"):
            committee_vote([mmtm, gated], make_case(0), mmtm, read_committee(suite))
        doc["package_sha256"] = {"mmtm": "1" * 64, "gated": gated.sha256}     # the chosen model was retrained
        spec_file.write_text(json.dumps(doc))
        spec, why = fitted_spec(mmtm)
        assert spec is None and "retrained after" in why
        pred = SimpleNamespace(refer=False, referral={"value": 0.3, "threshold": 0.5})
        assert referral_signal(pred, spec, None, why).signal == OWN_SIGNAL
    finally:
        spec_file.unlink()
