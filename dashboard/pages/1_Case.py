"""Case: upload the inputs, a case bundle, or pick a demo case. Every field is validated on its own;
a wrong field is reported next to it and left out, everything else is kept."""
from __future__ import annotations

import math

import numpy as np
import streamlit as st

from core import Case, plots
from core.case_io import CaseInputs, read_bundle, read_demo_case
from core.errors import FusionLensError
from dashboard import cases, loaders, state
from dashboard.auth import require_sign_in
from dashboard.state import md_escape, setup_page, show_error

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = setup_page("Case", ":material/folder_open:")
st.title("Case")
pkg = page.package()
schema = pkg.schema if pkg is not None else None
UPLOADED = "uploaded files"


def store(case: Case | None, source: str, label: str | None, errors: dict[str, str], warnings: list[str]) -> None:
    """Make ``case`` the session's case and rerun, so the sidebar (drawn first) shows it too."""
    st.session_state[state.CASE] = case
    st.session_state[state.CASE_SOURCE] = source
    st.session_state[state.CASE_LABEL] = label
    st.session_state[state.CASE_ERRORS] = errors
    st.session_state[state.CASE_WARNINGS] = warnings
    st.rerun()


def load_inputs(inputs: CaseInputs, source: str) -> None:
    case, errors = cases.case_for(inputs, pkg)
    store(case, source, inputs.label, errors, list(inputs.warnings))


def meta_widget(f) -> object:
    """One optional metadata field: a number box (unit and range in the label; values outside the range
    are accepted here and refused by the schema with a sentence) or a category box."""
    key = f"meta_{f.name}"
    help_text = " ".join(x for x in (f.description, "Leave it empty if unknown.") if x)
    if f.type == "numeric":
        span = (f.max - f.min) if f.min is not None and f.max is not None and f.max > f.min else 100.0
        step = float(10 ** math.floor(math.log10(span / 100))) if span >= 1e-6 else 0.01
        return st.number_input(f"{f.name} ({f.range_text()})", value=None, step=step, format="%g", key=key,
                               placeholder="missing", help=help_text)
    return st.selectbox(f.name, f.categories, index=None, key=key, placeholder="missing", help=help_text)


MODES = ("Upload files", "Case bundle", "Demo case")
mode = st.radio("Where does the case come from?", MODES, key="case_mode", horizontal=True)

if mode == "Upload files":
    slots: dict[str, object] = {}
    with st.form("case_form", clear_on_submit=False, border=True):
        left, right = st.columns(2)
        with left:
            up_image = st.file_uploader("Image (PNG, JPEG or TIFF)", type=["png", "jpg", "jpeg", "tif", "tiff"],
                                        key="up_image")
            slots["image"] = st.empty()
            up_mask = st.file_uploader("Lesion mask (optional; PNG, white = lesion, same size as the image)",
                                       type=["png", "tif", "tiff"], key="up_mask")
            slots["mask"] = st.empty()
            up_spectrum = st.file_uploader("Spectrum (optional; CSV of wavelength,value rows)", type=["csv", "txt"],
                                           key="up_spectrum")
            slots["spectrum"] = st.empty()
        with right:
            note_text = st.text_area("Clinical note", key="up_note_text", height=150, placeholder="missing")
            up_note = st.file_uploader("…or the note as a .txt file (it replaces the text box)", type=["txt"],
                                       key="up_note_file")
            slots["note"] = st.empty()
        st.markdown("**Metadata** (every field is optional)")
        raw: dict[str, object] = {}
        if schema is not None:
            cols = st.columns(3)
            for i, f in enumerate(schema.features):
                with cols[i % 3]:
                    raw[f.name] = meta_widget(f)
                    slots[f"metadata.{f.name}"] = st.empty()
        elif pkg is not None:
            st.caption("The selected model does not use metadata.")
        else:
            st.caption("No model is loaded, so there is no metadata form.")
        slots["case"] = st.empty()
        submitted = st.form_submit_button("Use this case", type="primary", key="case_submit")
    if submitted:
        meta, meta_errors = cases.validate_metadata_fields(schema, raw) if schema is not None else ({}, {})
        note = up_note.getvalue() if up_note is not None else (note_text or None)
        case = Case.from_inputs(image=up_image.getvalue() if up_image is not None else None,
                                mask=up_mask.getvalue() if up_mask is not None else None, note=note,
                                metadata=meta or None,
                                spectrum=up_spectrum.getvalue() if up_spectrum is not None else None,
                                case_id="uploaded case", partial=True)
        case, errors = cases.restricted(case, pkg, {**case.extras.pop("errors", {}), **meta_errors})
        store(case, UPLOADED, None, errors, [])
    if st.session_state.get(state.CASE_SOURCE) == UPLOADED:
        for field, msg in (st.session_state.get(state.CASE_ERRORS) or {}).items():
            slot = slots.get(field) or slots.get(field.split(".")[0]) or slots["case"]
            slot.error(msg)

