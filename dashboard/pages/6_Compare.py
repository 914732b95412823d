"""Compare: 2 to 4 fusion variants side by side on the current case (or every variant as a table), how far
they agree on the label and on the explanation, and the same variants' metrics on their cohort."""
from __future__ import annotations

import streamlit as st

from core import plots
from core.compare import cohort_metrics
from core.explain.mechanisms import readings as mechanism_readings
from core.explain.gradcam import NAMES
from core.plots.prediction import package_labels
from dashboard import background, loaders
from dashboard.figures import light_overlay
from dashboard.auth import require_sign_in
from dashboard.report_ui import remember_comparison, report_panel
from dashboard.state import cohort_packages, md_escape, results_page, stop_on_error

MAX_SIDE_BY_SIDE = 4

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = results_page("Compare variants", ":material/compare:", "Compare fusion variants")
pkg, case = page.pkg, page.case

cohort = page.summary.get("cohort") or "custom"
same = cohort_packages(page.summary, page.summaries)
labels = {s["path"]: (s["name"].split("/")[-1] if "/" in s["name"] else s["name"]) for s in same}
if len(same) < 2:
    st.info("Only one model package of this cohort is installed; comparing needs at least two.")
    st.stop()

mode = st.radio("View", ["Side by side (2 to 4 variants)", "Every variant as a table"], horizontal=True, key="cmp_mode")
if mode.startswith("Side"):
    default = background.default_compare_paths(page.summary, same)  # what the session computed ahead
    chosen = st.multiselect("Variants", list(labels), default=default, format_func=labels.get, key="cmp_variants",
                            max_selections=MAX_SIDE_BY_SIDE, help="Pick 2 to 4 packages of this cohort.")
    if len(chosen) < 2:
        st.info("Pick at least two variants to compare.")
        st.stop()
    explain = True
else:
    chosen = [s["path"] for s in same]
    explain = False

by_path = {s["path"]: s for s in same}
with stop_on_error(f"Loading {len(chosen)} models…"):
    pkgs = [loaders.load(by_path[p]) for p in chosen]
with stop_on_error("Running the case through every variant (shared image / note encoders run once)…"):
    cmp = loaders.compare(pkgs, case, explain)
remember_comparison(case, cmp)
d = cmp.to_dict()
agree, ens, ea = d["agreement"], d["ensemble"], d["explanation_agreement"].get("mean", {})
for name, why in d.get("skipped", {}).items():
    st.caption(f"Not compared: {md_escape(name)}, because {md_escape(why)}")

# ---- agreement above the columns -------------------------------------------------------------------------------
a, b, c, e = st.columns(4)
n = len(d["columns"])
a.metric("Label agreement", "all agree" if agree["all_agree"] else f"{agree['votes'][agree['majority_label']]} of {n}",
         help="How many variants predict the majority label.")
b.metric("Ensemble prediction", ens["label"], help="The class with the highest mean calibrated probability across the variants.")
c.metric("Mean probability ± spread", f"{ens['probability_of_label']:.0%} ± {ens['std_of_label_probability']:.2f}",
         help="The ensemble label's mean calibrated probability and its standard deviation across the variants.")
e.metric("Variant disagreement", f"{ens['disagreement']:.3f} nats",
         help="Entropy of the mean prediction minus the mean entropy: 0 when every variant gives the same "
              "distribution; grows when confident variants disagree. An ensemble uncertainty.")
if not agree["all_agree"]:
    st.warning("The variants disagree on this case: votes " + ", ".join(f"{k} {v}" for k, v in agree["votes"].items())
               + ". Treat the prediction with extra care.", icon=":material/call_split:")
if page.label:
    st.caption(f"True label recorded with this demo case: {md_escape(page.label)}.")
st.plotly_chart(plots.variant_probabilities(d["columns"], d["target_label"]), key="cmp_probs")

