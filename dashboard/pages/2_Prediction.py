"""Prediction: calibrated probabilities, the MC-dropout spread, uncertainty in plain words, the
referral flag (the committee vote of the suite's other variants where a committee.json was fitted for this
package, else the package's own entropy flag; core/committee.py), the vote as a second opinion (on demand
elsewhere) and where the case sits on the package's accuracy-vs-referred curve."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import plots
from core.committee import committee_vote, read_committee
from core.errors import FusionLensError
from dashboard import loaders, trace
from dashboard.auth import require_sign_in
from dashboard.report_ui import report_panel
from dashboard.session_cache import SessionCache
from dashboard.state import cohort_packages, headline_sent, md_escape, results_page, show_error
from dashboard.whatif_ui import whatif_panel

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = results_page("Prediction", ":material/bar_chart:")
pkg, case = page.pkg, page.case

tta = st.toggle("Test-time augmentation", key="pred_tta", disabled=case.image is None or "image" not in pkg.modalities,
                help="Where the suite ships test-time augmentation settings fitted on its validation split "
                     "(HAM10000), those views, temperature and referral threshold; otherwise the average of the "
                     "calibrated probabilities over the image as is, flipped both ways and turned (90 degrees if "
                     "square, else 180).")
pred = page.require_prediction(tta=tta, spinner="Predicting (MC-dropout samples of the head)…")

st.caption(f"Model: **{md_escape(pkg.name)}** (variant {pkg.variant}, {len(pred.mc_samples)} MC-dropout samples, "
           f"calibration temperature {pkg.temperature:.3f})")
top = float(pred.calibrated[pred.label_index])
c1, c2, c3 = st.columns(3)
c1.metric("Predicted class", pred.label, help="The class with the highest calibrated probability.")
c2.metric("Calibrated probability", f"{top:.1%}")
c3.metric("Uncertainty (normalised entropy)", f"{pred.uncertainty['normalised_entropy']:.2f}",
          help="0 = all probability on one class, 1 = spread evenly over every class.")
if "tta_spread" in pred.uncertainty:
    st.caption(f"Test-time augmentation: averaged over 4 views; the predicted class's probability varies by "
               f"±{pred.uncertainty['tta_spread']:.3f} between them.")
if page.label:
    match = "matches" if page.label == pred.label else "differs from"
    st.info(f"True label recorded with this demo case: **{md_escape(page.label)}**; the prediction {match} it.")

# the referral flag: the committee vote where a committee.json was fitted for this package (core/committee.py),
# made by the session's background job right after the prediction (dashboard/background.py); the same decision
# as the case report and `python -m core predict`. It is part of the headline: drawn here, before the charts,
# when the vote is made or arrives within FLAG_WAIT_S (the vote takes about a tenth of a second after the
# prediction); otherwise its place is kept and the charts below are drawn while it is still on its way.
FLAG_WAIT_S = 0.5
flag_slot = st.empty()
decision = None


def show_flag() -> None:
    ref = decision.referral
    with flag_slot.container():
        if ref.refer:
            st.warning(ref.flag, icon=":material/flag:")
        else:
            st.success(ref.flag, icon=":material/check_circle:")
        if ref.sentence:
            st.caption(ref.sentence)
        if ref.secondary:
            st.caption(ref.secondary)


if loaders.referral_ready(pkg, case, wait=FLAG_WAIT_S):
    decision = loaders.referral(pkg, case, pred)
    show_flag()
    headline_sent()
else:
    flag_slot.caption(":material/hourglass_top: The referral flag: asking the suite's other fusion variants "
                      "(this model's referral signal)…")

for w in pred.warnings:
    st.info(w)
missing = [m for m, ok in pred.present.items() if not ok]
if missing:
    st.caption(f"Missing inputs, replaced by the model's learned 'missing' embedding: {', '.join(missing)}.")

left, right = st.columns(2)
with left:
    std = pred.mc_samples.std(0)
    st.plotly_chart(plots.probability_bars(pred.labels, pred.calibrated, std, page.label), key="prob_chart")
    st.caption("Bars: calibrated probabilities (dropout off). Error bars: standard deviation across the MC-dropout samples.")
with right:
    st.plotly_chart(plots.mc_distribution(pred.labels, pred.mc_samples), key="mc_chart")
    st.caption("Each point is one MC-dropout sample of the head; a wide box means the model is unsure of that class's "
               "probability.")

st.subheader("Uncertainty")
u = pred.uncertainty
a, b, c = st.columns(3)
a.metric("Total (predictive entropy)", f"{u['predictive_entropy']:.3f}")
a.caption("How spread the averaged prediction is over the classes: everything the model is unsure about.")
b.metric("Aleatoric (expected entropy)", f"{u['aleatoric']:.3f}")
b.caption("The part that stays when the model is certain of its own weights: ambiguity in the case itself "
          "(unclear image, sparse note). More data about this case would help, more training would not.")
c.metric("Epistemic (mutual information)", f"{u['epistemic']:.3f}")
c.caption("The part from disagreement between MC-dropout samples: the model has seen too few cases like this one. "
          "High values mean the case may lie outside the training data.")

if decision is None:
    decision = loaders.referral(pkg, case, pred)   # waits for the background vote where it is not there yet
    show_flag()
    trace.event("page headline sent")
ref = decision.referral

st.subheader("Referral and accuracy")
metrics = loaders.package_metrics(str(pkg.path)) or {}
curve = metrics.get("accuracy_vs_referred")
if isinstance(curve, dict) and curve.get("fractions") and curve.get("accuracy"):
    refer_fraction = pkg.cfg.refer_fraction
    pos = plots.referral_position(curve, pred.referral["value"])
    fig = plots.referral_curve(curve["fractions"], curve["accuracy"], refer_fraction,
                               pos, pred.refer)
    st.plotly_chart(fig, key="referral_chart")
    where = []
    if refer_fraction is not None:
        where.append(f"The package's threshold refers the {refer_fraction:.0%} most uncertain validation cases; "
                     f"this case would be **{'referred' if pred.refer else 'kept'}** there.")
    if pos is not None:
        where.append(f"This case would first be referred once about {pos:.0%} of the most uncertain cases are referred.")
    elif "thresholds" in curve:
        where.append("This case is less uncertain than every cut-off on the curve: it would be kept at every point.")
    st.caption(" ".join(where) + " The curve: accuracy on the cases kept when the most uncertain share is referred "
               "(the package's test split)." + (f" {ref.curve_note}" if ref.curve_note else ""))
else:
    st.caption("This package has no accuracy-vs-referred curve (metrics.json).")


ASKED = SessionCache("fl_committee_asked", 8)   # (package sha, folder, case fingerprint, committee.json stamp) -> vote


def second_opinion() -> None:
    """The committee vote of the suite's other fused variants on this case: the referral vote above where it
    is this model's referral signal, else computed when asked for (kept for this session and case)."""
    vote = decision.vote
    key = (pkg.sha256, str(pkg.path), case.fingerprint(), loaders.committee_stamp(pkg))
    if vote is None:
        vote = ASKED.get(key)
    if vote is None:
        st.caption("Runs every other fusion variant of this suite on the case (the encoders' outputs are shared, so "
                   "each costs one fusion + head pass) and counts how many predict a different class.")
        if not st.button("Ask the other variants", key="committee_run", icon=":material/groups:"):
            return
        try:
            with st.spinner("Running the other variants…"):
                suite = Path(pkg.path).parent
                same = [loaders.load(s) for s in cohort_packages(page.summary, page.summaries)
                        if Path(s["path"]).parent == suite]
                vote = ASKED.put(key, committee_vote(same, case, pkg, read_committee(suite),
                                                     prediction=loaders.predict(pkg, case)))
        except FusionLensError as e:
            show_error(e)
            return
    text = f"**{vote.headline()}** with {md_escape(vote.label)}"
    if vote.disagreeing:
        text += ": " + ", ".join(f"{md_escape(v)} says {md_escape(lab)}" for v, lab in vote.disagreeing.items())
    st.markdown(text + ".")
    if tta and vote.label != pred.label:   # the vote is counted against the plain prediction (its threshold was fitted so)
        st.caption(f"The variants are compared with this model's prediction without test-time augmentation "
                   f"({md_escape(vote.label)}); with it the model predicts {md_escape(pred.label)}.")
    if vote.note:
        st.caption(vote.note)


st.subheader("Second opinion from the other variants")
second_opinion()

whatif_panel(pkg, case)  # issue 18: what-if on this case

report_panel(pkg, case, "prediction_report")
