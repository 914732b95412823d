"""Session-state keys, ``setup_page`` (the one call at the top of every page, after the sign-in gate) and
``results_page`` (the opening of every page that shows results of the current case).

``setup_page`` sets the page config, draws the sidebar (model picker: cohort + variant from the
packages found, the research-use notice, the current case) and returns a :class:`Page` with what the
page needs. ``results_page`` adds the title, the selected package and the current case, and stops the
page with a message when either is missing; ``page.require_prediction()`` and ``stop_on_error()`` turn
core's errors (``FusionLensError``) into one sentence on the page. Values that must survive page switches
live under the ``fl_*`` keys; the sidebar widgets (``w_*``) are re-seeded from them on every run, because
Streamlit drops a widget's state on pages that do not draw it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import streamlit as st

from core import FUSIONS, RESEARCH_NOTICE, Case, CaseError, Package, Prediction
from core.errors import FusionLensError
from dashboard import background, loaders, trace

# ---- session-state keys -------------------------------------------------------------------------
MODEL = "fl_model"                # folder (str) of the selected model package
CASE = "fl_case"                  # the current core.Case (valid fields only) or None
CASE_SOURCE = "fl_case_source"    # where it came from: "uploaded files", "bundle 'x.zip'", "demo case cohort/id"
CASE_LABEL = "fl_case_label"      # the true label carried by a demo case or bundle (its ``truth``), or None
CASE_ERRORS = "fl_case_errors"    # {field: sentence} for inputs of the last load that were left out
CASE_WARNINGS = "fl_case_warnings"  # sentences about ignored bundle files, metadata names, ...
# sidebar widget keys
COHORT_W = "w_cohort"
DEFAULT_COHORT = "ham10000"     # real dermoscopy first; the generated cohorts are the faithfulness laboratory
VARIANT_W = "w_variant"

DEFAULTS: dict[str, Any] = {MODEL: None, CASE: None, CASE_SOURCE: None, CASE_LABEL: None, CASE_ERRORS: {},
                            CASE_WARNINGS: []}
MODALITY_NAMES = {"image": "image", "note": "clinical note", "metadata": "metadata", "spectrum": "spectrum"}
SHORT_NOTICE = "Research use only, not a medical device."


@dataclass
class Page:
    summary: dict[str, Any] | None           # the selected package's config facts
    summaries: list[dict[str, Any]] = field(default_factory=list)
    case: Case | None = None
    label: str | None = None                  # the case's true label, when known
    pkg: Package | None = None                # set by results_page

    def package(self) -> Package | None:
        """The selected package, loaded once per process; None (with a message) when unusable."""
        if self.summary is None:
            st.info("No model packages were found. Train a suite (`python -m core train-suite --cohort dermatology`) "
                    f"or ask the operator to set {loaders.MODELS_ENV} to the models folder.")
            return None
        try:
            with st.spinner(f"Loading the model {self.summary['name']}…"):
                return loaders.load(self.summary)
        except FusionLensError as e:
            show_error(e)
            return None

    def require_case(self) -> Case | None:
        if self.case is None:
            st.info("No case is loaded yet: upload one or pick a demo case on the **Case** page.")
            st.page_link("pages/1_Case.py", label="Open the Case page", icon=":material/folder_open:")
        return self.case

    def require_prediction(self, tta: bool = False, spinner: str | None = None) -> Prediction:
        """The (cached) prediction of the page's case; an error is shown and the page stops."""
        with stop_on_error(spinner):
            return loaders.predict(self.pkg, self.case, tta=tta)


def results_page(title: str, icon: str, heading: str | None = None) -> Page:
    """The opening of a results page (after ``require_sign_in()``): ``setup_page``, the title, then the
    selected package and the current case in ``page.pkg`` / ``page.case``; without either the page
    says what to do and stops."""
    page = setup_page(title, icon)
    st.title(heading or title)
    page.pkg = page.package()
    trace.event(f"page package {title}")
    if page.pkg is None or page.require_case() is None:
        st.stop()
    return page


HEADLINE_YIELD_ENV = "FUSIONLENS_HEADLINE_YIELD_S"
HEADLINE_YIELD_S = 0.05


def headline_sent() -> None:
    """Call right after a page's headline element: the page pauses ``FUSIONLENS_HEADLINE_YIELD_S`` seconds (default
    0.05) before the rest of it. The browser draws together whatever elements reach it at once, so a headline chart
    sent in the same few milliseconds as the charts below it waited for all of them to be drawn (Fusion internals:
    four charts, 0.45 s on a loaded machine); with the pause it is drawn on its own first."""
    import time

    trace.event("page headline sent")
    try:
        pause = float(os.environ.get(HEADLINE_YIELD_ENV, HEADLINE_YIELD_S))
    except ValueError:
        pause = HEADLINE_YIELD_S
    if pause > 0:
        time.sleep(min(pause, 1.0))


@contextmanager
def stop_on_error(spinner: str | None = None) -> Iterator[None]:
    """Core calls of a page: a ``FusionLensError`` is shown as one sentence and the page stops there."""
    try:
        if spinner:
            with st.spinner(spinner):
                yield
        else:
            yield
    except FusionLensError as e:
        show_error(e)
        st.stop()


