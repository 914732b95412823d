"""The case report as data: every number, validated against ``schema.json``.

``build_report`` gathers what a reader of the report needs to judge one prediction: the case (its id and a
free "case reference", never patient name fields), a summary of the inputs, the model package (name,
variant, sha256, training data), the calibrated prediction with its uncertainty and referral advice (the
flag that applies, named by its signal: the committee vote where the suite's ``committee.json`` was fitted
for the package, as on the Prediction page and in ``python -m core predict``; else the package's own
entropy flag; ``core.committee.decide_referral``),
the fusion internals, the explanations (the heatmap's lesion/context shares, top attributions, modality
Shapley values, faithfulness), the variant comparison when one was run, a timestamp, the software
version and the research-use notice. Images are not part of the data; the HTML and PDF renderers draw
them from the case and the explanation.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import re
import unicodedata
from importlib import resources
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..case import Case
from ..errors import FusionLensError
from ..compare import Comparison, internals_summary, top_features, top_words
from ..package import RESEARCH_NOTICE, Package, Prediction, to_jsonable

SCHEMA_VERSION = "fusionlens-report/1"
MAX_REFERENCE = 80
_NAME_LIKE = re.compile(r"^(patient|first|last|given|family|sur)?_?name$|^patient$|^dob$|^birth", re.I)


class ReportError(FusionLensError, ValueError):
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


def clean_case_id(case_id: Any) -> str | None:
    """A case id as it may be printed: one line of printable text (no NUL, control or bidi-override
    characters), at most 80 characters. It is never used as a path; file names are built separately."""
    if case_id is None:
        return None
    text = "".join(ch if ch.isprintable() and unicodedata.category(ch) != "Cf" else " " for ch in str(case_id))
    text = " ".join(text.split())
    return (text[:MAX_REFERENCE - 1] + "…" if len(text) > MAX_REFERENCE else text) or None


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
    cfg = package.cfg
    metrics = {}
    try:
        m = json.loads((package.path / "metrics.json").read_text())
    except (OSError, ValueError):
        m = cfg.metrics
    for k in ("balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc"):
        v = m.get(k)
        if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
            metrics[k] = {"value": float(v["value"]), "ci95": v.get("ci95")}
    return {"name": package.name, "variant": package.variant, "cohort": cfg.cohort,
            "folder": package.path.name, "sha256": package.sha256, "modalities": package.modalities,
            "labels": package.labels, "training_data": cfg.training_description,
            "synthetic_training_data": cfg.synthetic,
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
                                "samples": int(ex.stability["samples"]), "method": ex.stability.get("method")}
    if ex.note:
        out["note"] = {"top_words": top_words(ex.note, top_k), "convergence_delta": ex.note["convergence_delta"],
                       "n_steps": ex.note["n_steps"], "baseline": ex.note.get("baseline")}
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


# ---- page 1 in plain language ------------------------------------------------------------------------------------------

INPUT_NAMES = {"image": "Image", "note": "Clinical note", "metadata": "Patient details (metadata)", "spectrum": "Spectrum"}
#: internal names of fusion diagnostics and uncertainty measures -> what a person reads
READABLE = {
    "modality_weights": "Weight the fusion gave each input", "metadata_feature_gates": "How much of each detail the fusion let through",
    "temperature": "Fusion temperature (lower: sharper choice between inputs)", "gate_polarisation": "How decisive the gates were (0-1)",
    "level_weights": "Weight of each encoder depth", "scale_weights": "Weight of each image scale", "rank_weights": "Weight of each rank",
    "gates": "Gate per input", "level_gates": "Gate per encoder depth", "attention_mass": "Share of attention per input",
    "expert_weights": "Weight of each expert", "image_lesion_gate": "Weight of the lesion stream (vs whole image)",
    "normalised_entropy": "Uncertainty (0 = certain, 1 = every class equally likely)",
    "predictive_entropy": "Total uncertainty (nats)", "aleatoric": "Uncertainty from the data itself (nats)",
    "epistemic": "Uncertainty of the model (nats)", "data_variance": "Predicted noise in the data",
    "tta_spread": "Spread across flipped / rotated copies of the image",
    "deletion_auc": "Deletion score (lower = explanation more faithful)",
    "insertion_auc": "Insertion score (higher = explanation more faithful)",
    "infidelity": "Infidelity (lower is better)", "max_sensitivity": "Sensitivity to tiny input changes (lower is better)",
    "spearman": "Rank correlation with the randomised-model heatmap", "passed": "Sanity check passed",
}
PER_INPUT = ("modality_weights", "gates", "attention_mass")     # diagnostics with one value per input
FAITHFULNESS_NAMES = {"note": "Note words", "table": "Patient details", "spectrum": "Spectrum bands",
                      "cam_randomisation": "Heatmap sanity check (model randomised)"}


def readable_name(key: str) -> str:
    if key in READABLE:
        return READABLE[key]
    if key.startswith("cam:"):
        return f"Heatmap ({key[4:]})"
    return FAITHFULNESS_NAMES.get(key, key.replace("_", " ").capitalize())


def readable_value(v: Any, digits: int = 2) -> str:
    """Rounded for a person: booleans as yes/no, numbers to ``digits`` decimals, mappings as 'a 0.42, b 0.10'."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.2g}" if 0 < abs(v) < 0.05 else f"{v:.{digits}f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {readable_value(x, digits)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(readable_value(x, digits) for x in v)
    return str(v)


