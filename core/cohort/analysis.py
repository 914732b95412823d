"""A results set read as the Cohort page shows it: metrics by slice with bootstrap intervals, reliability
and confusion per slice, the embedding map, the error browser, explanations aggregated per class, a
shortcut finder and two packages side by side. Plain pandas / numpy / scikit-learn; no streamlit."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .rows import MODALITIES
from .store import ResultsStore

SLICES = {"label": "true label", "sex": "sex", "age_band": "age band", "site": "site", "referred": "referred / kept",
          "evidence": "evidence kind"}
AGE_BANDS = [(0, 30, "< 30"), (30, 45, "30–44"), (45, 60, "45–59"), (60, 75, "60–74"), (75, 200, "75 +")]
#: table features that describe how or where a case was recorded rather than the patient's disease
NON_CLINICAL = ("site", "localization", "hospital", "centre", "center", "scanner", "device", "dataset", "source", "camera")
COLOUR_BY = {"label": "true label", "correct": "correct / wrong", "uncertainty": "uncertainty", "top_modality": "top modality"}


# ---- reading ------------------------------------------------------------------------------------------------------------

def find_results(roots: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Results sets (folders with a manifest.json) at most two levels below each root, newest first."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for m in sorted(list(root.glob("manifest.json")) + list(root.glob("*/manifest.json")) + list(root.glob("*/*/manifest.json"))):
            try:
                man = json.loads(m.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(man, dict) or "packages" not in man:
                continue
            found.append({"path": str(m.parent), "name": str(m.parent.relative_to(root)) if m.parent != root else root.name,
                          "manifest": man, "mtime": m.stat().st_mtime})
    return sorted(found, key=lambda r: -r["mtime"])


def load_results(folder: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every row of a results set as a DataFrame (failed rows included; ``status`` tells) and its manifest."""
    store = ResultsStore(folder)
    manifest = store.read_manifest() or {}
    df = store.read().to_pandas()
    return add_slices(df), manifest