elif mode == "Case bundle":
    up = st.file_uploader("Case bundle: a .zip holding image.png, mask.png, note.txt, metadata.json, spectrum.csv "
                          "(any may be missing), or a .json object with note and metadata", type=["zip", "json"],
                          key="bundle_file")
    if st.button("Load bundle", key="bundle_load", type="primary", disabled=up is None) and up is not None:
        try:
            load_inputs(read_bundle(up.name, up.getvalue()), f"bundle '{up.name}'")
        except FusionLensError as e:
            show_error(e)

else:
    demos = loaders.demo_cases()
    cohort = page.summary.get("cohort") if page.summary else None
    every = st.checkbox("Show demo cases of every cohort", key="demo_all", value=not any(d.cohort == cohort for d in demos))
    shown = [d for d in demos if every or d.cohort == cohort]
    if not shown:
        st.info("No demo cases were found. They live in folders <cohort>/<case id>/ below "
                f"{', '.join(str(r) for r in loaders.cases_roots())} (the operator can set {loaders.CASES_ENV}).")
    else:
        by_key = {d.key: d for d in shown}
        pick = st.selectbox("Demo case", list(by_key), key="demo_pick")
        if st.button("Load demo case", key="demo_load", type="primary"):
            try:
                load_inputs(read_demo_case(by_key[pick]), f"demo case {pick}")
            except FusionLensError as e:
                show_error(e)

# ---- the case as it is now ---------------------------------------------------------------------------------------
case: Case | None = st.session_state.get(state.CASE)
st.divider()
st.subheader("Current case")
if case is None:
    st.info("No case loaded yet.")
    st.stop()

errors = st.session_state.get(state.CASE_ERRORS) or {}
source = st.session_state.get(state.CASE_SOURCE) or ""
st.caption(f"{md_escape(case.case_id or 'unnamed case')} · from {md_escape(source)}")
if errors:
    st.warning(f"{len(errors)} input(s) were left out because of the error(s) shown; everything else was kept. "
               "Fix them and load the case again.", icon=":material/edit:")
    if source != UPLOADED:
        for field, msg in errors.items():
            st.error(f"{field}: {msg}")
for w in st.session_state.get(state.CASE_WARNINGS) or []:
    st.info(w)
if page.label:
    st.caption(f"True label recorded with this demo case: **{md_escape(page.label)}**")

used = pkg.modalities if pkg is not None else list(state.MODALITY_NAMES)
present = case.present()
st.markdown(" · ".join(f"**{state.MODALITY_NAMES[m]}**: {'present' if present[m] else 'missing'}"
                       for m in state.MODALITY_NAMES if m in used or present[m]))
missing = [state.MODALITY_NAMES[m] for m in used if not present[m]]
if missing:
    st.caption(f"Missing: {', '.join(missing)}. The model replaces a missing input with its learned "
               "'missing' embedding and predicts from what is present.")
unused = [state.MODALITY_NAMES[m] for m in state.MODALITY_NAMES if present[m] and m not in used]
if unused:
    st.caption(f"Not used by the selected model: {', '.join(unused)}.")

left, right = st.columns(2)
with left:
    if case.image is not None:
        st.image(case.image, caption=f"image ({case.image.size[0]} × {case.image.size[1]} px)", width=320)
    if case.mask is not None:
        st.image((case.mask.astype(np.uint8) * 255), caption="lesion mask", width=320)
with right:
    st.markdown("**Clinical note**")
    if case.note:
        # the note is user text: note_highlight_html escapes every character of it
        st.markdown(plots.note_highlight_html(case.note), unsafe_allow_html=True)
    else:
        st.caption("missing")
    st.markdown("**Metadata**")
    rows = []
    meta = case.metadata or {}
    if schema is not None:
        for f in schema.features:
            v = meta.get(f.name)
            status = "missing" if v is None else "ok"
            if f"metadata.{f.name}" in errors:
                status = "left out (error)"
            rows.append({"field": f.name, "value": "" if v is None else str(v), "unit": f.unit,
                         "allowed": f.range_text() if f.type == "numeric" else ", ".join(f.categories), "status": status})
    for k, v in meta.items():
        if schema is None or k not in schema.names:
            rows.append({"field": k, "value": str(v), "unit": "", "allowed": "", "status": "not used by this model"})
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch", key="case_meta_table")
    else:
        st.caption("missing")
if case.spectrum is not None:
    st.plotly_chart(plots.spectrum_preview(case.spectrum, "Spectrum"), key="case_spectrum_chart")

if st.button("Clear the case", key="case_clear"):
    store(None, "", None, {}, [])
