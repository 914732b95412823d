"""Fusion internals: how the fusion weighed each input for this case — modality weights, gates (per
dimension on demand), the learned temperature and the measured gate polarisation, level / scale
weights, attention maps over labelled key tokens, and each modality's Shapley value."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import FUSIONS, plots
from core.explain.mechanisms import readings as mechanism_readings, record_of as mechanism_record
from dashboard import loaders
from dashboard.auth import require_sign_in
from dashboard.report_ui import report_panel
from dashboard.state import headline_sent, md_escape, results_page, stop_on_error

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = results_page("Fusion internals", ":material/hub:")
pkg, case = page.pkg, page.case
pred = page.require_prediction(spinner="Running the model…")


def arr(v) -> np.ndarray:
    return np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64)


diag = pred.diagnostics
mods = pkg.modalities
fusion_cls = FUSIONS.get(pkg.variant)
st.markdown(f"**{pkg.variant}** — {md_escape(fusion_cls.SUMMARY or 'fusion variant')}")
if not all(pred.present.values()):
    st.caption("Missing inputs enter through the model's learned 'missing' embedding: "
               + ", ".join(m for m, ok in pred.present.items() if not ok) + ".")

# ---- shares of the fused vector ---------------------------------------------------------------------------------
left, right = st.columns(2)
with left:
    w = arr(diag["modality_weights"])
    st.plotly_chart(plots.modality_bars(dict(zip(mods, w)), "Modality weights (this variant's own mechanism)",
                                        reference=1 / len(mods)), key="modality_weights_chart")
    headline_sent()
    st.caption("Each input's share of the fused vector by the variant's mechanism; the dotted line is an equal share.")
with right:
    if "gates" in diag:
        g = arr(diag["gates"])
        st.plotly_chart(plots.modality_bars(dict(zip(mods, g)), "Gate per modality (mean over dimensions)",
                                            axis_title="gate", percent=False), key="gates_chart")
    elif "contribution_norms" in diag:
        n = arr(diag["contribution_norms"])
        st.plotly_chart(plots.modality_bars(dict(zip(mods, n)), "Contribution norm per modality",
                                            axis_title="‖contribution‖", percent=False), key="norms_chart")
        st.caption("The size of each input's block of the fused vector before mixing (larger = louder, not "
                   "necessarily more useful).")
    elif "level_gates" in diag:
        st.plotly_chart(plots.level_gates_heatmap(mods, arr(diag["level_gates"])), key="level_gates_chart")

if "gates_per_dim" in diag and st.checkbox("Show the gate of every fused dimension", key="show_gates_per_dim"):
    st.plotly_chart(plots.gates_per_dim_heatmap(mods, arr(diag["gates_per_dim"])), key="gates_per_dim_chart")

# ---- can these values be read as an explanation of this case? (measured per package, issue 14) -------------------
st.subheader("Can these values be read as an explanation of this case?")
mech_rows = mechanism_readings(pkg, pred)
if not mech_rows:
    st.caption("This package carries no measurement of its mechanisms (it was trained before they were measured): "
               "read its gates and weights with care, next to the Shapley values below. `python -m core evaluate "
               "--model DIR --cohort ... --mechanisms` measures them on any cohort.")
else:
    TRUST_ICON = {"case": ":material/check_circle:", "summary": ":material/info:", "model": ":material/block:",
                  "weak": ":material/warning:"}
    for r in mech_rows:
        value = r["value"]
        shown = (f" — this case: {value:.3f}" + (f" ({r['percentile']:.0f}th percentile of the test split)"
                                                 if r.get("percentile") is not None else "")) if isinstance(value, float) else ""
        st.markdown(f"{TRUST_ICON.get(r['trust_level'], '')} **{md_escape(r['label'])}**{shown}. "
                    f"{md_escape(r['reading_sentence'])}")
    rec = mechanism_record(pkg) or {}
    per_case = [r for r in mech_rows if isinstance(r["value"], float) and r["name"] in rec.get("distribution", {})]
    if per_case:
        pick = st.selectbox("Where this case falls in the test split", [r["name"] for r in per_case], key="mechanism_dist",
                            format_func=lambda n: next(r["label"] for r in per_case if r["name"] == n))
        row = next(r for r in per_case if r["name"] == pick)
        d = rec["distribution"][pick]
        edges = np.asarray(d["edges"], dtype=np.float64)
        fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=d["hist"], width=np.diff(edges), marker_color="#9aa5b1",
                               name="test split"))
        fig.add_vline(x=row["value"], line_color="#d62728", line_width=3, annotation_text="this case")
        src = rec.get("data") or {}
        where = (f"{src.get('split', 'test')} split of {src.get('cohort', 'the cohort')}"
                 + (f" seed {src['seed']}" if src.get("seed") is not None else "")) if src else "test split"
        fig.update_layout(title=f"{row['label']}: this case against the {rec.get('n_cases', '')} cases ({where})",
                          xaxis_title=row["label"], yaxis_title="cases", height=300, margin=dict(t=50, b=40, l=40, r=20),
                          showlegend=False)
        st.plotly_chart(fig, key="mechanism_dist_chart")
    st.caption("Thresholds: `core.explain.mechanisms.THRESHOLDS` (spread across the test split, movement from the "
               "initial value in training, mean per-case Spearman correlation with the modality Shapley values).")

# ---- the head and modality disagreement ----------------------------------------------------------------------------
head_type = pkg.cfg.head_type
if "expert_weights" in diag:
    st.subheader("Which experts decided")
    ew = arr(diag["expert_weights"])
    st.plotly_chart(plots.weight_bars([f"expert {i + 1}" for i in range(len(ew))], ew,
                                      "Mixture-of-experts routing for this case"), key="experts_chart")
    st.caption("The router sends each case to its top-2 of 4 expert networks and mixes them with these weights; "
               "experts at 0 took no part in this prediction.")
elif head_type != "residual":
    st.caption(f"Head: {md_escape(head_type)}.")
dis = float(arr(diag.get("modality_disagreement", np.nan)))
if np.isfinite(dis):
    st.metric("Modality disagreement", f"{dis:.3f} nats",
              help="Mean symmetric KL divergence between the predictions this model makes from each input alone "
                   "(the others replaced as if missing). High: the inputs point to different classes.")
if pkg.cfg.missing_mode == "reconstruct" and not all(pred.present.values()):
    st.caption("This model reconstructs a missing input's features from the present ones (seed 001) instead of "
               "using a fixed 'missing' embedding.")

# ---- learned temperature --------------------------------------------------------------------------------------
if "temperature" in diag:
    st.subheader("Learned temperature and gate polarisation")
    tau = float(arr(diag["temperature"]))
    mode = pkg.cfg.temperature_mode
    polar = float(arr(diag.get("gate_polarisation", np.nan)))
    a, b = st.columns(2)
    a.metric("Temperature τ", f"{tau:.3f}")
    b.metric("Measured gate polarisation", f"{polar:.2f}",
             help="0 = every modality gated equally, 1 = one modality takes all the gate mass (this case).")
    if mode == "scale":
        a.caption(f"Gates are sigmoid(z) × τ, so they lie in [0, {tau:.2f}]: τ scales the gates, it does not "
                  "sharpen them. Read the polarisation, measured on this case, instead of reading sharpness off τ.")
    else:
        a.caption("Gates are sigmoid(z / τ): a small τ can polarise the gates, a large one smooths them; the "
                  "polarisation measured on this case says what it actually did.")
    if np.isfinite(polar):
        top = mods[int(np.argmax(arr(diag['gates'])))] if "gates" in diag else "one modality"
        words = ("the gates share the fusion almost evenly" if polar < 0.2 else
                 f"the gates lean towards {top}" if polar < 0.6 else f"the gates are strongly polarised towards {top}")
        b.caption(f"For this case {words}.")

# ---- hierarchical levels and scales ----------------------------------------------------------------------------------
figs = []
if "level_weights" in diag:
    figs.append(("level_weights_chart", plots.weight_bars(plots.LEVEL_NAMES, arr(diag["level_weights"]),
                                                          "Level weights a_i (early, middle, last)")))
if "level_gates" in diag and "gates" in diag:  # (without gates, level gates are drawn above)
    figs.append(("level_gates_chart2", plots.level_gates_heatmap(mods, arr(diag["level_gates"]))))
if "scale_weights" in diag:
    figs.append(("scale_weights_chart", plots.weight_bars(plots.SCALE_NAMES, arr(diag["scale_weights"]),
                                                          "Scale weights (global, meso, local)")))
if "rank_weights" in diag:
    r = arr(diag["rank_weights"])
    figs.append(("rank_weights_chart", plots.weight_bars([f"rank {i + 1}" for i in range(len(r))], r, "Rank weights")))
if figs:
    st.subheader("Levels and scales")
    cols = st.columns(2)
    for i, (key, fig) in enumerate(figs):
        with cols[i % 2]:
            st.plotly_chart(fig, key=key)

# ---- attention ---------------------------------------------------------------------------------------------------------
attention = diag.get("attention") or {}
if attention:
    st.subheader("Attention")
    spans_all = diag.get("attention_key_spans") or {}
    queries = list(attention)
    # default: the first query that attends to image patches (drawn on the image below)
    first = next((i for i, q in enumerate(queries) if "image" in (spans_all.get(q) or {})), 0)
    query = st.selectbox("Querying tokens", queries, index=first, key="attention_query",
                         format_func=lambda q: "classification token" if q == "cls" else f"{q} tokens")
    a = arr(attention[query])
    spans = {m: tuple(int(x) for x in s) for m, s in (spans_all.get(query) or {}).items()}
    tokens = pkg.note_tokens(case.note)
    features = pkg.schema.names if pkg.schema is not None else None
    grid = pkg.spectrum_grid
    absent = [m for m, ok in pred.present.items() if not ok]
    keys = plots.key_labels(spans, a.shape[-1], tokens, features, grid, absent)
    qlabels = (["classification token"] if query == "cls" else
               [k.split(" ", 1)[-1] for k in plots.key_labels({query: (0, a.shape[0])}, a.shape[0], tokens, features,
                                                              grid, absent)])
    st.plotly_chart(plots.attention_heatmap(a, spans, keys, qlabels, f"Attention of the {query} tokens over the keys"),
                    key="attention_chart")
    st.caption("Rows: querying tokens; columns: key tokens, boxed by modality (image patches row-major, note word "
               "pieces, table features, spectral segments). Head-averaged attention of the last layer.")
    if "image" in spans and case.image is not None:
        s0, s1 = spans["image"]
        patch = a[:, s0:s1].mean(0)
        if s1 - s0 > 1:
            opacity = st.slider("Patch overlay opacity", 0.0, 1.0, 0.5, 0.05, key="patch_opacity")
            st.plotly_chart(plots.patch_attention_overlay(case.image, patch, opacity,
                                                          f"Attention of the {query} tokens on image patches (mean over rows)"),
                            key="patch_chart")
    if "attention_mass" in diag:
        mass = arr(diag["attention_mass"])
        st.dataframe([{"querying": mods[i], **{f"→ {m}": round(float(mass[i, j]), 3) for j, m in enumerate(mods)}}
                      for i in range(len(mods))], hide_index=True, key="attention_mass_table")
        st.caption("Attention mass: each row's share of attention on each modality's keys.")

if "metadata_feature_gates" in diag:
    with st.expander("Metadata feature-selection gates (learned, the same for every case)"):
        st.plotly_chart(plots.weight_bars(list(diag["metadata_feature_gates"]), list(diag["metadata_feature_gates"].values()),
                                          "Feature gates", "gate"), key="feature_gates_chart")

# ---- modality Shapley values ---------------------------------------------------------------------------------------------
st.subheader("What each input contributed")
labels = pkg.labels
target = st.selectbox("Explain the class", labels, index=pred.label_index, key="fusion_target")
with stop_on_error("Computing the modality Shapley values (every subset of the inputs)…"):
    ex = loaders.explain(pkg, case, ("modality",), target=labels.index(target))
rep = ex.modality or {}
if rep.get("values"):
    left, right = st.columns(2)
    with left:
        st.plotly_chart(plots.shapley_bars(rep, f"Shapley values for P({target})"), key="shapley_chart")
    with right:
        st.plotly_chart(plots.counterfactual_bars(rep), key="without_chart")
    top = rep.get("top_modality")
    st.caption(f"Exact Shapley values over the present inputs; they add up to P(all inputs) − P(no inputs) = "
               f"{rep['full'] - rep['none']:+.3f}. Largest contribution: **{top}**. Absent inputs are replaced by "
               "the model's learned 'missing' embedding, as the model handles missing data.")
    st.dataframe([{"input": m, "Shapley value": round(v, 4), "P without it": round(rep["without"][m], 4),
                   "P with only it": round(rep["only"][m], 4)} for m, v in rep["values"].items()],
                 hide_index=True, key="shapley_table")
else:
    st.info("No input of this case is used by the model, so there is nothing to attribute.")

report_panel(pkg, case, "fusion_internals_report")
