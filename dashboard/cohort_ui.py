"""The Cohort page: a results set of ``python -m core explain-cohort`` (from the operator's
``FUSIONLENS_RESULTS`` folders; never a path typed in the UI) or a small cohort computed here, shown as
metrics by slice, an embedding map, an error browser, explanations per class with a shortcut finder, and
two packages side by side. The numbers come from ``core.cohort.analysis``; this module draws them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cohort import analysis
from core.cohort import runner
from dashboard import loaders, state

RESULTS_ENV = "FUSIONLENS_RESULTS"
DEFAULT_RESULTS = loaders.REPO / "results"
MAX_IN_APP = 500
IN_APP_PARTS = ("prediction", "modality", "cam_summary", "note_top", "table_top", "embedding")
OPENED = "co_opened"               # session key: the case id last opened from this page


def results_roots() -> list[Path]:
    return loaders._roots(RESULTS_ENV, DEFAULT_RESULTS) + [in_app_root()]


def in_app_root() -> Path:
    cache = os.environ.get("FUSIONLENS_CACHE", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache" / "fusionlens") / "cohort-results"


@st.cache_data(ttl=30, show_spinner=False)
def _find(roots: tuple[str, ...]) -> list[dict[str, Any]]:
    return analysis.find_results(roots)


def results_sets() -> list[dict[str, Any]]:
    return _find(tuple(str(r) for r in results_roots()))


@st.cache_data(show_spinner=False, max_entries=8)
def _load(path: str, stamp: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    return analysis.load_results(path)


def load_set(entry: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    return _load(entry["path"], entry["mtime"])


def results_for_package(sha256: str) -> list[dict[str, Any]]:
    """Results sets holding rows of the package with this sha256 (for the what-if's nearest cases)."""
    return [r for r in results_sets() if any(p.get("sha256") == sha256 for p in r["manifest"].get("packages", []))]


# ---- opening a case from the cohort ---------------------------------------------------------------------------------

def open_case(row: dict[str, Any], set_name: str, summaries: Sequence[dict[str, Any]]) -> None:
    """Make a results row's case the session's case (and its package the selected one), go to Prediction."""
    from core.cohort import record_case

    row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    try:
        case = record_case(row)
    except (ValueError, OSError) as e:
        state.show_error(e)
        return
    st.session_state[state.CASE] = case
    st.session_state[state.CASE_SOURCE] = f"results set '{set_name}', case {row['case_id']}"
    st.session_state[state.CASE_LABEL] = row.get("label")
    st.session_state[state.CASE_ERRORS] = {}
    st.session_state[state.CASE_WARNINGS] = []
    st.session_state[OPENED] = row["case_id"]
    pkg = next((s for s in summaries if s.get("sha256") == row.get("package_sha256")), None)
    if pkg is not None:
        st.session_state[state.MODEL] = pkg["path"]
    st.switch_page("pages/2_Prediction.py")


# ---- figures ------------------------------------------------------------------------------------------------------------

def reliability_figure(rel: dict[str, Any], title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"))
    xs = [c for c, n in zip(rel["confidence"], rel["count"]) if n]
    ys = [a for a, n in zip(rel["accuracy"], rel["count"]) if n]
    ns = [n for n in rel["count"] if n]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="model", text=[f"{n} cases" for n in ns],
                             marker={"size": [6 + 14 * np.sqrt(n / max(ns)) for n in ns]} if ns else None))
    fig.update_layout(title=f"{title} · ECE {rel['ece']:.3f}", xaxis_title="confidence (calibrated)",
                      yaxis_title="accuracy", height=340, margin={"t": 40, "b": 40, "l": 40, "r": 10},
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1]})
    return fig


def confusion_figure(m: np.ndarray, labels: Sequence[str], title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=m, x=list(labels), y=list(labels), colorscale="Blues", text=m, texttemplate="%{text}",
                               showscale=False))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", height=340, yaxis={"autorange": "reversed"},
                      margin={"t": 40, "b": 40, "l": 40, "r": 10})
    return fig


