"""Explanations measured against the generator's ground truth, each measure beside its chance level.

One implementation, used by ``scripts/faithfulness_table.py``, ``python -m core faithfulness``, the
known-answer controls (:mod:`core.explain.controls`) and the dashboard's per-case panel.

Per-map measures (pure numpy; a heatmap is any non-negative 2-D array, resized to the region):

* :func:`mass_ratio` -- relevance mass ratio: the map's mass share in a region divided by the region's
  area share. 1.0 is what a uniform map gets (chance); above 1 the map concentrates there.
* :func:`energy_pointing_game` -- the energy-based pointing game of Score-CAM (Wang et al. 2020): the
  share of the map's energy inside the region's bounding box, beside the box's area share (chance).
* :func:`pointing_hit` -- the pointing game: does the map's maximum lie in the region? A random point
  hits with probability = the region's area share (:func:`random_point_rate`).
* :func:`shapley_decisive` -- is the modality with the largest exact Shapley value the one the
  generator made decisive? Chance = 1 / number of present modalities (0 if the model lacks it).
* :func:`word_mass_share` -- share of a note attribution's absolute mass on the planted (decisive)
  words, beside the planted words' share of all words (chance); also the share of its positive mass
  (CLEVR-XAI's relevance mass accuracy).
* :func:`top_feature` -- the table feature with the largest absolute attribution.

:func:`cohort_faithfulness` explains every case of a cohort split for the predicted class *and* for
the true class, and reports correct and incorrect cases separately.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..data import CohortItem
from ..package import Package
from ..imaging import as_mask as _as_mask
from .lesion_context import _as_cam, _max_hits

#: where each kind of generator evidence lives
EVIDENCE_MODALITY = {"lesion": "image", "context": "image", "note": "note", "metadata": "metadata", "spectrum": "spectrum"}
KINDS = ("lesion", "context", "note", "metadata")
GROUPS = ("all", "correct", "incorrect")
TARGETS = ("predicted", "true")


# ----------------------------------------------------------------------------------------------------------------------
# per-map measures

def mass_ratio(cam: np.ndarray, region: np.ndarray) -> float:
    """(mass share in ``region``) / (area share of ``region``); 1.0 = uniform map. NaN for an all-zero map
    or an empty / full region (no area baseline to beat)."""
    r = _as_mask(region, "region")
    c = _as_cam(cam, r.shape)
    total, area = float(c.sum()), float(r.mean())
    if total <= 0 or area <= 0 or area >= 1:
        return float("nan")
    return float(c[r].sum() / total) / area


def bounding_box(region: np.ndarray) -> np.ndarray:
    """The region's axis-aligned bounding box as a mask (empty region -> empty mask)."""
    r = _as_mask(region, "region")
    out = np.zeros_like(r)
    if r.any():
        ys, xs = np.nonzero(r)
        out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    return out


