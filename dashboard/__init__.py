"""The FusionLens dashboard (Streamlit): ``streamlit run dashboard/Home.py``.

Home.py and pages/*.py are Streamlit scripts; everything they share is in this package and imported as
``dashboard.<module>`` (``state``: the sidebar and the page opening, ``loaders``: packages, demo cases and
the per-session result cache, ``background``: the work done ahead, ``cases``: the metadata form's checks,
``session_cache``: the one session-cache helper, ``*_ui``: panels drawn by more than one page).
Nothing here is imported by ``core``.
"""
