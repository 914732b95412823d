"""Fusion variants side by side: one case through several packages, and their cohort metrics.

``compare_variants`` runs each frozen encoder once per case and hands its output to every package
whose encoder has the same weights (``Package.encoder_fingerprint``): a suite's variants differ only in
their fusion, head and small table encoders, so only those run per variant. Above the columns it
reports whether the variants agree, the spread of their probabilities (an ensemble uncertainty) and
how far their explanations agree (rank correlation of attributions, IoU of the top heatmap regions).
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .case import Case, CaseError
from .encoders import ModalityFeatures
from .package import Package, PackageConfig, Prediction
from .package.stacked import predictions_many, run_many
from .explain.image_ig import plain_image_encoder
from .utils import to_jsonable

COMPARE_PARTS = ("cam", "lesion_context", "note", "table", "spectrum", "modality")
TOP_FRACTION = 0.2          # "top heatmap region": the hottest 20% of pixels


@dataclass
class VariantColumn:
    package: Package
    prediction: Prediction
    explanation: Any | None = None        # core.explain.Explanation for the common target, when explained

    def summary(self, top_k: int = 5) -> dict[str, Any]:
        p, ex = self.prediction, self.explanation
        out: dict[str, Any] = {
            "name": self.package.name, "variant": self.package.variant, "path": str(self.package.path),
            "sha256": self.package.sha256, "label": p.label,
            "probability": float(p.calibrated[p.label_index]),
            "probabilities": dict(zip(p.labels, map(float, p.calibrated))),
            "normalised_entropy": p.uncertainty["normalised_entropy"], "epistemic": p.uncertainty["epistemic"],
            "refer": bool(p.refer), "temperature": self.package.temperature,
            "internals": internals_summary(p.diagnostics),
        }
        if ex is not None:
            if ex.lesion_context:
                first = next(iter(ex.lesion_context["shares"].values()))
                out["cam_lesion_share"] = first.get("lesion")
                out["cam_context_share"] = first.get("context")
            out["top_words"] = top_words(ex.note, top_k)
            out["top_features"] = top_features(ex.table, top_k)
            if ex.modality:
                out["modality_shapley"] = dict(ex.modality["values"])
        return out


@dataclass
class Comparison:
    case_id: str | None
    columns: list[VariantColumn]
    target: int
    target_label: str
    agreement: dict[str, Any]
    ensemble: dict[str, Any]
    explanation_agreement: dict[str, Any]
    encoder_passes: dict[str, int]                       # modality -> encoder runs for the whole comparison
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # package name -> why it could not read this case

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "case_id": self.case_id, "target": self.target, "target_label": self.target_label,
            "columns": [c.summary() for c in self.columns], "agreement": self.agreement, "ensemble": self.ensemble,
            "explanation_agreement": self.explanation_agreement, "encoder_passes": self.encoder_passes,
            "timings": self.timings, "skipped": self.skipped})


# ---- helpers on one column ----------------------------------------------------------------------------------------

def internals_summary(diag: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar fusion internals worth a column: modality weights, temperature, gates, level weights."""
    out: dict[str, Any] = {}
    for k, v in diag.items():
        a = np.asarray(v) if isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, dict) and k in ("modality_weights", "metadata_feature_gates"):
            out[k] = {str(kk): float(vv) for kk, vv in v.items()}
        elif a is not None and a.dtype.kind in "fi" and a.size <= 16:
            out[k] = np.round(a.astype(float), 4).tolist()
    return out


def top_words(note: Mapping[str, Any] | None, k: int = 5) -> list[dict[str, Any]]:
    if not note:
        return []
    words = sorted(note["words"], key=lambda w: -abs(w["score"]))[:k]
    return [{"text": w["text"], "score": float(w["score"])} for w in words]


def top_features(table: Mapping[str, Any] | None, k: int = 5, method: str = "integrated_gradients") -> list[dict[str, Any]]:
    if not table:
        return []
    rows = sorted(table["features"], key=lambda r: -abs(r[method]))[:k]
    return [{"name": r["name"], "value": r["value"], "score": float(r[method])} for r in rows]