def embedding_figure(d: pd.DataFrame, xy: np.ndarray, colour: str, method: str) -> go.Figure:
    if colour == "uncertainty":
        fig = go.Figure(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=d["case_id"],
                                   marker={"color": d["normalised_entropy"], "colorscale": "Viridis", "showscale": True,
                                           "colorbar": {"title": "uncertainty"}, "size": 8},
                                   hovertemplate="%{customdata}<extra></extra>", name="cases"))
    else:
        key = {"label": "label", "correct": "correct", "top_modality": "top_modality"}[colour]
        values = d[key].map({True: "correct", False: "wrong"}) if key == "correct" else d[key].astype(str)
        fig = go.Figure()
        for v in sorted(values.dropna().unique()):
            sel = (values == v).to_numpy()
            fig.add_trace(go.Scatter(x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=str(v), customdata=d["case_id"][sel],
                                     marker={"size": 8}, hovertemplate="%{customdata}<extra>" + str(v) + "</extra>"))
    fig.update_layout(title=f"Fused vectors ({method.upper()}) coloured by {analysis.COLOUR_BY[colour]}", height=460,
                      margin={"t": 40, "b": 30, "l": 30, "r": 10}, xaxis={"showticklabels": False},
                      yaxis={"showticklabels": False})
    return fig


def map_figure(mean_map: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=mean_map, colorscale="Inferno", showscale=False))
    fig.update_layout(title=title, height=200, width=200, margin={"t": 30, "b": 5, "l": 5, "r": 5},
                      xaxis={"visible": False}, yaxis={"visible": False, "autorange": "reversed"})
    return fig


# ---- computing a small cohort in the app ------------------------------------------------------------------------------

def compute_panel(page: Any) -> None:
    summary = page.summary
    if summary is None:
        st.info("No model packages were found, so nothing can be computed here.")
        return
    cohort = summary.get("cohort")
    if cohort not in ("dermatology", "diabetes"):
        st.info("Computing in the app needs a package of a generated demo cohort (dermatology or diabetes); for other "
                "data ask the operator to run `python -m core explain-cohort` into a results folder.")
        return
    same = [s for s in page.summaries if s.get("cohort") == cohort and s["labels"] == summary["labels"]]
    names = {s["path"]: f"{s['variant']} · {s['name']}" for s in same}
    chosen = st.multiselect("Packages", list(names), default=[summary["path"]], format_func=names.get, key="co_pkgs",
                            max_selections=4)
    c1, c2 = st.columns(2)
    n = c1.number_input(f"Cases (at most {MAX_IN_APP})", 10, MAX_IN_APP, 60, step=10, key="co_n")
    seed = c2.number_input("Generator seed (use one never trained on)", 0, 10**6, 4242, key="co_seed",
                           help="The demo suites were trained on seed 0.")
    if not chosen:
        st.info("Pick at least one package.")
        return
    shas = sorted(s["sha256"] or "" for s in same if s["path"] in chosen)
    key = hashlib.sha256(repr((shas, cohort, int(seed), int(n))).encode()).hexdigest()[:12]
    out = in_app_root() / f"{cohort}-s{int(seed)}-n{int(n)}-{key}"
    go_, cancel = st.columns([1, 1])
    start = go_.button("Compute", key="co_compute", type="primary")
    cancel.button("Cancel", key="co_cancel", help="Stops after the current batch; computing again resumes from there.")
    if not start:
        return
    bar = st.progress(0.0, text="Generating the cohort…")
    try:
        records, source = runner.load_records(cohort, None, int(seed), max(int(n), 50), "all")
        records = records[:int(n)]

        def progress(info: dict[str, Any]) -> None:
            left = info["seconds_left"]
            bar.progress(min(1.0, info["done"] / max(info["total"], 1)),
                         text=f"{info['done']} of {info['total']} cases · {info['cases_per_s']:.2f} cases/s"
                              + (f" · about {left:.0f} s left" if left is not None else ""))

        manifest = runner.run_cohort([s["path"] for s in same if s["path"] in chosen], records, str(out), IN_APP_PARTS,
                                     "local", batch_size=8, source=source, progress=progress)
    except (ValueError, OSError) as e:
        state.show_error(e)
        return
    bar.progress(1.0, text=f"Done: {manifest['counts']['cases_ok']} cases explained, "
                           f"{manifest['counts']['cases_failed']} failed.")
    _find.clear()
    st.session_state["co_set"] = str(out)


# ---- the page -------------------------------------------------------------------------------------------------------