if explain:
    st.caption(f"Explanations below are all for the class **{md_escape(d['target_label'])}** (the ensemble's prediction), "
               "so they can be compared across variants.")
    m1, m2, m3, m4 = st.columns(4)
    fmt = lambda k: "n/a" if ea.get(k) is None else f"{ea[k]:.2f}"  # noqa: E731
    m1.metric("Heatmap overlap (IoU, top 20%)", fmt("cam_top_iou"),
              help="Mean over pairs of variants of the intersection-over-union of their hottest 20% of pixels.")
    m2.metric("Note words (rank corr.)", fmt("note_spearman"),
              help="Mean Spearman correlation of the word attributions between pairs of variants.")
    m3.metric("Table features (rank corr.)", fmt("table_spearman"),
              help="Mean Spearman correlation of the table attributions (integrated gradients).")
    m4.metric("Same top modality", "n/a" if ea.get("top_modality_same_fraction") is None else f"{ea['top_modality_same_fraction']:.0%}",
              help="Share of variant pairs whose modality Shapley values name the same most important input.")

    # ---- one column per variant ------------------------------------------------------------------------------
    cols = st.columns(len(cmp.columns))
    heads = package_labels(d["columns"])  # the package's name (variant type after it): gated and gated_kan are both "gated"
    for i, (col, vc, summ, head) in enumerate(zip(cols, cmp.columns, d["columns"], heads)):
        with col:
            st.markdown(f"**{md_escape(head)}**")
            st.metric("Prediction", f"{summ['label']} {summ['probability']:.1%}")
            st.caption(f"uncertainty {summ['normalised_entropy']:.2f} · epistemic {summ['epistemic']:.3f}")
            if str(vc.package.path) == str(pkg.path) and loaders.committee_stamp(pkg) is not None:
                # the selected package: its referral flag as on the Prediction page (the committee vote where
                # committee.json was fitted for it; the session's background vote, not made again)
                ref = loaders.referral(pkg, case).referral
                if ref.refer:
                    st.warning("Refer: " + ("the committee vote." if ref.signal == "committee_vote"
                                            else "above its threshold."), icon=":material/flag:")
                elif summ["refer"] and ref.signal == "committee_vote":
                    st.caption("Its own uncertainty is above its threshold; its referral flag is the committee "
                               "vote, which does not refer (Prediction page).")
            elif summ["refer"]:
                st.warning("Refer: above its threshold.", icon=":material/flag:")
            internals = summ["internals"]
            shown = {k: v for k, v in internals.items() if k in ("temperature", "gate_polarisation", "gates", "level_weights",
                                                               "scale_weights", "modality_weights")}
            if shown:
                st.dataframe([{"diagnostic": k, "value": str(v)} for k, v in shown.items()], hide_index=True,
                             key=f"cmp_internals_{i}")
            # how far each internal can be read (core.explain.mechanisms, measured on the package's test split)
            mech = mechanism_readings(vc.package, vc.prediction)
            firsts = [r for r in mech if r["name"].startswith("modality_weights")][:1] + \
                [r for r in mech if r["name"] in ("temperature", "level_weights", "scale_weights")]
            for r in firsts:
                st.caption(md_escape(r["reading_sentence"]))
            ex = vc.explanation
            if ex is not None and ex.cams and case.image is not None:
                cam = next(iter(ex.cams.values()))
                mask = ex.lesion_context["mask"] if ex.lesion_context else None
                fig = light_overlay(plots.cam_overlay(case.image, cam, 0.5, mask))
                fig.update_layout(height=260, margin=dict(l=0, r=0, t=0, b=0), showlegend=False)
                fig.update_traces(showscale=False, selector=dict(type="heatmap"))
                st.plotly_chart(fig, key=f"cmp_cam_{i}")
                st.caption(f"heatmap: {NAMES.get(next(iter(ex.cams)), next(iter(ex.cams)))}")
                if summ.get("cam_lesion_share") is not None:
                    st.caption(f"heatmap mass: lesion {summ['cam_lesion_share']:.0%}, context {summ['cam_context_share']:.0%}")
            if summ.get("top_words"):
                st.caption("Top note words: " + ", ".join(f"{md_escape(w['text'])} ({w['score']:+.3f})" for w in summ["top_words"][:4]))
            if summ.get("top_features"):
                st.caption("Top table features: " + ", ".join(f"{md_escape(f['name'])} ({f['score']:+.3f})"
                                                                for f in summ["top_features"][:3]))
    with st.expander("Explanation agreement for every pair"):
        st.dataframe(d["explanation_agreement"]["pairs"], hide_index=True, key="cmp_pairs")
else:
    rows = [{"variant": s["variant"], "model": labels.get(s["path"], s["name"]), "label": s["label"],
             "probability": round(s["probability"], 3), "uncertainty": round(s["normalised_entropy"], 3),
             "refer": s["refer"]} for s in d["columns"]]
    st.dataframe(rows, hide_index=True, width="stretch", key="cmp_table")

passes = ", ".join(f"{m} ×{k}" for m, k in d["encoder_passes"].items())
st.caption(f"Cost: encoder passes for the whole comparison: {passes}; {d['timings'].get('total', 0):.2f} s "
           "(first run; cached afterwards).")

# ---- cohort view ---------------------------------------------------------------------------------------------------
st.subheader(f"The {cohort} cohort: every package's test metrics")
rows = cohort_metrics([s["path"] for s in same])
if rows:
    metric = st.selectbox("Metric", ["balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc"],
                          key="cmp_metric", format_func=lambda m: m.replace("_", " "))
    st.plotly_chart(plots.cohort_metric_bars(rows, metric), key="cmp_cohort_chart")
    st.caption("Bars: each package's held-out test split, with bootstrap 95% intervals; grey: unimodal baselines. "
               "Overlapping intervals mean the difference may be chance.")
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if not k.endswith("_ci95") and k != "modalities"}
             for r in rows]
    st.dataframe(table, hide_index=True, width="stretch", key="cmp_cohort_table")
    if any((by_path[p].get("synthetic")) for p in chosen):
        st.caption("These packages were trained on **synthetic demo data**: the table shows how the variants compare "
                   "on that data, not how well any of them diagnoses real patients.")

report_panel(pkg, case, "cmp_report")
