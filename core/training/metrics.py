"""Evaluation metrics with bootstrap 95% intervals, and the two figures a package ships."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score

from ..uncertainty import expected_calibration_error, reliability_bins

REFER_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.0, 0.55, 0.05))


def _auroc(y: np.ndarray, prob: np.ndarray) -> float:
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    # macro one-vs-rest over the classes present in this sample
    return float(np.mean([roc_auc_score(y == k, prob[:, k]) for k in present]))


def _error_auroc(correct: np.ndarray, unc: np.ndarray) -> float:
    """How well the uncertainty ranks wrong predictions above right ones (0.5 = no better than chance)."""
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(~correct, unc))


def accuracy_vs_referred(correct: np.ndarray, unc: np.ndarray, fractions: Sequence[float] = REFER_FRACTIONS) -> list[float]:
    """Accuracy on the cases kept when the given fraction with the highest uncertainty is referred."""
    order = np.argsort(unc, kind="stable")
    out = []
    for f in fractions:
        keep = order[: max(1, int(round(len(order) * (1 - f))))]
        out.append(float(correct[keep].mean()))
    return out


def _bootstrap(fn: Callable[[np.ndarray], float], n: int, n_boot: int, rng: np.random.Generator) -> list[float]:
    vals = []
    for _ in range(n_boot):
        v = fn(rng.integers(0, n, n))
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 4):
        return [float("nan"), float("nan")]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def classification_metrics(y: np.ndarray, prob_cal: np.ndarray, prob_uncal: np.ndarray, uncertainty: np.ndarray,
                           labels: Sequence[str], n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Every number the README table and the package's metrics.json report, each scalar as
    ``{"value": v, "ci95": [lo, hi]}`` (percentile bootstrap over cases)."""
    y = np.asarray(y)
    pred = prob_cal.argmax(1)
    correct = pred == y
    k = np.arange(len(labels))
    scalars: dict[str, Callable[[np.ndarray], float]] = {
        "accuracy": lambda i: float(correct[i].mean()),
        "balanced_accuracy": lambda i: float(balanced_accuracy_score(y[i], pred[i])),
        "macro_f1": lambda i: float(f1_score(y[i], pred[i], labels=k, average="macro", zero_division=0)),
        "auroc": lambda i: _auroc(y[i], prob_cal[i]),
        "ece_before_calibration": lambda i: expected_calibration_error(prob_uncal[i], y[i]),
        "ece": lambda i: expected_calibration_error(prob_cal[i], y[i]),
        "error_detection_auroc": lambda i: _error_auroc(correct[i], uncertainty[i]),
    }
    rng = np.random.default_rng(seed)
    n = len(y)
    everything = np.arange(n)
    out: dict[str, Any] = {"n": int(n)}
    for name, fn in scalars.items():
        out[name] = {"value": fn(everything), "ci95": _bootstrap(fn, n, n_boot, rng)}
    sens = recall_score(y, pred, labels=k, average=None, zero_division=0)
    out["sensitivity"] = {lab: float(s) for lab, s in zip(labels, sens)}
    out["support"] = {lab: int((y == i).sum()) for i, lab in enumerate(labels)}
    out["accuracy_vs_referred"] = {
        "fractions": list(REFER_FRACTIONS), "accuracy": accuracy_vs_referred(correct, uncertainty),
        # the normalised-entropy cut-off that refers each fraction (places a new case on the curve)
        "thresholds": [float(np.quantile(uncertainty, 1 - f)) if f > 0 else float(np.max(uncertainty)) for f in REFER_FRACTIONS]}
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=k).tolist()
    return out


def save_figures(metrics: dict[str, Any], prob_cal: np.ndarray, prob_uncal: np.ndarray, y: np.ndarray,
                 labels: Sequence[str], folder: Path) -> list[str]:
    """confusion_matrix.png and reliability.png (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    norm = cm / cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Test confusion matrix (counts; colour = row share)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for probs, name in ((prob_uncal, f"before (ECE {metrics['ece_before_calibration']['value']:.3f})"),
                        (prob_cal, f"after (ECE {metrics['ece']['value']:.3f})")):
        conf, acc, count = reliability_bins(probs, y, 10)
        ok = count > 0
        ax.plot(conf[ok], acc[ok], marker="o", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (test split)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "reliability.png")
    plt.close(fig)
    return ["confusion_matrix.png", "reliability.png"]