def error_sentence(e: BaseException) -> str:
    """One sentence for an error from core (never a traceback)."""
    if isinstance(e, CaseError):
        items = list(e.errors.items())
        if len(items) == 1:
            return items[0][1]
        return f"The case has {len(items)} problems: " + " ".join(f"{k}: {v}" for k, v in items)
    text = str(e).strip() or "Something went wrong with this input."
    return text[0].upper() + text[1:]


def md_escape(text: str) -> str:
    """User text (file names, ids) for st.markdown / st.caption: markdown syntax shown literally."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()<>#+-.!|~$" else ch for ch in str(text))


def show_error(e: BaseException) -> None:
    st.error(error_sentence(e))


def _init() -> None:
    for k, v in DEFAULTS.items():
        if k not in st.session_state:
            st.session_state[k] = v.copy() if isinstance(v, (dict, list)) else v


def _variant_labels(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Display label -> summary for one cohort: the variant name, made unique with the package name."""
    order = {n: i for i, n in enumerate(FUSIONS.names())}
    items = sorted(items, key=lambda s: (order.get(s["variant"], 99), s["name"], s["path"]))
    counts: dict[str, int] = {}
    for s in items:
        counts[s["variant"]] = counts.get(s["variant"], 0) + 1
    out: dict[str, dict[str, Any]] = {}
    for s in items:
        label = s["variant"] if counts[s["variant"]] == 1 else f"{s['variant']} · {s['name']}"
        while label in out:
            label += "′"
        out[label] = s
    return out


