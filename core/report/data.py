"""The case report as data: every number, validated against ``schema.json``.

``build_report`` gathers what a reader of the report needs to judge one prediction: the case (its id and a
free "case reference", never patient name fields), a summary of the inputs, the model package (name,
variant, sha256, training data), the calibrated prediction with its uncertainty and referral advice,
the fusion internals, the explanations (Grad-CAM lesion/context shares, top attributions, modality
Shapley values, faithfulness), the variant comparison when one was run, a timestamp, the software
version and the research-use notice. Images are not part of the data; the HTML and PDF renderers draw
them from the case and the explanation.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from importlib import resources
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..case import Case
from ..compare import Comparison, internals_summary, top_features, top_words
from ..package import RESEARCH_NOTICE, Package, Prediction, to_jsonable

SCHEMA_VERSION = "fusionlens-report/1"
MAX_REFERENCE = 80
_NAME_LIKE = re.compile(r"^(patient|first|last|given|family|sur)?_?name$|^patient$|^dob$|^birth", re.I)


class ReportError(ValueError):
    """A report that can't be built from what was given (one sentence)."""


def report_schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("schema.json").read_text())


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow ``schema.json``."""
    import jsonschema

    jsonschema.validate(report, report_schema())


def clean_reference(reference: str | None) -> str | None:
    """The user's free case reference: one line of printable text, at most 80 characters."""
    if reference is None:
        return None
    if not isinstance(reference, str):
        raise ReportError("The case reference must be text.")
    text = " ".join("".join(ch if ch.isprintable() else (" " if ch.isspace() else "") for ch in reference).split())
    if len(text) > MAX_REFERENCE:
        raise ReportError(f"The case reference is {len(text)} characters long; keep it to {MAX_REFERENCE} "
                          "(a study or ticket id, never a patient name).")
    return text or None