def render(page: Any) -> None:
    mode = st.radio("Results", ["Saved results", "Compute a small cohort here"], horizontal=True, key="co_mode",
                    help=f"Saved results are found below the operator's folders ({RESULTS_ENV}); a path is never typed here.")
    if mode.startswith("Compute"):
        compute_panel(page)
    sets = results_sets()
    if not sets:
        st.info(f"No results sets found. Run `python -m core explain-cohort … --out results/NAME` or ask the operator "
                f"to set {RESULTS_ENV}; or compute a small cohort here.")
        return
    by_path = {s["path"]: s for s in sets}
    if st.session_state.get("co_set") not in by_path:
        st.session_state["co_set"] = sets[0]["path"]
    def set_label(p: str) -> str:
        return f"{by_path[p]['name']} ({by_path[p]['manifest'].get('counts', {}).get('cases_ok', '?')} cases)"

    path = st.selectbox("Results set", list(by_path), key="co_set", format_func=set_label)
    entry = by_path[path]
    try:
        df, manifest = load_set(entry)
    except (OSError, ValueError) as e:
        st.error(f"This results set could not be read ({state.error_sentence(e)}).")
        return
    failures = manifest.get("failures", [])
    src = manifest.get("source", {})
    st.caption(f"{manifest.get('counts', {}).get('cases_ok', 0)} cases · packages: "
               f"{', '.join(state.md_escape(p['name']) for p in manifest.get('packages', []))} · cohort "
               f"{state.md_escape(src.get('cohort') or src.get('data') or '?')}, seed {src.get('seed')}, split {src.get('split')}"
               f" · engine {manifest.get('engine')}" + (" · synthetic demo data" if src.get("synthetic") else ""))
    if failures:
        with st.expander(f"{len(failures)} case(s) failed"):
            st.dataframe(pd.DataFrame(failures), hide_index=True)
    packages = [p["name"] for p in manifest.get("packages", [])]
    if not packages:
        st.info("This results set has no packages.")
        return
    pkg_name = st.selectbox("Package", packages, key="co_package") if len(packages) > 1 else packages[0]
    d = analysis.ok_rows(df, pkg_name)
    if d.empty:
        st.info("No case of this package was explained successfully.")
        return
    labels = next((p["labels"] for p in manifest["packages"] if p["name"] == pkg_name), sorted(d["pred_label"].unique()))
    labelled = d[d["label"].notna()]

    # ---- focus on a slice (worst first) ----------------------------------------------------------------------------
    worst = analysis.worst_slices(labelled) if len(labelled) else pd.DataFrame()
    choices: dict[str, tuple[str, str] | None] = {"whole cohort": None}
    for r in worst.itertuples():  # the option text is the choice itself (no format_func: stable across reruns)
        choices[f"{analysis.SLICES.get(r.slicing, r.slicing)} = {r.slice} · accuracy {r.accuracy:.2f} (n={r.n})"
                f"{' ⚑' if r.flag else ''}"] = (r.slicing, str(r.slice))
    if st.session_state.get("co_focus") not in choices:
        st.session_state["co_focus"] = "whole cohort"
    picked = st.selectbox("Focus on a slice (worst first)", list(choices), key="co_focus",
                          help="The reliability diagram, confusion matrix, error browser and map below show this slice. "
                               "⚑: much worse than the whole cohort.")
    if choices[picked] is not None:
        col, val = choices[picked]
        fd = d[d[col].astype(str) == val]
        focus = f"{analysis.SLICES.get(col, col)} = {val}"
    else:
        fd, focus = d, "whole cohort"

    tabs = st.tabs(["Slices", "Embedding map", "Errors", "Explanations", "Compare packages"])
    with tabs[0]:
        _slices_tab(labelled, fd, labels, focus)
    with tabs[1]:
        _map_tab(fd, entry, page)
    with tabs[2]:
        _errors_tab(fd, entry, page)
    with tabs[3]:
        _explanations_tab(fd)
    with tabs[4]:
        _compare_tab(df, packages)