def _by_cohort(summaries: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(s.get("cohort") or "custom", []).append(s)
    return {c: _variant_labels(groups[c]) for c in sorted(groups)}


def _on_cohort(groups: dict[str, dict[str, dict[str, Any]]]) -> None:
    labels = groups.get(st.session_state[COHORT_W], {})
    if not labels:
        return
    current = next((s for g in groups.values() for s in g.values() if s["path"] == st.session_state.get(MODEL)), None)
    same = [s for s in labels.values() if current is not None and s["variant"] == current["variant"]]
    st.session_state[MODEL] = (same or list(labels.values()))[0]["path"]


def _on_variant(labels: dict[str, dict[str, Any]]) -> None:
    s = labels.get(st.session_state[VARIANT_W])
    if s is not None:
        st.session_state[MODEL] = s["path"]


def _model_picker(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    st.sidebar.subheader("Model")
    if not summaries:
        st.sidebar.info("No model packages found.")
        return None
    groups = _by_cohort(summaries)
    current = next((s for g in groups.values() for s in g.values() if s["path"] == st.session_state.get(MODEL)), None)
    if current is None:  # default: the real-data cohort (else the first)'s first fused variant (a unimodal baseline only if alone)
        first = list((groups.get(DEFAULT_COHORT) or next(iter(groups.values()))).values())
        current = next((s for s in first if s["variant"] != "unimodal"), first[0])
        st.session_state[MODEL] = current["path"]
    cohort = current.get("cohort") or "custom"
    labels = groups[cohort]
    # re-seed the widgets from the stored choice (their own state is dropped on page switches)
    st.session_state[COHORT_W] = cohort
    st.session_state[VARIANT_W] = next(k for k, s in labels.items() if s["path"] == current["path"])
    st.sidebar.selectbox("Cohort", list(groups), key=COHORT_W, on_change=_on_cohort, args=(groups,))
    st.sidebar.selectbox("Fusion variant", list(labels), key=VARIANT_W, on_change=_on_variant, args=(labels,),
                         help="Every package found in the models folders; the operator decides which folders.")
    if current.get("synthetic"):
        st.sidebar.caption("Trained on **synthetic demo data**.")
    elif current.get("cohort") == "ham10000":
        st.sidebar.caption("Trained on **HAM10000 (real dermoscopy, CC BY-NC)**; research use only.")
    return current


def _case_summary(case: Case | None, summary: dict[str, Any] | None) -> None:
    st.sidebar.subheader("Current case")
    if case is None:
        st.sidebar.caption("No case loaded: open the **Case** page.")
        return
    source = st.session_state.get(CASE_SOURCE) or "uploaded"
    st.sidebar.text(case.case_id or "unnamed case")  # text, not markdown: ids come from uploads
    st.sidebar.caption(f"from {md_escape(source)}")
    used = summary["modalities"] if summary else list(MODALITY_NAMES)
    present = case.present()
    lines = []
    for m in MODALITY_NAMES:
        if m in used:
            lines.append(f"- {MODALITY_NAMES[m]}: {'present' if present[m] else '**missing**'}")
        elif present[m]:
            lines.append(f"- {MODALITY_NAMES[m]}: present, not used by this model")
    st.sidebar.markdown("\n".join(lines))
    label = st.session_state.get(CASE_LABEL)
    if label:
        st.sidebar.caption(f"True label (demo data): {label}")
    errors = st.session_state.get(CASE_ERRORS) or {}
    if errors:
        st.sidebar.caption(f"{len(errors)} input(s) were left out because of errors; see the Case page.")


def setup_page(title: str, icon: str = ":material/search:") -> Page:
    """Page config, session defaults, the sidebar; call first on every page."""
    trace.event(f"page run {title}")
    background.torch_threads()   # one torch thread per computing thread of the server (dashboard/background.py)
    st.set_page_config(page_title=f"{title} · FusionLens", page_icon=icon, layout="wide")
    _init()
    summaries, problems = loaders.package_summaries()
    st.sidebar.warning(RESEARCH_NOTICE, icon=":material/warning:")
    summary = _model_picker(summaries)
    for p in problems:
        st.sidebar.caption(f"Skipped a model folder: {p}")
    case = st.session_state.get(CASE)
    _case_summary(case, summary)
    st.caption(f":material/warning: {SHORT_NOTICE} Never use it to diagnose or treat a patient.")
    _work_ahead(summary, summaries, case)
    return Page(summary, summaries, case, st.session_state.get(CASE_LABEL))


# ---- work done before a page asks for it (dashboard/background.py) -------------------------------------------------

def cohort_packages(summary: dict[str, Any], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The packages comparable with ``summary`` (same cohort and classes) in the Compare page's order."""
    cohort = summary.get("cohort") or "custom"
    same = [s for s in summaries if (s.get("cohort") or "custom") == cohort and s["labels"] == summary["labels"]]
    order = {n: i for i, n in enumerate(FUSIONS.names())}
    return sorted(same, key=lambda s: (order.get(s["variant"], 99), s["name"]))


def _first_demo_case(cohort: str | None) -> Case | None:
    from core.case_io import read_demo_case

    demo = next((d for d in loaders.demo_cases() if d.cohort == cohort), None)
    if demo is None:
        return None
    return Case.from_case_inputs(read_demo_case(demo), partial=True)


def _work_ahead(summary: dict[str, Any] | None, summaries: list[dict[str, Any]], case: Case | None) -> None:
    """Warm the selected package (no case yet: ``background.warm_up``), preload its committee members, and start
    this session's default explanation of its case."""
    if summary is None:
        return
    try:
        from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

        ctx = get_script_run_ctx()
        attach = (lambda t: add_script_run_ctx(t, ctx)) if ctx is not None else None
    except ImportError:  # pragma: no cover  (older Streamlit)
        attach = None
    same = cohort_packages(summary, summaries)
    _preload_committee(summary, summaries, attach)

    if case is None:
        # warm the selected package while the user chooses a case (once per package and process); with a case,
        # the session's job below does the real work at once (and would stop a warm-up)
        def warm_vote(pkg: Package, demo: Case, pred: Prediction) -> Any:
            return loaders.committee_vote(pkg, demo, pred, summaries) if loaders.committee_stamp(pkg) else None

        background.warm_up(loaders.load, summary, same, lambda: _first_demo_case(summary.get("cohort")), attach,
                           warm_vote)
        background.cancel_job(st.session_state)
        return
    try:
        pkg = loaders.load(summary)
    except FusionLensError:
        return  # the page reports it
    # the Prediction page's referral flag: the committee vote where committee.json was fitted for this package,
    # run by the job right after the prediction (core/committee.py; dashboard/loaders.py:referral reads it)
    stamp = loaders.committee_stamp(pkg)
    vote = (lambda pred: loaders.committee_vote(pkg, case, pred, summaries)) if stamp is not None else None
    paths = background.default_compare_paths(summary, same)
    by_path = {s["path"]: s for s in same}
    chosen = [by_path[p] for p in paths if p in by_path]
    key = tuple((str(s.get("sha256")), s["path"]) for s in chosen) if len(chosen) >= 2 else None

    load = loaders.load   # the loader of the run that started the job (the job loads them after the explanation)

    def compare_pkgs() -> list[Package]:
        return [load(s) for s in chosen] if key else []

    background.ensure_job(st.session_state, pkg, case, case.fingerprint(), compare_pkgs, key, attach, vote, stamp)


def _preload_committee(summary: dict[str, Any], summaries: list[dict[str, Any]], attach: Any) -> None:
    """Where the selected package's suite has a committee.json fitted for it, load its members into the shared
    cache once per process while the user is still choosing a case (the vote then only runs them)."""
    from pathlib import Path

    from core.committee import COMMITTEE_FILE, read_committee

    suite = Path(summary["path"]).parent
    stamp = suite / COMMITTEE_FILE
    if not stamp.is_file():
        return

    def load_members() -> None:
        spec = read_committee(suite)
        if spec is None or spec.variant != Path(summary["path"]).name:
            return
        by_name = {Path(s["path"]).name: s for s in summaries if Path(s["path"]).parent == suite}
        for name in (summary["path"], *spec.committee):
            s = by_name.get(Path(name).name)
            if s is not None:
                loaders.load(s)

    try:
        key = (summary["path"], str(summary.get("sha256")), stamp.stat().st_mtime_ns)
    except OSError:
        return
    background.preload(key, load_members, attach)
