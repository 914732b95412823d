"""FusionLens home: what it is, which model packages are installed, the research-use notice."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import RESEARCH_NOTICE, PackageError, discover_packages, read_package_summary

MODELS_ROOT = Path(__file__).resolve().parent.parent / "assets" / "models"

st.set_page_config(page_title="FusionLens", page_icon="🔎", layout="wide")
st.title("FusionLens")
st.warning(RESEARCH_NOTICE, icon="⚠️")
st.markdown(
    "FusionLens shows **why** a multimodal clinical classifier said what it said: the prediction with its "
    "uncertainty, how the fusion weighed image, note, metadata and spectrum, and which regions, words and "
    "values drove it."
)

st.subheader("Model packages")
rows, problems = [], []
for path in discover_packages(MODELS_ROOT):
    try:
        s = read_package_summary(path)
    except PackageError as e:
        problems.append(str(e))
        continue
    rows.append({"cohort": s["cohort"], "variant": s["variant"], "name": s["name"],
                 "inputs": ", ".join(s["modalities"]), "classes": len(s["labels"]),
                 "training data": ("synthetic demo data — " if s["synthetic"] else "") + s["training_data"]})
if rows:
    st.dataframe(rows, hide_index=True, use_container_width=True, key="packages")
else:
    st.info("No trained model packages are installed in assets/models yet. Train a suite with "
            "`python -m core train-suite --cohort dermatology` (see the README).")
for p in problems:
    st.error(p)
