"""The Prediction page's what-if section: edit metadata values (widgets from the package's schema, with
units and ranges), the note, blur the lesion or its context, drop a modality, and see the new calibrated
prediction, uncertainty and modality Shapley values next to the original's, the changes highlighted.
Only the edited modalities are re-encoded (``core.whatif.WhatIfSession`` keeps the original's encoder
outputs for this session). With a results set of this package, the nearest cases in fused space."""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import Case, Package
from core.errors import FusionLensError
from core.whatif import Edit, WhatIfSession, nearest_cases
from dashboard.session_cache import SessionCache
from dashboard.state import error_sentence, md_escape

SESSIONS = SessionCache("fl_whatif", 1)  # (package sha, folder, case fingerprint) -> WhatIfSession: one case at a time
RESULT = "fl_whatif_result"    # session key: the last result, with the (package, case) it belongs to
MISSING = "(missing)"


def _session(pkg: Package, case: Case) -> WhatIfSession:
    return SESSIONS.get_or_compute((pkg.sha256, str(pkg.path), case.fingerprint()), lambda: WhatIfSession(pkg, case))


def _meta_widget(f: Any, current: Any, key: str) -> Any:
    if f.type == "numeric":
        value = None
        try:
            value = float(current) if current not in (None, "") else None
        except (TypeError, ValueError):
            value = None
        label = f"{f.name} ({f.range_text()})" if hasattr(f, "range_text") else f.name
        return st.number_input(label, value=value, key=key, placeholder="missing", format="%g",
                               min_value=float(f.min) if f.min is not None else None,
                               max_value=float(f.max) if f.max is not None else None)
    options = [MISSING] + list(f.categories)
    index = options.index(str(current)) if current is not None and str(current) in options else 0
    return st.selectbox(f.name, options, index=index, key=key)


def whatif_panel(pkg: Package, case: Case) -> None:
    st.subheader("What if?")
    st.caption("Change an input and see what the model would say. Only the edited inputs are re-encoded. "
               "Research use only, not a medical device.")
    schema = pkg.schema
    present = case.present()
    fkey = case.fingerprint()[:10]
    with st.form("whatif_form", border=True):
        meta_values: dict[str, Any] = {}
        if schema is not None:
            st.markdown("**Metadata**")
            cols = st.columns(3)
            current = schema.validate(case.metadata or {})[0] if case.metadata else {}
            for i, f in enumerate(schema.features):
                with cols[i % 3]:
                    meta_values[f.name] = _meta_widget(f, current.get(f.name), f"wi_meta_{f.name}_{fkey}")
        note = None
        if "note" in pkg.modalities:
            note = st.text_area("Note", value=case.note or "", key=f"wi_note_{fkey}", height=90)
        c1, c2 = st.columns(2)
        blur = c1.radio("Blur", ["nothing", "lesion", "context"], horizontal=True, key=f"wi_blur_{fkey}",
                        disabled=case.image is None or "image" not in pkg.modalities,
                        help="Blur the lesion, or the ring of skin around it (the automatic mask without an uploaded one).")
        drop = c2.multiselect("Drop inputs", [m for m in pkg.modalities if present.get(m)], key=f"wi_drop_{fkey}")
        run = st.form_submit_button("Show what changes", type="primary")
    if run:
        original = schema.validate(case.metadata or {})[0] if schema is not None and case.metadata else {}
        meta_edit: dict[str, Any] = {}
        for name, v in meta_values.items():
            v = None if v == MISSING else v
            before = original.get(name)
            if (before is None) != (v is None) or (v is not None and str(before) != str(v)
                                                   and not _same_number(before, v)):
                meta_edit[name] = v
        edit = Edit(meta_edit, note if note is not None and note != (case.note or "") else None,
                    None if blur == "nothing" else blur, tuple(drop))
        if edit.is_empty():
            st.info("Nothing was changed: edit a value, the note, blur a region or drop an input first.")
            st.session_state.pop(RESULT, None)
        else:
            try:   # the original is encoded only now, when a what-if is asked for (not on every page open)
                result = _session(pkg, case).run(edit)
            except FusionLensError as e:
                st.error(error_sentence(e))
                st.session_state.pop(RESULT, None)
                return
            st.session_state[RESULT] = (pkg.sha256, fkey, result)
    stored = st.session_state.get(RESULT)
    if stored and stored[0] == pkg.sha256 and stored[1] == fkey:
        from core.committee import fitted_spec

        show_result(stored[2], fitted_spec(pkg)[0] is not None)
    _nearest(pkg, case)


