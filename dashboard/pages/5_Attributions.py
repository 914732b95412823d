"""Attributions: the note's words, the table's values and the spectrum's bands that pushed the
explained class up or down (Captum, through the whole fused model), with convergence deltas."""
from __future__ import annotations

import streamlit as st

from core import plots
from dashboard import loaders
from dashboard.auth import require_sign_in
from dashboard.report_ui import report_panel
from dashboard.state import headline_sent, results_page, stop_on_error

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = results_page("Attributions", ":material/highlight:")
pkg, case = page.pkg, page.case
pred = page.require_prediction()

c1, c2, c3 = st.columns(3)
target = c1.selectbox("Explain the class", pkg.labels, index=pred.label_index, key="attr_target")
steps = c2.slider("Integration steps", 8, 64, 24, 8, key="ig_steps",
                  help="More steps = a more exact integral (smaller convergence delta), slower.")
shapley = c3.slider("Shapley samples (table)", 10, 100, 40, 10, key="shapley_samples")

with stop_on_error("Computing attributions (integrated gradients, Shapley sampling)…"):
    ex = loaders.explain(pkg, case, ("note", "table", "spectrum"), target=pkg.labels.index(target),
                         ig_steps=steps, shapley_samples=shapley)


def delta_caption(d: dict, what: str) -> None:
    st.caption(f"{what}: convergence delta {d['convergence_delta']:.2e}"
               + (f" ({d['relative_delta']:.1%} of the total attribution)" if "relative_delta" in d else "")
               + f", {d['n_steps']} steps. A small delta means the attributions add up to the change in the "
                 "calibrated logit from the baseline.")


st.subheader("Clinical note")
if ex.note:
    # the note is user text: note_highlight_html escapes every piece of it before adding the highlights
    st.markdown(plots.note_highlight_html(case.note or "", ex.note["words"]), unsafe_allow_html=True)
    headline_sent()
    base = {"unk": "a note of [UNK] tokens", "pad": "a note of [PAD] tokens"}.get(ex.note.get("baseline"), "a neutral note")
    st.caption(f"Red words pushed P({target}) up, blue words pushed it down (layer integrated gradients on the word "
               f"embeddings from {base} of the same length, word pieces merged into words; hover a word for its score).")
    if ex.note.get("truncated"):
        st.warning("The note is longer than the model reads; words past the limit got no attribution.")
    delta_caption(ex.note, "Note")
else:
    st.caption(ex.skipped.get("note", "No note attributions."))

st.subheader("Metadata")
if ex.table:
    method = st.radio("Method", ["integrated_gradients", "shapley"], key="table_method", horizontal=True,
                      format_func=lambda m: m.replace("_", " "))
    st.plotly_chart(plots.table_attribution_bars(ex.table["features"], method), key="table_chart")
    st.dataframe([{"feature": r["name"], "value": "missing" if r["value"] is None else str(r["value"]), "unit": r["unit"],
                   "baseline": str(r["baseline"]), "integrated gradients": round(r["integrated_gradients"], 5),
                   "Shapley": round(r["shapley"], 5)} for r in ex.table["features"]], hide_index=True,
                 key="table_attr_table")
    st.caption("Relative to the baseline (training mean, most frequent category). "
               f"{ex.table['shapley_samples']} Shapley samples.")
    delta_caption(ex.table, "Table (integrated gradients)")
else:
    st.caption(ex.skipped.get("table", "No metadata attributions."))

st.subheader("Spectrum")
if ex.spectrum:
    sp = ex.spectrum
    st.plotly_chart(plots.spectrum_attribution(sp["wavelengths"], sp["spectrum"], sp["smoothed"], sp["attributions"]),
                    key="spectrum_chart")
    st.caption("Top: the spectrum on the model's grid. Bottom: integrated gradients per point against the training "
               "mean spectrum, smoothed; shaded bands hold the strongest attributions.")
    delta_caption(sp, "Spectrum")
else:
    st.caption(ex.skipped.get("spectrum", "No spectrum attributions."))

report_panel(pkg, case, "attributions_report")