def readable_rows(d: Mapping[str, Any] | None, skip: tuple[str, ...] = (), names: list[str] | None = None) -> list[list[str]]:
    """``names``: the model's inputs, to label per-input lists (weights shown as percentages)."""
    rows = []
    for k, v in (d or {}).items():
        if k in skip:
            continue
        numbers = isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v)
        if names and numbers and k in PER_INPUT and len(v) == len(names):
            pct = k in ("modality_weights", "attention_mass")
            rows.append([readable_name(k), ", ".join(f"{n} {x:.0%}" if pct else f"{n} {readable_value(float(x))}"
                                                     for n, x in zip(names, v))])
        elif names and numbers and k in PER_INPUT and len(v) == len(names) ** 2:
            pairs = [(a, b, x) for (a, b), x in zip(itertools.product(names, names), v) if a != b]
            rows.append([readable_name(k) + " (from → to)", ", ".join(f"{a} → {b} {x:.0%}" for a, b, x in pairs)])
        elif numbers and abs(sum(v) - 1) < 1e-3 and len(v) <= 8:
            rows.append([readable_name(k), ", ".join(f"{x:.0%}" for x in v)])
        else:
            rows.append([readable_name(k), readable_value(v)])
    return rows


def _points(p: float) -> str:
    return f"{abs(p) * 100:.0f} percentage point{'s' if round(abs(p) * 100) != 1 else ''}"


def uncertainty_words(pred: Mapping[str, Any], own_flag: bool = True) -> dict[str, str]:
    """``own_flag``: whether the model's own uncertainty raises the referral flag (else the committee vote does)."""
    u = float(pred["uncertainty"]["normalised_entropy"])
    t = float(pred["referral"]["threshold"])
    level = "Low" if u <= t / 2 else ("Moderate" if u <= t else "High")
    sd = float(pred["mc_std"].get(pred["label"], 0.0))
    where = (f"where cases above {t:.2f} are referred" if own_flag else
             f"where the model's own threshold is {t:.2f} (the referral flag comes from the committee vote)")
    return {"level": level.lower(),
            "sentence": f"{level} uncertainty: {u:.2f} on a 0-1 scale, {where}. "
                        f"Re-running the model {pred['mc_samples']} times with dropout moves the probability by about "
                        f"±{sd * 100:.0f} percentage points."}


def referral_words(ref: Mapping[str, Any]) -> str:
    """The referral advice of page 1, naming the signal that raised (or did not raise) the flag."""
    vote = ref.get("vote")
    if ref["signal"] == "committee_vote" and vote:
        head = "Advise re-check by a clinician" if ref["refer"] else "No referral flag"
        text = (f"{head}: {vote['disagreeing']} of the {vote['of']} other fusion variants of this suite predict another "
                f"class (the committee vote, this model's referral signal; the flag is raised from "
                f"{vote['min_disagreeing']}).")
        return text + ("" if ref["refer"] else " This is not a diagnosis.")
    text = ("Advise re-check by a clinician: the model is less certain about this case than its referral threshold "
            "allows." if ref["refer"] else "No referral flag: the model's uncertainty is below its referral threshold. "
            "This is not a diagnosis.")
    if ref.get("fallback"):
        text += f" The committee vote fitted for this model could not be used ({ref['fallback']})."
    return text