def energy_pointing_game(cam: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Score-CAM's energy-based pointing game: {"energy": the map's mass share inside the region's
    bounding box, "chance": the box's area share (what a uniform map gets)}."""
    box = bounding_box(region)
    c = _as_cam(cam, box.shape)
    total = float(c.sum())
    return {"energy": float(c[box].sum() / total) if total > 0 and box.any() else float("nan"),
            "chance": float(box.mean())}


def pointing_hit(cam: np.ndarray, region: np.ndarray) -> bool | None:
    """Whether the map's maximum lies in ``region`` (tied maxima: at least half of them); None for an
    all-zero map. A uniformly random point hits with probability :func:`random_point_rate`."""
    r = _as_mask(region, "region")
    c = _as_cam(cam, r.shape)
    if float(c.max()) <= 0:
        return None
    return _max_hits(c, r)


def random_point_rate(region: np.ndarray) -> float:
    """The pointing game's chance level: the hit rate of a uniformly random point = the area share."""
    return float(_as_mask(region, "region").mean())


def shapley_decisive(values: dict[str, float], evidence_modality: str) -> dict[str, Any]:
    """{"hit": top modality by Shapley value == the decisive modality, "chance": 1/k when the decisive
    modality is one of the k present players, else 0}."""
    if not values:
        return {"hit": None, "chance": float("nan")}
    top = max(values, key=values.get)
    return {"hit": top == evidence_modality,
            "chance": 1.0 / len(values) if evidence_modality in values else 0.0, "top": top}


def word_mass_share(words: Sequence[dict[str, Any]], spans: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Share of the words' absolute attribution mass on words inside ``spans`` (character ranges of the
    planted words), and the chance level: the planted words' share of all words (a uniform attribution).

    ``positive_share``: the same share of the *positive* attribution only (the evidence for the explained
    class), the relevance mass accuracy of CLEVR-XAI (Arras et al. 2022; Quantus' ``RelevanceMassAccuracy``:
    "the ratio of positive attributions inside [the ground truth] to the sum of overall positive attributions").
    Its chance level is the same word share. The absolute share also counts evidence *against* the class as
    mass: words that move the logit down, and words whose pushes cancel, weigh as much as decisive ones."""
    if not words:
        return {"share": float("nan"), "chance": float("nan"), "positive_share": float("nan")}
    inside = np.array([any(s <= w["start"] and w["end"] <= e for s, e in spans) for w in words])
    score = np.array([float(w["score"]) for w in words])
    mass, pos = np.abs(score), np.clip(score, 0, None)
    total, total_pos = float(mass.sum()), float(pos.sum())
    return {"share": float(mass[inside].sum() / total) if total > 0 else float("nan"),
            "chance": float(inside.mean()),
            # no positive attribution at all (every word pushes against the class): nothing for the class lies on
            # the planted words, so 0 -- dropping such notes from the mean would flatter the share
            "positive_share": (float(pos[inside].sum() / total_pos) if total_pos > 0 else 0.0) if total > 0
            else float("nan")}


def top_feature(rows: Sequence[dict[str, Any]], key: str = "integrated_gradients") -> str | None:
    """Name of the table feature with the largest |attribution| (None when all are zero / missing)."""
    vals = [(abs(float(r[key])), r["name"]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    if not vals or max(v for v, _ in vals) <= 0:
        return None
    return max(vals)[1]


def map_measures(cam: np.ndarray, lesion: np.ndarray, context: np.ndarray | None = None) -> dict[str, Any]:
    """Every per-map measure of one heatmap for the lesion and (when given) the context region, each
    with its chance level: what the dashboard shows for one case."""
    out: dict[str, Any] = {
        "lesion_ratio": mass_ratio(cam, lesion), "lesion_hit": pointing_hit(cam, lesion),
        "lesion_hit_chance": random_point_rate(lesion)}
    e = energy_pointing_game(cam, lesion)
    out.update(lesion_energy=e["energy"], lesion_energy_chance=e["chance"])
    if context is not None:
        out.update(context_ratio=mass_ratio(cam, context), context_hit=pointing_hit(cam, context),
                   context_hit_chance=random_point_rate(context))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# one cohort

def _load_region(path: Path | None) -> np.ndarray | None:
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 127


def _case_rows(pkg: Package, it: CohortItem, target: int, tag: str, correct: bool, method: str,
               parts: Iterable[str], ig_steps: int = 24, layer: str = "last stage", note_method: str = "ig") -> dict[str, Any]:
    from ..data.cohorts.dermatology import decisive_spans
    from .attributions import table_attributions
    from .context import ExplainContext
    from .gradcam import image_cam
    from .image_maps import PIXEL_MAPS, image_map
    from .text_attr import note_words_attribution
    from ..imaging import context_ring
    from .modality import modality_shapley

    case = it.to_case(with_mask=True)
    ctx = ExplainContext(pkg, case, target=target)
    row: dict[str, Any] = {"case_id": it.case_id, "evidence": it.evidence, "correct": correct, "target": tag}
    parts = set(parts)
    if "image" in parts and ctx.has("image") and case.mask is not None:
        lesion = np.asarray(case.mask, bool)
        context = _load_region(it.context_path)
        if context is None or context.shape != lesion.shape:
            context = context_ring(lesion)   # no generator region (e.g. real data): the ring around the lesion
        if method in PIXEL_MAPS:   # a pixel-resolution map (core.explain.image_maps), not a CAM
            cam = image_map(ctx, method)
        else:
            cam = image_cam(ctx, method, layer=layer)
        m = map_measures(cam, lesion, context)
        row.update(m)
        if it.evidence == "lesion":
            row.update(decisive_hit=m["lesion_hit"], decisive_hit_chance=m["lesion_hit_chance"])
        elif it.evidence == "context":
            row.update(decisive_hit=m["context_hit"], decisive_hit_chance=m["context_hit_chance"])
        extras = ctx.raw_features("image").extras or {}
        if "lesion_gate" in extras:   # a dual-expert encoder's own lesion gate (from the context's encoding)
            row["lesion_gate"] = float(extras["lesion_gate"][0])
    if "shapley" in parts and it.evidence in EVIDENCE_MODALITY:
        sh = modality_shapley(ctx)
        d = shapley_decisive(sh["values"], EVIDENCE_MODALITY[it.evidence])
        row.update(shapley_hit=d["hit"], shapley_chance=d["chance"], shapley_top=d.get("top"))
    if "note" in parts and it.evidence == "note" and ctx.has("note"):
        spans = decisive_spans(it.note, it.label)
        if spans:
            w = word_mass_share(note_words_attribution(ctx, note_method, ig_steps), spans)
            row.update(note_mass=w["share"], note_mass_chance=w["chance"], note_mass_positive=w["positive_share"])
    planted = it.extras.get("planted_feature")
    if "table" in parts and it.evidence == "metadata" and planted and ctx.has("metadata"):
        ta = table_attributions(ctx, n_steps=max(ig_steps, 8), shapley_samples=0)
        feats = ta["features"]
        at_base = next((r["value"] == r["baseline"] for r in feats if r["name"] == planted), True)
        if not at_base:   # a feature at its baseline value gets no attribution from any baseline method
            row.update(table_top_hit=top_feature(feats) == planted, table_top_chance=1.0 / len(feats))
        else:
            row["table_at_baseline"] = True
    return row


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    v = [float(r[key]) for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return float(np.mean(v)) if v else float("nan")


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cohort measures of a set of case rows, each beside its chance level."""
    by = {k: [r for r in rows if r["evidence"] == k] for k in KINDS}
    image = by["lesion"] + by["context"]
    decided = image + by["note"] + by["metadata"]
    s: dict[str, Any] = {"n": len(rows), **{f"n_{k}_decided": len(by[k]) for k in KINDS}}
    # relevance mass ratio (chance 1.0) and the energy-based pointing game
    s["lesion_ratio_lesion_decided"] = _mean(by["lesion"], "lesion_ratio")
    s["context_ratio_context_decided"] = _mean(by["context"], "context_ratio")
    s["lesion_ratio_context_decided"] = _mean(by["context"], "lesion_ratio")
    s["ratio_chance"] = 1.0
    s["energy_pg_lesion_decided"] = _mean(by["lesion"], "lesion_energy")
    s["energy_pg_lesion_decided_chance"] = _mean(by["lesion"], "lesion_energy_chance")
    # pointing game against the decisive region, with a random point's hit rate
    s["pointing_game_decisive"] = _mean(image, "decisive_hit")
    s["pointing_game_decisive_chance"] = _mean(image, "decisive_hit_chance")
    for k in ("lesion", "context"):
        s[f"pointing_game_{k}_decided"] = _mean(by[k], "decisive_hit")
        s[f"pointing_game_{k}_decided_chance"] = _mean(by[k], "decisive_hit_chance")
    # decisive modality by exact Shapley: per kind, image pooled, balanced over image / note / metadata
    for k in KINDS:
        s[f"shapley_decisive_{k}"] = _mean(by[k], "shapley_hit")
        s[f"shapley_decisive_{k}_chance"] = _mean(by[k], "shapley_chance")
    groups = {"image": image, "note": by["note"], "metadata": by["metadata"]}
    per = {g: (_mean(v, "shapley_hit"), _mean(v, "shapley_chance")) for g, v in groups.items()}
    s["shapley_decisive_image"], s["shapley_decisive_image_chance"] = per["image"]
    ok = [g for g, (h, _) in per.items() if not math.isnan(h)]
    s["shapley_decisive_balanced"] = float(np.mean([per[g][0] for g in ok])) if ok else float("nan")
    s["shapley_decisive_balanced_chance"] = float(np.mean([per[g][1] for g in ok])) if ok else float("nan")
    s["shapley_decisive_kinds"] = ok
    s["shapley_decisive_pooled"] = _mean(decided, "shapley_hit")
    # planted words / feature (note- and metadata-decided cases)
    s["note_decisive_mass"] = _mean(by["note"], "note_mass")
    s["note_decisive_mass_chance"] = _mean(by["note"], "note_mass_chance")
    s["note_decisive_mass_positive"] = _mean(by["note"], "note_mass_positive")   # relevance mass accuracy
    s["table_top_is_planted"] = _mean(by["metadata"], "table_top_hit")
    s["table_top_is_planted_chance"] = _mean(by["metadata"], "table_top_chance")
    s["n_table_at_baseline"] = sum(bool(r.get("table_at_baseline")) for r in by["metadata"])
    # dual-expert models: does the lesion gate lean away from the lesion where the context decides?
    s["lesion_gate_lesion_decided"] = _mean(by["lesion"], "lesion_gate")
    s["lesion_gate_context_decided"] = _mean(by["context"], "lesion_gate")
    return s


def cohort_faithfulness(pkg: Package, items: Sequence[CohortItem], method: str = "gradcam",
                        parts: Iterable[str] = ("image", "shapley", "note", "table"),
                        targets: Sequence[str] = TARGETS, keep_rows: bool = False, ig_steps: int = 24,
                        layer: str = "last stage", note_method: str = "ig") -> dict[str, Any]:
    """Explain each case for the predicted class and for the true class; summarise every measure for all,
    correct and incorrect cases separately (``targets`` -> group -> :func:`summarise`). For correct cases
    both targets are the same class and share one explanation. ``ig_steps``: integrated-gradients steps
    for the note and table attributions (Gauss-Legendre). ``method`` / ``layer``: the CAM and the image
    encoder layer it reads (:data:`core.explain.gradcam.CAM_METHODS`, ``ImageEncoder.cam_layers``), or a
    pixel map of :data:`core.explain.image_maps.PIXEL_MAPS` (``layer`` unused). ``note_method``: the note's
    word attribution (:data:`core.explain.text_attr.NOTE_METHODS`; default the product's integrated gradients)."""
    from ..case import CaseError

    parts = tuple(parts)
    rows: list[dict[str, Any]] = []
    n_correct = n_cases = 0
    for it in items:
        if it.label not in pkg.labels:
            continue
        true = pkg.labels.index(it.label)
        try:
            pred = pkg.predict(it.to_case(with_mask=True))
        except CaseError:   # the case has none of this model's inputs (a note-only model, no note)
            continue
        p = int(pred.label_index)
        correct = p == true
        n_cases += 1
        n_correct += correct
        for tag in targets:
            if correct and tag != targets[0]:
                rows.append({**rows[-1], "target": tag})
                continue
            rows.append(_case_rows(pkg, it, p if tag == "predicted" else true, tag, correct, method, parts, ig_steps, layer,
                                   note_method))
    out: dict[str, Any] = {"n": n_cases, "method": method, "layer": layer, "note_method": note_method,
                           "accuracy": n_correct / n_cases if n_cases else float("nan")}
    for tag in targets:
        tr = [r for r in rows if r["target"] == tag]
        out[tag] = {"all": summarise(tr), "correct": summarise([r for r in tr if r["correct"]]),
                    "incorrect": summarise([r for r in tr if not r["correct"]])}
    if keep_rows:
        out["rows"] = rows
    return out