def _same_number(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return False


def show_result(result: Any, voted: bool = False) -> None:
    """``voted``: the package's referral flag is the committee vote (core.committee.fitted_spec), not re-run here."""
    d = result.to_dict()
    a, b, changed = d["original"], d["what_if"], d["changed"]
    st.markdown("**Changes:** " + "; ".join(md_escape(c) for c in d["changes"])
                + f" · re-encoded: {', '.join(d['reencoded']) or 'nothing'} · {d['seconds'] * 1000:.0f} ms")
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted class (what-if)", b["label"], delta=f"was {a['label']}" if changed["label"] else None,
              delta_color="inverse", help="The original prediction's class is shown as the change when it differs.")
    c2.metric(f"Probability of {b['label']}", f"{b['probability']:.1%}",
              delta=f"{(b['probabilities'][b['label']] - a['probabilities'][b['label']]) * 100:+.1f} points")
    c3.metric("Uncertainty (normalised entropy)", f"{b['normalised_entropy']:.2f}",
              delta=f"{b['normalised_entropy'] - a['normalised_entropy']:+.2f}", delta_color="inverse")
    if changed["label"]:
        st.warning(f"The prediction changes from **{md_escape(a['label'])}** to **{md_escape(b['label'])}**.",
                   icon=":material/swap_horiz:")
    if changed["refer"]:
        own = "The referral flag" if not voted else "The model's own uncertainty flag"
        st.warning(f"{own} changes: {'referred' if a['refer'] else 'kept'} → {'referred' if b['refer'] else 'kept'}."
                   + (" (This model's referral flag is the committee vote, which the what-if does not re-run.)"
                      if voted else ""), icon=":material/flag:")
    rows = [{"quantity": f"p({k})", "original": a["probabilities"][k], "what-if": b["probabilities"][k]} for k in a["probabilities"]]
    rows += [{"quantity": k.replace("_", " "), "original": a[k], "what-if": b[k]} for k in ("normalised_entropy", "aleatoric", "epistemic")]
    rows += [{"quantity": f"Shapley {m}", "original": v, "what-if": b["modality_shapley"].get(m)}
             for m, v in a["modality_shapley"].items()]
    table = pd.DataFrame(rows)
    table["change"] = table["what-if"].astype(float) - table["original"].astype(float)

    def highlight(row: pd.Series) -> list[str]:
        big = pd.notna(row["change"]) and abs(row["change"]) >= 0.05
        return ["background-color: rgba(255, 196, 0, 0.25)" if big else ""] * len(row)

    st.dataframe(table.style.apply(highlight, axis=1).format({"original": "{:.3f}", "what-if": "{:.3f}", "change": "{:+.3f}"},
                                                            na_rep="–"),
                 hide_index=True, key="whatif_table")
    st.caption(f"Shapley values are for the original prediction's class ({md_escape(d['target'])}), so both columns "
               "read the same way. Highlighted: changes of 0.05 or more.")


def _nearest(pkg: Package, case: Case) -> None:
    try:
        from dashboard import cohort_ui  # the Cohort page's results sets (pandas, pyarrow): only when asked
    except ImportError:
        return
    sets = cohort_ui.results_for_package(pkg.sha256)
    if not sets:
        return
    try:
        df, _ = cohort_ui.load_set(sets[0])
    except (OSError, ValueError):
        return
    try:
        session = _session(pkg, case)
    except FusionLensError:
        return
    near = nearest_cases(df.to_dict("records"), session.original.fused, pkg.sha256, k=5, exclude=session.case.case_id)
    if not near:
        return
    st.markdown(f"**Nearest cases in fused space** (results set '{md_escape(sets[0]['name'])}'): cases this model "
                "represents most like this one, with their true labels.")
    cols = st.columns(len(near))
    for c, n in zip(cols, near):
        if n.get("thumbnail"):
            c.image(n["thumbnail"], width=64)
        c.caption(f"{md_escape(n['case_id'])}  \ntrue {md_escape(n['label'] or '?')} · predicted "
                  f"{md_escape(n['prediction'] or '?')}  \ncosine distance {n['distance']:.3f}")