def _slices_tab(labelled: pd.DataFrame, fd: pd.DataFrame, labels: Sequence[str], focus: str) -> None:
    if labelled.empty:
        st.info("The cases have no true labels, so there are no metrics by slice.")
        return
    slicings = [s for s in analysis.SLICES if s in labelled and labelled[s].notna().any()]
    by = st.radio("Slice by", slicings, horizontal=True, key="co_slicing", format_func=analysis.SLICES.get)
    m = analysis.slice_metrics(labelled, by)
    flagged = m[m["flag"]]
    for r in flagged.itertuples():
        st.warning(f"**{state.md_escape(r.slice)}** is much worse than the whole cohort: accuracy {r.accuracy:.2f} "
                   f"(95% CI {r.ci_low:.2f}–{r.ci_high:.2f}, n={r.n}) vs {m.iloc[0]['accuracy']:.2f} overall.",
                   icon=":material/flag:")
    show = m.rename(columns={"ci_low": "CI low", "ci_high": "CI high", "flag": "much worse"})
    st.dataframe(show, hide_index=True, key="co_slice_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                ("accuracy", "CI low", "CI high", "balanced_accuracy", "ece", "mean_uncertainty", "referred_share")})
    st.caption("Intervals: 95% bootstrap over the slice's cases. ⚑ / 'much worse': the slice's whole interval lies below "
               f"the overall accuracy (at least 5 cases). Chance accuracy for {len(labels)} balanced classes: "
               f"{1 / max(len(labels), 1):.2f}.")
    fl = fd[fd["label"].notna()]
    if fl.empty:
        return
    a, b = st.columns(2)
    a.plotly_chart(reliability_figure(analysis.reliability(fl), f"Reliability · {focus}"), key="co_reliability")
    b.plotly_chart(confusion_figure(analysis.confusion(fl, labels), labels, f"Confusion · {focus}"), key="co_confusion")


def _map_tab(fd: pd.DataFrame, entry: dict[str, Any], page: Any) -> None:
    if "fused" not in fd or fd["fused"].isna().all():
        st.info("This results set has no fused vectors (the 'embedding' part was not computed).")
        return
    d = fd[fd["fused"].notna()].reset_index(drop=True)
    c1, c2 = st.columns(2)
    colour = c1.radio("Colour by", list(analysis.COLOUR_BY), horizontal=True, key="co_colour",
                      format_func=analysis.COLOUR_BY.get)
    method = c2.radio("Projection", ["umap", "pca"], index=1, horizontal=True, key="co_method", format_func=str.upper,
                      help="PCA is instant. UMAP (umap-learn) keeps local neighbourhoods better; its first use in the "
                           "server process compiles numba code (about a minute on a busy 2-core machine), and it needs "
                           "at least 20 cases (PCA otherwise).")
    xy, used = _embed(entry["path"], entry["mtime"], tuple(d["case_id"]), tuple(d["package"]), method, d)
    event = st.plotly_chart(embedding_figure(d, xy, colour, used), key="co_map", on_select="rerun",
                            selection_mode="points")
    if used != method:
        st.caption("Shown with PCA: UMAP needs umap-learn and at least 20 cases.")
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) or hasattr(event, "get") else []
    if points:
        cid = points[0].get("customdata")
        rows = d[d["case_id"] == cid]
        if len(rows):
            _case_card(rows.iloc[0].to_dict(), entry, page, "co_map_open")
    else:
        st.caption("Hover a point for its case id; click it to select the case.")


@st.cache_data(show_spinner="Projecting the fused vectors…", max_entries=8, hash_funcs={pd.DataFrame: lambda _: 0})
def _embed(path: str, stamp: float, ids: tuple, pkgs: tuple, method: str, d: pd.DataFrame):
    return analysis.embedding_2d(d, method)


def _case_card(row: dict[str, Any], entry: dict[str, Any], page: Any, key: str) -> None:
    c1, c2 = st.columns([1, 4])
    if row.get("thumbnail"):
        c1.image(row["thumbnail"], width=64)
    c2.markdown(f"**{state.md_escape(row['case_id'])}** · true {state.md_escape(row.get('label') or '?')} · predicted "
                f"{state.md_escape(row['pred_label'])} ({row['p_pred']:.0%}) · top modality {row.get('top_modality') or '–'}")
    if c2.button("Open this case", key=key):
        open_case(row, entry["name"], page.summaries)