# ---- agreement measures ---------------------------------------------------------------------------------------------

def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation; None when either side is constant or shorter than 3."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size != b.size or a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def top_region(cam: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean mask of the hottest ``fraction`` of pixels."""
    cam = np.asarray(cam, float)
    k = max(1, int(round(fraction * cam.size)))
    thresh = np.partition(cam.ravel(), cam.size - k)[cam.size - k]
    return cam >= thresh


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def ensemble_summary(columns: Sequence[VariantColumn]) -> dict[str, Any]:
    """Spread of the calibrated probabilities across variants, read as an ensemble.

    ``disagreement`` = entropy of the mean distribution minus the mean entropy (the mutual information
    between the variant and the label, in nats): 0 when every variant gives the same distribution."""
    labels = columns[0].prediction.labels
    P = np.stack([c.prediction.calibrated for c in columns]).astype(float)
    mean = P.mean(0)
    ent = lambda p: float(-(p * np.log(np.clip(p, 1e-12, 1))).sum(-1))  # noqa: E731
    k = int(mean.argmax())
    return {"labels": labels, "mean_probabilities": mean.tolist(), "label": labels[k],
            "probability_of_label": float(mean[k]),
            "std_of_label_probability": float(P[:, k].std()),
            "range_of_label_probability": [float(P[:, k].min()), float(P[:, k].max())],
            "entropy_of_mean": ent(mean), "mean_entropy": float(np.mean([ent(p) for p in P])),
            "disagreement": max(0.0, ent(mean) - float(np.mean([ent(p) for p in P]))),
            "normalised_entropy_of_mean": ent(mean) / math.log(len(labels)) if len(labels) > 1 else 0.0}


def agreement_summary(columns: Sequence[VariantColumn]) -> dict[str, Any]:
    votes: dict[str, int] = {}
    for c in columns:
        votes[c.prediction.label] = votes.get(c.prediction.label, 0) + 1
    majority = max(votes, key=votes.get)
    return {"all_agree": len(votes) == 1, "votes": votes, "majority_label": majority,
            "majority_fraction": votes[majority] / len(columns),
            "referred": [c.package.name for c in columns if c.prediction.refer]}


def explanation_agreement(columns: Sequence[VariantColumn]) -> dict[str, Any]:
    """Pairwise agreement of the explanations (same target class for every column)."""
    pairs: list[dict[str, Any]] = []
    for a, b in itertools.combinations(range(len(columns)), 2):
        ea, eb = columns[a].explanation, columns[b].explanation
        if ea is None or eb is None:
            continue
        row: dict[str, Any] = {"a": columns[a].package.name, "b": columns[b].package.name}
        if ea.cams and eb.cams:
            m = next(iter(ea.cams))
            if m in eb.cams:
                row["cam_top_iou"] = iou(top_region(ea.cams[m]), top_region(eb.cams[m]))
                row["cam_spearman"] = spearman(np.ravel(ea.cams[m])[::7], np.ravel(eb.cams[m])[::7])
        if ea.note and eb.note:
            row["note_spearman"] = spearman([w["score"] for w in ea.note["words"]], [w["score"] for w in eb.note["words"]])
        if ea.table and eb.table:
            row["table_spearman"] = spearman([r["integrated_gradients"] for r in ea.table["features"]],
                                             [r["integrated_gradients"] for r in eb.table["features"]])
        if ea.spectrum and eb.spectrum:
            row["spectrum_spearman"] = spearman(ea.spectrum["smoothed"], eb.spectrum["smoothed"])
        if ea.modality and eb.modality:
            keys = sorted(set(ea.modality["values"]) & set(eb.modality["values"]))
            row["top_modality_same"] = ea.modality["top_modality"] == eb.modality["top_modality"]
            if len(keys) >= 3:
                row["modality_spearman"] = spearman([ea.modality["values"][k] for k in keys],
                                                    [eb.modality["values"][k] for k in keys])
        pairs.append(row)
    means: dict[str, float | None] = {}
    for key in ("cam_top_iou", "cam_spearman", "note_spearman", "table_spearman", "spectrum_spearman", "modality_spearman"):
        vals = [p[key] for p in pairs if p.get(key) is not None]
        if vals:
            means[key] = float(np.mean(vals))
    same = [p["top_modality_same"] for p in pairs if "top_modality_same" in p]
    if same:
        means["top_modality_same_fraction"] = float(np.mean(same))
    return {"pairs": pairs, "mean": means, "top_fraction": TOP_FRACTION}