def add_slices(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    age = pd.to_numeric(df.get("age"), errors="coerce") if "age" in df else pd.Series(np.nan, index=df.index)
    band = pd.Series(None, index=df.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        band[(age >= lo) & (age < hi)] = name
    df["age_band"] = band
    df["referred"] = df["refer"].map({True: "referred", False: "kept"}) if "refer" in df else None
    return df


def ok_rows(df: pd.DataFrame, package: str | None = None) -> pd.DataFrame:
    d = df[df["status"] == "ok"]
    return d[d["package"] == package] if package is not None else d


# ---- metrics by slice -----------------------------------------------------------------------------------------------

def _balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean([np.mean(p[y == c] == c) for c in classes])) if len(classes) else float("nan")


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(conf[idx == b].mean() - correct[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


def bootstrap_ci(values: Sequence[Any], stat, n_boot: int = 300, seed: int = 0, *more: Sequence[Any]) -> tuple[float, float]:
    """95% percentile interval of ``stat(values[, more...])`` over ``n_boot`` resamples of the rows."""
    arrays = [np.asarray(values)] + [np.asarray(m) for m in more]
    n = len(arrays[0])
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        stats.append(stat(*[a[i] for a in arrays]))
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def slice_metrics(df: pd.DataFrame, by: str, n_boot: int = 300, seed: int = 0, min_n: int = 5) -> pd.DataFrame:
    """One row per value of ``by`` plus "all": n, accuracy (95% bootstrap CI), balanced accuracy, ECE, mean
    uncertainty, referred share; ``flag`` marks a slice whose accuracy interval lies wholly below the
    overall accuracy (at least ``min_n`` cases): it is much worse than the whole, not by chance."""
    d = df[df["label"].notna()] if "label" in df else df
    d = d[d["status"] == "ok"] if "status" in d else d
    rows = []
    overall = float(d["correct"].astype(float).mean()) if len(d) else float("nan")
    groups = [("all", d)] + [(str(k), g) for k, g in d.groupby(by, dropna=True)] if by in d and by != "all" else [("all", d)]
    for name, g in groups:
        c = g["correct"].astype(float).to_numpy()
        y, p = g["label"].to_numpy(), g["pred_label"].to_numpy()
        lo, hi = bootstrap_ci(c, np.mean, n_boot, seed)
        rows.append({"slice": name, "n": len(g), "accuracy": float(c.mean()) if len(c) else float("nan"),
                     "ci_low": lo, "ci_high": hi, "balanced_accuracy": _balanced_accuracy(y, p),
                     "ece": ece(g["p_pred"], c), "mean_uncertainty": float(g["normalised_entropy"].mean()),
                     "referred_share": float(g["refer"].astype(float).mean()),
                     "flag": bool(name != "all" and len(g) >= min_n and hi < overall)})
    out = pd.DataFrame(rows)
    return out


def worst_slices(df: pd.DataFrame, slices: Sequence[str] = tuple(SLICES), min_n: int = 5, n_boot: int = 300) -> pd.DataFrame:
    """Every slice of every slicing with at least ``min_n`` cases, worst accuracy first."""
    parts = []
    for s in slices:
        if s not in df or df[s].isna().all():
            continue
        m = slice_metrics(df, s, n_boot=n_boot, min_n=min_n)
        m = m[(m["slice"] != "all") & (m["n"] >= min_n)]
        m.insert(0, "slicing", s)
        parts.append(m)
    if not parts:
        return pd.DataFrame(columns=["slicing", "slice", "n", "accuracy", "ci_low", "ci_high", "flag"])
    return pd.concat(parts, ignore_index=True).sort_values(["accuracy", "n"], ascending=[True, False]).reset_index(drop=True)


def reliability(df: pd.DataFrame, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data: per confidence bin, mean confidence, accuracy and count; and the ECE."""
    conf, correct = df["p_pred"].to_numpy(float), df["correct"].astype(float).to_numpy()
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = {"confidence": [], "accuracy": [], "count": [], "centre": []}
    for b in range(bins):
        sel = idx == b
        out["centre"].append(float((edges[b] + edges[b + 1]) / 2))
        out["count"].append(int(sel.sum()))
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else None)
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else None)
    out["ece"] = ece(conf, correct, bins)
    return out


def confusion(df: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    idx = {l: i for i, l in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), int)
    for y, p in zip(df["label"], df["pred_label"]):
        if y in idx and p in idx:
            m[idx[y], idx[p]] += 1
    return m


# ---- embedding map ----------------------------------------------------------------------------------------------------

def embedding_2d(df: pd.DataFrame, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the fused vectors: UMAP (umap-learn) when asked, installed and there are enough
    cases (>= 20), else PCA. -> (coordinates [n, 2], the method used)."""
    X = np.stack([np.asarray(v, np.float32) for v in df["fused"]]) if len(df) else np.zeros((0, 2), np.float32)
    if len(X) < 3:
        return np.zeros((len(X), 2)), "none"
    if method == "umap" and len(X) >= 20:
        try:
            import umap  # umap-learn (requirements-scale.txt)

            red = umap.UMAP(n_components=2, n_neighbors=min(15, len(X) - 1), random_state=seed, n_jobs=1)
            return red.fit_transform(X), "umap"
        except ImportError:
            pass
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(X), "pca"


# ---- error browser ----------------------------------------------------------------------------------------------------

def error_browser(df: pd.DataFrame, sort_by: str = "loss", only_wrong: bool = True, limit: int = 50) -> pd.DataFrame:
    d = df[df["label"].notna()]
    if only_wrong:
        d = d[~d["correct"].astype(bool)]
    key = "loss" if sort_by == "loss" else "normalised_entropy"
    cols = [c for c in ("case_id", "label", "pred_label", "p_pred", "loss", "normalised_entropy", "top_modality", "refer",
                        "evidence", "thumbnail") if c in d]
    return d.sort_values(key, ascending=False)[cols].head(limit).reset_index(drop=True)


# ---- explanations per class, shortcut finder ----------------------------------------------------------------------------

def class_aggregates(df: pd.DataFrame, by: str = "pred_label", top: int = 3) -> pd.DataFrame:
    """Per class: n, mean |Shapley| per modality, mean CAM lesion / context mass ratios, the most frequent
    top note words and top table features (each case's ``top`` first entries)."""
    rows = []
    for cls, g in df.groupby(by):
        r: dict[str, Any] = {"class": cls, "n": len(g)}
        for m in MODALITIES:
            col = f"shapley_{m}"
            if col in g and g[col].notna().any():
                r[f"|shapley| {m}"] = float(g[col].abs().mean())
        for col in ("cam_lesion_ratio", "cam_context_ratio"):
            if col in g and g[col].notna().any():
                r[col] = float(g[col].mean())
        for col, name in (("note_top_words", "top note words"), ("table_top_features", "top table features")):
            if col in g:
                c = Counter(w.lower() if col == "note_top_words" else w
                            for lst in g[col].dropna() for w in list(lst)[:top])
                r[name] = ", ".join(f"{w} ({n})" for w, n in c.most_common(5))
        rows.append(r)
    return pd.DataFrame(rows)


def non_clinical_classes(df: pd.DataFrame, by: str = "pred_label", lesion_ratio_below: float = 1.0) -> list[dict[str, Any]]:
    """Classes whose explanations lean on something other than the disease: the most frequent top table
    feature is a non-clinical one (site, device, ...), or the CAM puts less mass on the lesion than its area
    would (mean lesion mass ratio below ``lesion_ratio_below``; a ruler-like region or the surroundings)."""
    out = []
    for cls, g in df.groupby(by):
        reasons = []
        if "table_top_features" in g and g["table_top_features"].notna().any():
            c = Counter(list(lst)[0] for lst in g["table_top_features"].dropna() if len(lst))
            if c:
                feat, n = c.most_common(1)[0]
                if any(k in feat.lower() for k in NON_CLINICAL):
                    reasons.append(f"top table feature is '{feat}' in {n} of {len(g)} cases, a non-clinical feature")
        if "cam_lesion_ratio" in g and g["cam_lesion_ratio"].notna().any():
            ratio = float(g["cam_lesion_ratio"].mean())
            if ratio < lesion_ratio_below:
                reasons.append(f"Grad-CAM mass on the lesion is {ratio:.2f}× its area share: the map dwells off the lesion")
        if reasons:
            examples = g.sort_values("p_pred", ascending=False)["case_id"].head(4).tolist()
            out.append({"class": cls, "n": len(g), "reasons": reasons, "examples": examples})
    return out


def cam_clusters(df: pd.DataFrame, k: int = 4, seed: int = 0, examples: int = 4) -> list[dict[str, Any]]:
    """SpRAy-style shortcut finder: k-means (scikit-learn) on the downsized Grad-CAMs (each map scaled to
    unit sum), per cluster: size, mean map, classes, accuracy, mean lesion share and example cases."""
    d = df[df["cam_small"].notna()] if "cam_small" in df else df.iloc[0:0]
    if len(d) < max(k, 2):
        return []
    from sklearn.cluster import KMeans

    X = np.stack([np.asarray(v, np.float32) for v in d["cam_small"]])
    X = X / np.clip(X.sum(1, keepdims=True), 1e-9, None)
    k = min(k, len(d))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(X)
    side = int(round(np.sqrt(X.shape[1])))
    out = []
    for c in range(k):
        sel = km.labels_ == c
        g = d[sel]
        lesion = float(g["cam_lesion"].mean()) if "cam_lesion" in g and g["cam_lesion"].notna().any() else None
        ratio = float(g["cam_lesion_ratio"].mean()) if "cam_lesion_ratio" in g and g["cam_lesion_ratio"].notna().any() else None
        acc = float(g["correct"].astype(float).mean()) if "correct" in g and g["correct"].notna().any() else None
        out.append({"cluster": c, "n": int(sel.sum()), "mean_map": X[sel].mean(0).reshape(side, side),
                    "classes": dict(Counter(g["pred_label"]).most_common()), "accuracy": acc, "lesion_share": lesion,
                    "lesion_ratio": ratio, "off_lesion": ratio is not None and ratio < 1.0,
                    "examples": g["case_id"].head(examples).tolist()})
    return sorted(out, key=lambda r: -r["n"])


# ---- two packages side by side ------------------------------------------------------------------------------------------

def compare_packages(df: pd.DataFrame, a: str, b: str, slices: Sequence[str] = tuple(SLICES), min_n: int = 5
                     ) -> dict[str, Any]:
    """Where two packages of one results set disagree, and on which slices each is more accurate."""
    A, B = ok_rows(df, a).set_index("case_id"), ok_rows(df, b).set_index("case_id")
    common = A.index.intersection(B.index)
    A, B = A.loc[common], B.loc[common]
    disagree = A["pred_label"] != B["pred_label"]
    cases = pd.DataFrame({"case_id": common, "label": A["label"].to_numpy(), f"{a}": A["pred_label"].to_numpy(),
                          f"{b}": B["pred_label"].to_numpy(), f"p {a}": A["p_pred"].to_numpy(), f"p {b}": B["p_pred"].to_numpy()})
    cases = cases[disagree.to_numpy()].reset_index(drop=True)
    rows = []
    for s in slices:
        if s not in A or A[s].isna().all():
            continue
        for val, idx in A.groupby(s).groups.items():
            if len(idx) < min_n:
                continue
            ca, cb = A.loc[idx, "correct"].astype(float).mean(), B.loc[idx, "correct"].astype(float).mean()
            rows.append({"slicing": s, "slice": str(val), "n": len(idx), f"accuracy {a}": float(ca),
                         f"accuracy {b}": float(cb), "better": a if ca > cb else b if cb > ca else "tie"})
    labelled = A["label"].notna()
    return {"n": len(common), "disagreements": int(disagree.sum()),
            "disagreement_rate": float(disagree.mean()) if len(common) else float("nan"),
            "accuracy": {a: float(A.loc[labelled, "correct"].astype(float).mean()) if labelled.any() else None,
                         b: float(B.loc[labelled, "correct"].astype(float).mean()) if labelled.any() else None},
            "cases": cases, "slices": pd.DataFrame(rows)}