def _reasons_image(ex: Mapping[str, Any], label: str) -> list[str]:
    out = []
    lc = ex.get("lesion_context")
    if lc and lc.get("shares"):
        method, s = next(iter(lc["shares"].items()))
        out.append(f"The heatmap puts {s['lesion']:.0%} of its weight on the lesion, which covers {s.get('lesion_area', 0):.0%} "
                   f"of the image ({'more' if s['lesion'] > s.get('lesion_area', 0) else 'less'} than its size alone would give).")
        pg = lc.get("pointing_game", {}).get(method)
        if pg is not None:
            out.append("The hottest point of the heatmap lies " + ("inside" if pg else "outside") + " the lesion outline.")
        conf = lc.get("confidence", {})
        if "lesion_only" in conf and "context_only" in conf:
            out.append(f"With only the lesion kept sharp the probability of {label} is {conf['lesion_only']:.0%}; with only "
                       f"the skin around it, {conf['context_only']:.0%}.")
    return out


def _reasons_words(items: list[dict[str, Any]], label: str, what) -> list[str]:
    return [f"{what(it)} {'supports' if it['score'] > 0 else 'argues against'} {label}." for it in items[:3]]


def clinical_summary(report: Mapping[str, Any], explanation: Any | None) -> dict[str, Any]:
    """What page 1 carries, in words: prediction, uncertainty, referral advice, the three strongest
    reasons per input, provenance. Built from the report's own numbers (rounded for people)."""
    pred, model, ex = report["prediction"], report["model"], report.get("explanation") or {}
    label = pred["label"]
    ref = report["referral"]
    unc = uncertainty_words(pred, ref["signal"] != "committee_vote")
    refer = bool(ref["refer"])
    referral = referral_words(ref)
    shap = (ex.get("modality_shapley") or {}).get("values", {})
    reasons = []
    for m in report["case"]["inputs"]["used_by_model"]:
        lines: list[str] = []
        if m == "image":
            lines = _reasons_image(ex, label)
        elif m == "note" and ex.get("note"):
            seen: set[str] = set()
            words = [w for w in ex["note"]["top_words"] if any(ch.isalnum() for ch in w["text"])
                     and not (w["text"].lower() in seen or seen.add(w["text"].lower()))]   # each word once
            lines = _reasons_words(words, label, lambda w: f"The word “{w['text']}”")
        elif m == "metadata" and ex.get("table"):
            unit = {f["name"]: f.get("unit") for f in ex["table"]["features"]}
            lines = _reasons_words(ex["table"]["top_features"], label,
                                   lambda f, unit=unit: f"{f['name'].replace('_', ' ').capitalize()} = "
                                                        f"{readable_value(f['value'])}"
                                                        + (f" {unit.get(f['name'])}" if unit.get(f["name"]) else ""))
        elif m == "spectrum" and explanation is not None and getattr(explanation, "spectrum", None):
            sp = explanation.spectrum
            xs, sm = np.asarray(sp["wavelengths"], float), np.asarray(sp["smoothed"], float)
            from ..plots import attribution_bands

            bands = sorted(attribution_bands(xs, sm), key=lambda b: -float(np.abs(sm[(xs >= b[0]) & (xs <= b[1])]).sum()))[:3]
            for lo, hi in bands:
                sign = float(sm[(xs >= lo) & (xs <= hi)].sum())
                lines.append(f"The band {lo:.0f}-{hi:.0f} {'supports' if sign > 0 else 'argues against'} {label}.")
        present = pred["present"].get(m, False)
        contrib = shap.get(m)
        head = INPUT_NAMES.get(m, m)
        if not present:
            lines = ["Missing from this case; the model used its learned stand-in."]
        elif contrib is not None:
            head += (f": raised the probability of {label} by {_points(contrib)}" if contrib >= 0 else
                     f": lowered the probability of {label} by {_points(contrib)}")
        reasons.append({"input": m, "title": head, "reasons": lines[:3] or ["No explanation computed for this input."]})
    metrics = model.get("test_metrics", {})
    perf = []
    for k, name in (("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"), ("ece", "calibration error")):
        if k in metrics:
            ci = metrics[k].get("ci95")
            perf.append(f"{name} {metrics[k]['value']:.2f}" + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else ""))
    provenance = [f"Model {model['name']} (fusion variant {model['variant']}), inputs: {', '.join(model['modalities'])}; "
                  f"weights sha256 {model['sha256'][:12]}…, FusionLens {report['software']['version']}.",
                  "Trained on: " + (model["training_data"] or "not described by the package").rstrip(". ") + "."
                  + (" Synthetic demo data: the numbers show how the software works, not how well it diagnoses."
                     if model["synthetic_training_data"] else "")]
    if perf:
        provenance.append("On its held-out test split" + (f" ({model['test_n']} cases)" if model.get("test_n") else "")
                          + ": " + "; ".join(perf) + ".")
    return {"label": label, "probability": float(pred["probability"]),
            "headline": f"Predicted class {label}: calibrated probability {pred['probability']:.0%}",
            "uncertainty": unc, "refer": refer, "referral": referral, "referral_signal": ref["signal"],
            "referral_details": [x for x in (ref.get("sentence"), ref.get("secondary")) if x],
            "reasons": reasons, "provenance": provenance}


