"""The rows of a cohort run: case records (plain values a worker rebuilds a case from), the per-case
result both engines produce, and the one row per (case, package) made of it.

Light on purpose (no captum, no pyarrow): ``core.cohort.cli`` reads ``ROW_PARTS`` from here while the
parser is built."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from ..case import Case, CaseError
from ..errors import FusionLensError

if TYPE_CHECKING:
    from ..package import Package

ROW_PARTS = ("prediction", "modality", "cam_summary", "note_top", "table_top", "embedding")
MODALITIES = ("image", "note", "metadata", "spectrum")
TOP_K = 5
CAM_GRID = 8            # downsized CAM (CAM_GRID x CAM_GRID) kept for the shortcut finder
THUMB = 64              # thumbnail side in pixels (JPEG in the row)
SITE_KEYS = ("localization", "site", "anatom_site_general")


class CohortError(FusionLensError, ValueError):
    """A cohort run that can't start (bad flags, a results folder of another run); one sentence."""


# ---- case records: what a worker needs to rebuild a case (plain values, picklable for Ray) -----------------------

def item_record(item: Any) -> dict[str, Any]:
    """A ``core.data.CohortItem`` -> a plain record (paths as text, metadata and spectrum as JSON)."""
    spectrum = None if item.spectrum is None else json.dumps(np.asarray(item.spectrum, float).tolist())
    return {"case_id": str(item.case_id), "label": item.label, "split": item.split, "evidence": item.evidence,
            "image_path": str(item.image_path) if item.image_path else None,
            "mask_path": str(item.mask_path) if item.mask_path else None,
            "note": item.note, "metadata_json": json.dumps(item.metadata or {}, default=str), "spectrum_json": spectrum}


def record_case(rec: Mapping[str, Any]) -> Case:
    """A record (or a results row; pandas' NaN counts as empty) -> a validated Case."""
    text = lambda k: rec.get(k) if isinstance(rec.get(k), str) and rec.get(k) else None  # noqa: E731
    meta = json.loads(text("metadata_json") or "{}") or None
    spectrum = json.loads(text("spectrum_json")) if text("spectrum_json") else None
    return Case.from_inputs(image=text("image_path"), mask=text("mask_path"), note=text("note"), metadata=meta,
                            spectrum=spectrum, case_id=str(rec["case_id"]))


def one_sentence(e: BaseException) -> str:
    if isinstance(e, CaseError):
        text = " ".join(f"{k}: {v}" for k, v in e.errors.items())
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())[:300]
    return text[0].upper() + text[1:] if text else "This case could not be explained."


# ---- the per-case intermediate both engines produce, and the row made of it -----------------------------------------

@dataclass
class CaseResult:
    calibrated: np.ndarray
    uncertainty: dict[str, float]
    refer: bool
    diagnostics: dict[str, Any]
    present: dict[str, bool]
    target: int
    shapley: dict[str, Any] | None = None
    cam: np.ndarray | None = None
    note_words: list[dict[str, Any]] | None = None
    table_rows: list[dict[str, Any]] | None = None
    fused: np.ndarray | None = None


def _scalar(v: Any) -> float | None:
    try:
        a = np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=float)
    except (TypeError, ValueError):
        return None
    return float(a) if a.size == 1 and np.isfinite(a).all() else None


def _vector(v: Any) -> list[float] | None:
    try:
        a = np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return [float(x) for x in a] if 0 < a.size <= 16 and np.isfinite(a).all() else None


def _thumbnail(case: Case) -> bytes | None:
    if case.image is None:
        return None
    img = case.image.copy()
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def failed_row(rec: Mapping[str, Any], pkg_name: str, sha: str, error: str) -> dict[str, Any]:
    return {"case_id": rec["case_id"], "package": pkg_name, "package_sha256": sha, "split": rec.get("split"),
            "label": rec.get("label"), "evidence": rec.get("evidence"), "status": "failed", "error": error}


