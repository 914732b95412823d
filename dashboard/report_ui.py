"""The case-report panel every page with results ends with: prepare once, download PDF / HTML / JSON.

The report is built in memory (never written to disk) from the session's cached prediction and a full
explanation of the current case; a variant comparison run on the Compare page for the same case is
included. The user may add a free case reference (never a patient name).
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from core import Case, Package
from core.errors import FusionLensError
from core.explain import default_parts
from core.report import ReportError, clean_reference, make_report
from dashboard import loaders, trace
from dashboard.session_cache import SessionCache

REPORT_PARTS = default_parts("report")
# one prepared report per session is enough (they can be a few MB): (package sha, folder, case fingerprint,
# reference) -> {fmt: bytes, "names": {fmt: file name}}
REPORTS = SessionCache("fl_reports", 1)
COMPARISONS = SessionCache("fl_comparison", 4)  # (case fingerprint, package folders) -> core.compare.Comparison
MIME = {"pdf": "application/pdf", "html": "text/html", "json": "application/json"}  # CSV: the CLI's `report --out x.csv`


def last_comparison(case: Case, pkg: Package) -> Any | None:
    """The latest comparison of this case that included ``pkg``, if one was run in this session."""
    fp = case.fingerprint()
    for (case_fp, folders), comparison in COMPARISONS.items_newest_first():
        if case_fp == fp and str(pkg.path) in folders:
            return comparison
    return None


def remember_comparison(case: Case, comparison: Any) -> None:
    COMPARISONS.put((case.fingerprint(), tuple(str(c.package.path) for c in comparison.columns)), comparison)


def report_panel(pkg: Package, case: Case, key: str) -> None:
    """The "Case report" section: reference field, a Prepare button, then three download buttons."""
    trace.event("page end (report panel)")
    st.divider()
    st.subheader("Case report")
    st.caption("A PDF or a self-contained HTML page (page 1: the heatmap, the calibrated prediction with its uncertainty "
               "in words, the referral advice, the strongest reasons per input, the model and its training data; then "
               "details, fusion internals, faithfulness and any variant comparison) or JSON (every number). Built in "
               "memory; nothing is stored on the server.")
    ref_raw = st.text_input("Case reference (optional)", key=f"{key}_reference", max_chars=120,
                            placeholder="a study or ticket id, never a patient name",
                            help="Printed on the report. Use an id from your own system; do not type patient names.")
    try:
        reference = clean_reference(ref_raw)
    except ReportError as e:
        st.error(str(e))
        return
    rkey = (pkg.sha256, str(pkg.path), case.fingerprint(), reference)
    if st.button("Prepare the report", key=f"{key}_prepare", icon=":material/description:"):
        try:
            with st.spinner("Explaining the case and writing the report…"):
                ex = loaders.explain(pkg, case, REPORT_PARTS)
                # the referral flag of the Prediction page (the committee vote where it was fitted; no second vote)
                rep = make_report(pkg, case, ex, last_comparison(case, pkg), reference, ex.prediction,
                                  loaders.referral(pkg, case, ex.prediction))
                REPORTS.clear()  # free the old report before the new one is kept
                # one CaseReport for every format: its sections (and their pictures) are built once for PDF and HTML
                REPORTS.put(rkey, {"pdf": rep.pdf(), "html": rep.html().encode("utf-8"), "json": rep.json().encode("utf-8"),
                                   "names": {f: rep.filename(f) for f in MIME}})
        except FusionLensError as e:
            st.error(f"The report could not be made: {e}")
            return
    ready = REPORTS.get(rkey)
    if ready is None:
        st.caption("Press **Prepare the report** (a few seconds: it computes every explanation of this case).")
        return
    cols = st.columns(len(MIME))
    for col, fmt in zip(cols, MIME):
        col.download_button(f"Download {fmt.upper()}", data=ready[fmt], file_name=ready["names"][fmt], mime=MIME[fmt],
                            key=f"{key}_download_{fmt}", on_click="ignore", icon=":material/download:")