# ---- the comparison ------------------------------------------------------------------------------------------------

class SharedEncoderCache:
    """Encoder outputs of one case, keyed by encoder fingerprint: each frozen encoder runs once."""

    def __init__(self, case: Case):
        self.case = case
        self._store: dict[str, ModalityFeatures] = {}
        self._prepared: dict[str, Any] = {}
        self.memo: dict[str, Any] = {}     # prepare_batch's memo: the case checked once per encoder configuration
        self.passes: dict[str, int] = {}
        self._maps: dict[str, list[torch.Tensor]] = {}   # plain image encoders: the stage maps of their output

    def stage_maps_for(self, pkg: Package) -> list[torch.Tensor] | None:
        """The stage maps the cached image features of ``pkg`` were made from (a plain image encoder), for its
        explanation's image parts (``explain_case(stage_maps=...)``); None otherwise."""
        key = pkg.encoder_fingerprint("image") if "image" in pkg.modalities else None
        return None if key is None else self._maps.get(key)

    def _dual_streams(self, pkg: Package) -> dict[str, torch.Tensor] | None:
        """A dual-expert image encoder's frozen backbone outputs for this case, cached like any frozen
        encoder's: the global stream is the plain image encoder of the same weights (the same pixels),
        the lesion stream is keyed by the backbone, the crop margin and the fill outside the lesion
        (``lesion_mask_fill``). Only its gate runs per package.
        None when the backbone's weights are stored in the package (its outputs are that package's own)
        or the case has no image."""
        enc = pkg.model.encoders["image"]
        if not enc.backbone.external_weights:
            return None
        image = self._dual_input(enc)
        if image is None:
            return None
        back = json.dumps({"modality": "image", "encoder": {"type": "image", "frozen": True, **enc.backbone.config()},
                           "weights": "external"}, sort_keys=True)
        out: dict[str, torch.Tensor] = {}
        for prefix, key, px, module in (("g_", back, "pixels", enc.backbone),
                                        ("l_", json.dumps({"local": back, "margin": enc.margin, "mask": self.case.mask is not None,
                                                          "fill": getattr(enc, "lesion_mask_fill", "none")}),
                                         "local_pixels", enc.local_backbone)):
            if key not in self._store:
                with torch.no_grad():
                    self._store[key] = module(image[px])
                self.passes["image"] = self.passes.get("image", 0) + 1
            f = self._store[key]
            out.update({f"{prefix}pooled": f.pooled, f"{prefix}l0": f.levels[0], f"{prefix}l1": f.levels[1],
                        f"{prefix}l2": f.levels[2], f"{prefix}tokens": f.tokens})
        out["crop_box"] = image["crop_box"]
        return out

    def _dual_input(self, enc: Any) -> dict[str, torch.Tensor] | None:
        """A dual-expert encoder's prepared image input (lesion segmentation, crop), only the image and
        once per encoder configuration (two dual-expert variants of a suite cut the same crop)."""
        key = json.dumps(enc.config(), sort_keys=True, default=str)
        if key not in self._prepared:
            v, _ = enc.case_input(self.case)
            self._prepared[key] = None if v is None else enc.prepare([v])
        return self._prepared[key]

    def features_for(self, pkg: Package) -> dict[str, ModalityFeatures]:
        out: dict[str, ModalityFeatures] = {}
        for m in pkg.modalities:
            key = pkg.encoder_fingerprint(m)
            if key is None and pkg.model.encoders[m].dual_expert:
                streams = self._dual_streams(pkg)
                if streams is not None:
                    with torch.no_grad():
                        out[m] = pkg.model.encoders[m](**streams)   # the gate only
                continue
            if key is None:
                continue
            if key not in self._store:
                # only this modality is preprocessed (a dual expert's image, say, is not cut again)
                inputs, _, _ = pkg.prepare([self.case], skip=frozenset(pkg.modalities) - {m})
                if inputs.get(m) is None:
                    continue
                enc = pkg.model.encoders[m]
                with torch.no_grad():
                    if m == "image" and plain_image_encoder(enc):   # as its forward, keeping the stage maps
                        self._maps[key] = list(enc._stages(inputs[m]["pixels"]))
                        self._store[key] = enc.from_stages(self._maps[key])
                    else:
                        self._store[key] = enc(**inputs[m])
                self.passes[m] = self.passes.get(m, 0) + 1
            out[m] = self._store[key]
        return out


