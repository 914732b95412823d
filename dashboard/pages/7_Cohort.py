"""Cohort: a whole cohort's explanations (a results set of `python -m core explain-cohort`, or a small cohort
computed here): metrics by slice, the embedding map, the error browser, explanations per class with a
shortcut finder, and two packages side by side. The drawing lives in cohort_ui, the numbers in core.cohort."""
from __future__ import annotations

import streamlit as st

from dashboard import cohort_ui
from dashboard.auth import require_sign_in
from dashboard.state import setup_page

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = setup_page("Cohort", ":material/groups:")
st.title("Cohort")
cohort_ui.render(page)