def inputs_summary(case: Case, package: Package) -> dict[str, Any]:
    used = set(package.modalities)
    out: dict[str, Any] = {"used_by_model": sorted(used)}
    if case.image is not None:
        out["image"] = {"width": case.image.width, "height": case.image.height, "mode": case.image.mode,
                        "mask": "uploaded" if case.mask is not None else "none (automatic segmentation)"}
    out["note"] = None if not case.note else {"characters": len(case.note), "words": len(case.note.split()),
                                              "text": case.note}
    if case.metadata:
        meta = {k: v for k, v in case.metadata.items() if not _NAME_LIKE.match(str(k))}
        out["metadata"] = {str(k): (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                           for k, v in meta.items()}
    else:
        out["metadata"] = None
    if case.spectrum is not None:
        s = np.asarray(case.spectrum, float)
        x = s[:, 0] if s.ndim == 2 else np.arange(len(s))
        out["spectrum"] = {"points": int(len(s)), "x_min": float(x.min()), "x_max": float(x.max())}
    else:
        out["spectrum"] = None
    return out


def model_summary(package: Package) -> dict[str, Any]:
    td = package.config.get("training_data", {}) or {}
    metrics = {}
    try:
        m = json.loads((package.path / "metrics.json").read_text())
    except (OSError, ValueError):
        m = package.config.get("metrics", {}) or {}
    for k in ("balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc"):
        v = m.get(k)
        if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
            metrics[k] = {"value": float(v["value"]), "ci95": v.get("ci95")}
    return {"name": package.name, "variant": package.variant, "cohort": package.config.get("cohort"),
            "folder": package.path.name, "sha256": package.sha256, "modalities": package.modalities,
            "labels": package.labels, "training_data": str(td.get("description", "")),
            "synthetic_training_data": bool(td.get("synthetic", False)),
            "calibration_temperature": package.temperature, "referral_threshold": package.referral_threshold,
            "test_metrics": metrics, "test_n": m.get("n")}


def prediction_summary(pred: Prediction) -> dict[str, Any]:
    return {"label": pred.label, "probability": float(pred.calibrated[pred.label_index]),
            "calibrated_probabilities": dict(zip(pred.labels, map(float, pred.calibrated))),
            "uncalibrated_probabilities": dict(zip(pred.labels, map(float, pred.probabilities))),
            "mc_std": dict(zip(pred.labels, map(float, pred.mc_samples.std(0)))),
            "mc_samples": int(len(pred.mc_samples)),
            "uncertainty": {k: float(v) for k, v in pred.uncertainty.items()},
            "refer": bool(pred.refer), "referral": to_jsonable(pred.referral),
            "present": dict(pred.present), "warnings": list(pred.warnings)}


def explanation_summary(ex: Any, top_k: int = 8) -> dict[str, Any]:
    out: dict[str, Any] = {"target_label": ex.target_label, "skipped": dict(ex.skipped)}
    if ex.lesion_context:
        lc = ex.lesion_context
        out["lesion_context"] = {"mask_source": lc["mask_source"],
                                 "shares": {m: {k: v for k, v in s.items() if k in ("lesion", "context", "background",
                                                                                   "lesion_area", "context_area")}
                                            for m, s in lc["shares"].items()},
                                 "pointing_game": {m: s.get("pointing_game") for m, s in lc["shares"].items()},
                                 "confidence": dict(lc["confidence"])}
    if ex.stability:
        out["cam_stability"] = {"mean_pairwise_correlation": float(ex.stability["mean_pairwise_correlation"]),
                                "samples": int(ex.stability["samples"])}
    if ex.note:
        out["note"] = {"top_words": top_words(ex.note, top_k), "convergence_delta": ex.note["convergence_delta"],
                       "n_steps": ex.note["n_steps"]}
    if ex.table:
        out["table"] = {"features": [{"name": r["name"], "value": r["value"], "unit": r.get("unit"),
                                      "integrated_gradients": r["integrated_gradients"], "shapley": r["shapley"]}
                                     for r in ex.table["features"]],
                        "top_features": top_features(ex.table, top_k)}
    if ex.spectrum:
        from ..plots import attribution_bands

        out["spectrum"] = {"bands": [list(b) for b in attribution_bands(ex.spectrum["wavelengths"], ex.spectrum["smoothed"])],
                           "convergence_delta": ex.spectrum["convergence_delta"]}
    if ex.modality:
        out["modality_shapley"] = {"values": dict(ex.modality["values"]), "full": ex.modality["full"],
                                   "none": ex.modality["none"], "top_modality": ex.modality["top_modality"]}
    if ex.faithfulness:
        f = {}
        for k, v in ex.faithfulness.items():
            if isinstance(v, dict):
                f[k] = {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, bool))}  # scores, not curves
        out["faithfulness"] = f
    return to_jsonable(out)


def build_report(package: Package, case: Case, prediction: Prediction | None = None, explanation: Any | None = None,
                 comparison: Comparison | None = None, case_reference: str | None = None,
                 now: _dt.datetime | None = None) -> dict[str, Any]:
    """The report of one case as a JSON-ready dict (validated against ``schema.json``)."""
    if prediction is None:
        prediction = explanation.prediction if explanation is not None else package.predict(case)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    report = {
        "schema": SCHEMA_VERSION,
        "generated_at": now.isoformat(timespec="seconds"),
        "software": {"name": "FusionLens", "version": __version__},
        "notice": RESEARCH_NOTICE,
        "case": {"case_id": case.case_id, "case_reference": clean_reference(case_reference),
                 "inputs": inputs_summary(case, package)},
        "model": model_summary(package),
        "prediction": prediction_summary(prediction),
        "fusion_internals": internals_summary(prediction.diagnostics),
        "explanation": explanation_summary(explanation) if explanation is not None else None,
        "comparison": comparison_summary(comparison) if comparison is not None else None,
    }
    report = to_jsonable(report)
    validate_report(report)
    return report


def comparison_summary(comparison: Comparison) -> dict[str, Any]:
    d = comparison.to_dict()
    return {"target_label": d["target_label"], "columns": d["columns"], "agreement": d["agreement"],
            "ensemble": d["ensemble"], "explanation_agreement": d["explanation_agreement"]["mean"],
            "encoder_passes": d["encoder_passes"]}