def _errors_tab(fd: pd.DataFrame, entry: dict[str, Any], page: Any) -> None:
    if fd["label"].isna().all():
        st.info("The cases have no true labels, so there are no errors to browse.")
        return
    c1, c2 = st.columns(2)
    sort = c1.radio("Sort by", ["loss", "uncertainty"], horizontal=True, key="co_sort")
    only_wrong = c2.toggle("Wrong predictions only", value=True, key="co_only_wrong")
    eb = analysis.error_browser(fd, sort, only_wrong)
    if eb.empty:
        st.success("No wrong predictions in this slice.")
        return
    st.caption(f"{len(eb)} case(s), highest {sort} first.")
    rows = fd.set_index("case_id")
    for i, r in enumerate(eb.head(10).itertuples()):
        full = rows.loc[r.case_id].to_dict() | {"case_id": r.case_id}
        c0, c1, c2, c3 = st.columns([1, 3, 3, 2])
        if full.get("thumbnail"):
            c0.image(full["thumbnail"], width=56)
        c1.markdown(f"**{state.md_escape(r.case_id)}**  \ntrue **{state.md_escape(r.label)}** · predicted "
                    f"**{state.md_escape(r.pred_label)}** ({r.p_pred:.0%})")
        c2.caption(f"loss {r.loss:.2f} · uncertainty {r.normalised_entropy:.2f} · top modality {r.top_modality or '–'}"
                   f"{' · referred' if r.refer else ''}")
        if c3.button("Open this case", key=f"co_open_{i}"):
            open_case(full, entry["name"], page.summaries)
    if len(eb) > 10:
        st.dataframe(eb.drop(columns=["thumbnail"], errors="ignore").iloc[10:], hide_index=True)


def _explanations_tab(fd: pd.DataFrame) -> None:
    by = st.radio("Group by", ["pred_label", "label"], horizontal=True, key="co_group",
                  format_func={"pred_label": "predicted class", "label": "true class"}.get)
    agg = analysis.class_aggregates(fd[fd[by].notna()], by)
    st.dataframe(agg, hide_index=True)
    st.caption("|Shapley|: mean absolute exact Shapley value of each modality (calibrated probability of the predicted "
               "class). CAM ratios: share of Grad-CAM mass in the lesion / context ring over its share of the area "
               "(1 = no preference). Words and features: how often each was among a case's top 3.")
    st.subheader("Shortcut finder")
    for r in analysis.non_clinical_classes(fd, by):
        st.warning(f"Class **{state.md_escape(r['class'])}** ({r['n']} cases): " + "; ".join(r["reasons"])
                   + f". Examples: {', '.join(map(state.md_escape, r['examples']))}.", icon=":material/report:")
    clusters = analysis.cam_clusters(fd)
    if not clusters:
        st.caption("Too few Grad-CAMs for clustering (the 'cam_summary' part, at least 4 cases with an image).")
        return
    st.caption("Grad-CAM maps clustered with k-means on 8×8 downsized maps (the SpRAy idea): a cluster whose mass sits "
               "off the lesion, or whose accuracy differs, deserves a look at its examples.")
    cols = st.columns(len(clusters))
    for c, r in zip(cols, clusters):
        c.plotly_chart(map_figure(r["mean_map"], f"cluster {r['cluster']} · n={r['n']}"), key=f"co_cluster_{r['cluster']}")
        lesion = "–" if r["lesion_ratio"] is None else f"{r['lesion_ratio']:.2f}×"
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        c.caption(f"{'⚑ off the lesion · ' if r['off_lesion'] else ''}lesion mass {lesion} its area · accuracy {acc} · "
                  + ", ".join(f"{k} {v}" for k, v in list(r["classes"].items())[:3])
                  + f"  \nexamples: {', '.join(map(state.md_escape, r['examples']))}")


def _compare_tab(df: pd.DataFrame, packages: Sequence[str]) -> None:
    if len(packages) < 2:
        st.info("This results set holds one package; run explain-cohort with two or more --model to compare them.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("Package A", packages, index=0, key="co_cmp_a")
    b = c2.selectbox("Package B", packages, index=1, key="co_cmp_b")
    if a == b:
        st.info("Pick two different packages.")
        return
    r = analysis.compare_packages(df, a, b)
    m1, m2, m3 = st.columns(3)
    m1.metric("Disagree on", f"{r['disagreements']} of {r['n']} cases")
    m2.metric(f"Accuracy {a}", "–" if r["accuracy"][a] is None else f"{r['accuracy'][a]:.3f}")
    m3.metric(f"Accuracy {b}", "–" if r["accuracy"][b] is None else f"{r['accuracy'][b]:.3f}")
    st.markdown("**Slices: which package is more accurate**")
    st.dataframe(r["slices"], hide_index=True)
    st.markdown("**Cases where they disagree**")
    st.dataframe(r["cases"], hide_index=True)