def compare_variants(packages: Sequence[Package], case: Case, explain: bool = True,
                     parts: Sequence[str] = COMPARE_PARTS, target: int | str | None = None,
                     mc_samples: int | None = None, share_encoders: bool = True, reuse: Sequence[Any] = (),
                     **explain_options: Any) -> Comparison:
    """Run ``case`` through every package (same label set required) and compare them.

    The explanations of every column are for one common target: ``target`` if given, else the class
    with the highest mean calibrated probability across the variants, so attributions are comparable.
    ``share_encoders=False`` re-encodes the case per variant (the naive way, kept for benchmarks).
    ``reuse``: explanations of this case already computed (e.g. the dashboard's default explanation);
    one made by a column's package for the common target with default options, holding every part
    asked for, stands in for that column's explanation."""
    from .explain import explain_case

    if not packages:
        raise ValueError("Pick at least one model to compare.")
    labels = packages[0].labels
    for p in packages[1:]:
        if p.labels != labels:
            raise ValueError(f"'{p.name}' predicts different classes from '{packages[0].name}'; "
                             "compare models of the same cohort.")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    usable = []
    for p in packages:  # a package none of whose inputs the case has (a note-only model, no note) sits out
        if any(case.present().get(m) for m in p.modalities):
            usable.append(p)
        else:
            skipped[p.name] = f"the case has none of its inputs ({', '.join(p.modalities)})."
    if not usable:
        raise CaseError({"case": "The case has none of the inputs these models use; add at least one."})
    packages = usable
    cache = SharedEncoderCache(case)
    feats = [cache.features_for(p) if share_encoders else {} for p in packages]
    timings["shared_encoders"] = round(time.perf_counter() - t0, 4)
    t1 = time.perf_counter()
    if share_encoders:  # the case checked and prepared once per encoder configuration, like heads stacked
        runs = run_many(packages, [case], [f or None for f in feats], mc_samples, 0, cache.memo)
        columns = [VariantColumn(p, pred[0]) for p, pred in zip(packages, predictions_many(packages, [case], runs))]
    else:
        columns = [VariantColumn(p, p.predict(case, mc_samples, 0)) for p in packages]
    timings["predictions"] = round(time.perf_counter() - t1, 4)
    ens = ensemble_summary(columns)
    if isinstance(target, str):
        if target not in labels:
            raise ValueError(f"unknown class '{target}'; the models' classes are: {', '.join(labels)}.")
        target = labels.index(target)
    tgt = int(np.argmax(ens["mean_probabilities"])) if target is None else int(target)
    if explain:
        # the columns compare integrated gradients (top features, rank agreement); the table's Shapley
        # sampling (the slowest part of a column) is not shown there, so it is skipped unless asked for
        explain_options.setdefault("shapley_samples", 0)
        if "cam" in parts and "cam_methods" not in explain_options:
            from .explain.gradcam import default_cam

            # each package's default heatmap may differ (the dermatology suite's plain packages draw median IG, its
            # dual experts Grad-CAM): then every column draws last-stage Grad-CAM, so the maps and their agreement
            # compare one method
            if len({default_cam(p) for p in packages if "image" in p.modalities}) > 1:
                explain_options["cam_methods"], explain_options["cam_layer"] = ("gradcam",), "last stage"
        t2 = time.perf_counter()
        for col, f in zip(columns, feats):
            col.explanation = _reusable(reuse, col.package, tgt, parts, mc_samples, explain_options)
            if col.explanation is None:
                col.explanation = explain_case(col.package, case, target=tgt, parts=parts, mc_samples=mc_samples,
                                               features=f or None, stage_maps=cache.stage_maps_for(col.package),
                                               **explain_options)
        timings["explanations"] = round(time.perf_counter() - t2, 4)
    passes = dict(cache.passes)
    present = case.present()
    for p, f in zip(packages, feats):  # encoders that run inside each package: predict + explain context
        for m in p.modalities:
            if present.get(m) and m not in f:
                passes[m] = passes.get(m, 0) + (2 if explain else 1)
    timings["total"] = round(time.perf_counter() - t0, 4)
    return Comparison(case.case_id, columns, tgt, labels[tgt], agreement_summary(columns), ens,
                      explanation_agreement(columns) if explain else {"pairs": [], "mean": {}}, passes, timings, skipped)


