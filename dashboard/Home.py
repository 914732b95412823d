"""FusionLens home: what it is, which model packages are installed, a short guide, the notice."""
from __future__ import annotations

import streamlit as st

from core import RESEARCH_NOTICE, plots
from core.plots.prediction import package_labels
from dashboard import loaders
from dashboard.auth import require_sign_in
from dashboard.state import setup_page

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = setup_page("Home")
st.title("FusionLens")
st.warning(RESEARCH_NOTICE, icon=":material/warning:")
st.markdown(
    "FusionLens shows **why** a multimodal clinical classifier said what it said: the calibrated prediction "
    "with its uncertainty, how the fusion weighed image, note, metadata and spectrum (gates, learned "
    "temperature, level weights, attention), and which image regions, note words, table values and spectral "
    "bands drove it."
)

st.subheader("Model packages")
summaries, problems = loaders.package_summaries()


def _metric(metrics: dict, name: str) -> float | None:
    v = metrics.get(name)
    v = v.get("value") if isinstance(v, dict) else v
    return round(float(v), 3) if isinstance(v, (int, float)) else None


rows = []
for s in summaries:
    m = s.get("metrics") or {}
    rows.append({
        "cohort": s["cohort"], "variant": s["variant"], "name": s["name"], "inputs": ", ".join(s["modalities"]),
        "classes": ", ".join(s["labels"]),
        "balanced accuracy": _metric(m, "balanced_accuracy"), "macro F1": _metric(m, "macro_f1"),
        "AUROC": _metric(m, "auroc"), "ECE": _metric(m, "ece"),
        "calibration T": None if s.get("calibration_temperature") is None else round(float(s["calibration_temperature"]), 3),
        "training data": ("synthetic demo data — " if s["synthetic"] else "") + (s.get("training_data") or ""),
    })
if rows:
    st.dataframe(rows, hide_index=True, width="stretch", key="packages")
    # the selected cohort's packages at a glance (drawing it also loads the browser's chart code, about 4.7 MB of
    # JavaScript, while the user picks a model and a case, instead of on the first results page)
    cohort = (page.summary or {}).get("cohort")
    shown = [s for s in summaries if s["cohort"] == cohort
             and isinstance(v := (s.get("metrics") or {}).get("balanced_accuracy"), dict)
             and isinstance(v.get("value"), (int, float))]
    # one distinct label per package, as on Compare (two suites of one cohort may both hold a `concat`)
    bars = [{"model": label, "variant": s["variant"], "balanced_accuracy": s["metrics"]["balanced_accuracy"]["value"],
             "balanced_accuracy_ci95": s["metrics"]["balanced_accuracy"].get("ci95")}
            for s, label in zip(shown, package_labels(shown))]
    if bars:
        st.plotly_chart(plots.cohort_metric_bars(bars, title=f"The {cohort} cohort: balanced accuracy on each "
                                                              "package's test split (95% interval)"),
                        key="home_metrics_chart")
    if any(s["cohort"] == "ham10000" for s in summaries):
        st.caption("Packages of the **ham10000** cohort were trained on HAM10000 (real dermoscopy, CC BY-NC: "
                   "non-commercial research use; Tschandl et al., Sci. Data 2018) at 200 × 150 pixels. "
                   "`gated_template_note` adds a note written from age / sex / site: its modality Shapley values "
                   "show the note restating the metadata (a lesson, not a better model).")
    if any(s["synthetic"] for s in summaries):
        st.caption("Packages marked **synthetic demo data** were trained on generated cases: their numbers "
                   "show how the software works, not how well any model diagnoses anything.")
    st.caption("Metrics are on each package's held-out test split (from its config.json); the calibration "
               "temperature T divides the logits before the softmax.")
else:
    roots = ", ".join(str(r) for r in loaders.models_roots())
    st.info(f"No trained model packages were found in {roots}. Train a suite with "
            "`python -m core train-suite --cohort dermatology` (see the README), or ask the operator to set "
            f"{loaders.MODELS_ENV} to the models folder.")
for p in problems:
    st.error(p)

st.subheader("How to use it")
st.markdown(
    "1. **Pick a model** in the sidebar: the cohort, then the fusion variant.\n"
    "2. **Case**: upload an image (PNG/JPEG/TIFF), an optional lesion mask, the clinical note, the metadata "
    "and an optional spectrum, or a case bundle, or pick a demo case. Any input may be missing.\n"
    "3. **Prediction**: calibrated probabilities, the MC-dropout spread, uncertainty and the referral flag.\n"
    "4. **Fusion internals**: how the fusion weighed each input (gates, temperature, level weights, attention) "
    "and each input's Shapley value.\n"
    "5. **Image explanations**: heatmaps (the suite's validated map: IG from the median features on the synthetic "
    "dermatology suite, Grad-CAM family elsewhere), lesion vs context, stability.\n"
    "6. **Attributions**: note words, table values and spectral bands that pushed the prediction.\n"
    "7. **Compare**: 2 to 4 fusion variants side by side on this case (or all as a table), how far they agree on "
    "the label and on the explanation, and every package's test metrics.\n\n"
    "Every page with results ends with a **Case report** panel: PDF, self-contained HTML or JSON."
)
st.caption(RESEARCH_NOTICE)