def mechanism_readings(package: Package, prediction: Prediction) -> list[dict[str, Any]]:
    """Plain-language readings of the fusion mechanisms (core.explain.mechanisms, issue 14), if the package
    carries their measurement; [] otherwise."""
    try:
        from ..explain.mechanisms import readings
    except ImportError:
        return []
    try:
        rows = readings(package, prediction)
    except (KeyError, TypeError, ValueError, AttributeError):
        return []
    return [{"label": str(r.get("label", r.get("name"))), "value": readable_value(r.get("value")) if r.get("value") is not None else "",
             "sentence": str(r.get("reading_sentence", "")), "trust": str(r.get("trust_level", ""))} for r in rows]


def build_report(package: Package, case: Case, prediction: Prediction | None = None, explanation: Any | None = None,
                 comparison: Comparison | None = None, case_reference: str | None = None,
                 now: _dt.datetime | None = None, referral: Any | None = None) -> dict[str, Any]:
    """The report of one case as a JSON-ready dict (validated against ``schema.json``). ``referral``: the
    ``core.committee.ReferralDecision`` already made for this prediction (the dashboard's); default: decided
    here (``decide_referral``: where committee.json was fitted for ``package``, its committee is loaded from the
    suite folder and votes)."""
    if prediction is None:
        prediction = explanation.prediction if explanation is not None else package.predict(case)
    if referral is None:
        from ..committee import decide_referral

        referral = decide_referral(package, case, prediction)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    report = {
        "schema": SCHEMA_VERSION,
        "generated_at": now.isoformat(timespec="seconds"),
        "software": {"name": "FusionLens", "version": __version__},
        "notice": RESEARCH_NOTICE,
        "case": {"case_id": clean_case_id(case.case_id), "case_reference": clean_reference(case_reference),
                 "inputs": inputs_summary(case, package)},
        "model": model_summary(package),
        "prediction": prediction_summary(prediction),
        "fusion_internals": internals_summary(prediction.diagnostics),
        "explanation": explanation_summary(explanation) if explanation is not None else None,
        "comparison": comparison_summary(comparison) if comparison is not None else None,
        "referral": referral.to_dict(),
    }
    report = to_jsonable(report)
    report["summary"] = to_jsonable(clinical_summary(report, explanation))
    report["readable"] = to_jsonable({
        "uncertainty": readable_rows(report["prediction"]["uncertainty"]),
        "fusion_internals": readable_rows(report["fusion_internals"], names=list(report["model"]["modalities"])),
        "mechanisms": mechanism_readings(package, prediction),
        "faithfulness": [[readable_name(k), "; ".join(f"{readable_name(kk)} {readable_value(vv)}" for kk, vv in v.items())]
                         for k, v in ((report["explanation"] or {}).get("faithfulness") or {}).items()]})
    validate_report(report)
    return report


def comparison_summary(comparison: Comparison) -> dict[str, Any]:
    d = comparison.to_dict()
    return {"target_label": d["target_label"], "columns": d["columns"], "agreement": d["agreement"],
            "ensemble": d["ensemble"], "explanation_agreement": d["explanation_agreement"]["mean"],
            "encoder_passes": d["encoder_passes"]}