_PART_FIELDS = {"cam": "cams", "lesion_context": "lesion_context", "stability": "stability", "note": "note", "table": "table",
                "spectrum": "spectrum", "modality": "modality"}


def _reusable(done: Sequence[Any], pkg: Package, target: int, parts: Sequence[str], mc_samples: int | None,
              options: Mapping[str, Any]) -> Any | None:
    if mc_samples is not None or set(options) - {"shapley_samples"} or not set(parts) <= set(_PART_FIELDS):
        return None
    for ex in done:
        if ex is None or ex.target != target or ex.prediction.model.get("path") != str(pkg.path) \
                or ex.prediction.model.get("sha256") != pkg.sha256:
            continue
        if all(getattr(ex, _PART_FIELDS[p]) or p in ex.skipped for p in parts):
            return ex
    return None


# ---- the cohort view --------------------------------------------------------------------------------------------------

COHORT_METRICS = ("balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc")


def cohort_metrics(package_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per package from its ``metrics.json`` (values and 95% intervals) and config facts;
    packages without metrics give a row with only their name."""
    rows = []
    for d in package_dirs:
        d = Path(d)
        try:
            cfg = PackageConfig.from_dict(json.loads((d / "config.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        try:
            m = json.loads((d / "metrics.json").read_text())
        except (OSError, ValueError):
            m = cfg.metrics
        row: dict[str, Any] = {"model": d.name, "variant": cfg.variant, "modalities": list(cfg.modalities),
                               "n_test": m.get("n")}
        for k in COHORT_METRICS:
            v = m.get(k)
            if isinstance(v, dict):
                row[k] = v.get("value")
                row[f"{k}_ci95"] = v.get("ci95")
            elif isinstance(v, (int, float)):
                row[k] = float(v)
        row.update(_faithfulness_columns(m.get("faithfulness") or {}))
        rows.append(row)
    return rows


# the fair cohort measures (core/explain/cohort.py), each with its chance level where it has one
FAITHFULNESS_COLUMNS = ("lesion_ratio_lesion_decided", "context_ratio_context_decided", "pointing_game_decisive",
                        "shapley_decisive_balanced")


def _faithfulness_columns(f: Mapping[str, Any]) -> dict[str, float]:
    """``faithfulness_*`` columns from a metrics.json entry written by scripts/faithfulness_table.py: the
    measures over all explained cases for the predicted class, each beside its chance level. Entries in
    the format before issue 15 (mass shares without their area baseline, Shapley only on image cases)
    are not shown: they flatter the model."""
    a = (f.get("predicted") or {}).get("all") or {}
    out: dict[str, float] = {}
    for k in FAITHFULNESS_COLUMNS:
        v = a.get(k)
        if isinstance(v, (int, float)) and v == v:
            # the map measures of this record are last-stage Grad-CAM's (faithfulness_table's PRODUCT_METHOD), which
            # is no longer every suite's default heatmap: the column says so
            name = f"faithfulness_{'' if k.startswith('shapley') else 'gradcam_'}{k}"
            out[name] = float(v)
            chance = a.get(f"{k}_chance", a.get("ratio_chance") if "ratio" in k else None)
            if isinstance(chance, (int, float)) and chance == chance:
                out[f"{name}_chance"] = float(chance)
    return out