def make_row(pkg: Package, rec: Mapping[str, Any], case: Case, r: CaseResult, parts: Sequence[str],
             seconds: float) -> dict[str, Any]:
    labels = pkg.labels
    k = int(np.argmax(r.calibrated))
    true = rec.get("label")
    row: dict[str, Any] = {
        "case_id": rec["case_id"], "package": pkg.name, "package_sha256": pkg.sha256, "variant": pkg.variant,
        "split": rec.get("split"), "label": true, "evidence": rec.get("evidence"), "status": "ok", "error": None,
        "pred_label": labels[k], "pred_index": k, "target": r.target,
        "probabilities": [float(x) for x in r.calibrated], "p_pred": float(r.calibrated[k]),
        "total_uncertainty": float(r.uncertainty["predictive_entropy"]),
        "normalised_entropy": float(r.uncertainty["normalised_entropy"]),
        "aleatoric": float(r.uncertainty["aleatoric"]), "epistemic": float(r.uncertainty["epistemic"]),
        "refer": bool(r.refer), "calibration_temperature": pkg.temperature,
        "present": "+".join(m for m in MODALITIES if r.present.get(m)), "seconds": float(seconds),
        "note": case.note, "image_path": rec.get("image_path"), "mask_path": rec.get("mask_path"),
        "metadata_json": rec.get("metadata_json"), "spectrum_json": rec.get("spectrum_json"), "thumbnail": _thumbnail(case),
    }
    if true in labels:
        p_true = float(r.calibrated[labels.index(true)])
        row.update(p_true=p_true, correct=labels[k] == true, loss=float(-math.log(max(p_true, 1e-12))))
    meta = json.loads(rec.get("metadata_json") or "{}")
    row["age"] = _scalar(meta.get("age")) if meta.get("age") not in (None, "") else None
    row["sex"] = str(meta["sex"]) if meta.get("sex") not in (None, "") else None
    site = next((meta[s] for s in SITE_KEYS if meta.get(s) not in (None, "")), None)
    row["site"] = str(site) if site is not None else None
    # the variant's diagnostics, summarised
    d = r.diagnostics
    weights = d.get("modality_weights")
    if weights is not None:
        w = np.asarray(weights.detach() if torch.is_tensor(weights) else weights, float).ravel()
        for m, x in zip(pkg.modalities, w):
            row[f"weight_{m}"] = float(x)
    row["fusion_temperature"] = _scalar(d.get("temperature"))
    row["level_weights"] = _vector(d.get("level_weights")) or _vector(d.get("scale_weights"))
    gates = _vector(d.get("gates"))
    row["gate_spread"] = float(max(gates) - min(gates)) if gates and len(gates) > 1 else None
    row["gate_polarisation"] = _scalar(d.get("gate_polarisation"))
    if "modality" in parts and r.shapley:
        for m, v in r.shapley["values"].items():
            row[f"shapley_{m}"] = float(v)
        row["shapley_full"], row["shapley_none"] = float(r.shapley["full"]), float(r.shapley["none"])
        row["top_modality"] = r.shapley["top_modality"]
    if "cam_summary" in parts and r.cam is not None:
        import cv2

        small = cv2.resize(np.asarray(r.cam, np.float32), (CAM_GRID, CAM_GRID), interpolation=cv2.INTER_AREA)
        row["cam_small"] = small.ravel().astype(np.float16)
        if case.mask is not None:
            from ..explain.lesion_context import cam_shares
            from ..imaging import context_ring

            s = cam_shares(r.cam, case.mask, context_ring(case.mask))
            row.update(cam_lesion=s["lesion"], cam_context=s["context"], cam_background=s["background"],
                       cam_lesion_ratio=s["lesion"] / s["lesion_area"] if s["lesion_area"] > 0 else None,
                       cam_context_ratio=s["context"] / s["context_area"] if s["context_area"] > 0 else None,
                       cam_hit_lesion=s["pointing_game"]["hit_lesion"])
    if "note_top" in parts and r.note_words:
        words = sorted(r.note_words, key=lambda w: -abs(w["score"]))[:TOP_K]
        row["note_top_words"] = [w["text"] for w in words]
        row["note_top_scores"] = [float(w["score"]) for w in words]
    if "table_top" in parts and r.table_rows:
        feats = sorted(r.table_rows, key=lambda f: -abs(f["integrated_gradients"]))[:TOP_K]
        row["table_top_features"] = [f["name"] for f in feats]
        row["table_top_scores"] = [float(f["integrated_gradients"]) for f in feats]
        row["table_top_values"] = [None if f["value"] is None else str(f["value"]) for f in feats]
    if "embedding" in parts and r.fused is not None:
        row["fused"] = np.asarray(r.fused, np.float16)
    return row


def shapley_from_values(players: Sequence[str], v: Mapping[frozenset, float]) -> dict[str, Any]:
    """Exact Shapley values from every coalition's value (the formula of core.explain.modality)."""
    from ..explain.modality import exact_shapley

    values = exact_shapley(players, v)
    full = frozenset(players)
    return {"values": values, "full": v[full], "none": v[frozenset()],
            "top_modality": max(values, key=values.get) if values else None}
