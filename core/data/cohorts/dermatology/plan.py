"""Plan: HAM10000's classes as the generator uses them, which modality carries a case's decisive
evidence and how each modality is drawn; the plan of a known-answer control case."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...ham10000_schema import COUNTS as HAM_COUNTS
from ...ham10000_schema import LABEL_DESCRIPTIONS, LABELS, SCHEMA, SITES

__all__ = ["GENERATOR_VERSION", "LABELS", "HAM_COUNTS", "LABEL_DESCRIPTIONS", "SITES", "EVIDENCE", "DEMO_KINDS",
           "DERM_SCHEMA", "DESCRIPTION", "SINGLE_SOURCES", "CONTROL_SITE", "CONTROL_PLANTED_FEATURE", "label_counts",
           "sample_labels"]

GENERATOR_VERSION = "dermatology-6"

EVIDENCE = ("lesion", "context", "note", "metadata")
DEMO_KINDS = ("lesion", "context", "note", "metadata", "missing-note", "ambiguous")

#: the metadata schema (HAM10000's, so a model trained on this cohort reads HAM10000 cases and vice versa)
DERM_SCHEMA: list[dict[str, Any]] = SCHEMA

DESCRIPTION = (
    "Synthetic demo data: a generated dermatology cohort of dermoscopy-like images, clinical notes and "
    "HAM10000-style metadata (age, sex, site) over HAM10000's seven classes and long-tail frequencies. "
    "No real patients. Each case records which modality the generator made decisive (the lesion, its "
    "surroundings, the note or the metadata; some cases none), with lesion and context-ring masks, so "
    "explanations can be checked against ground truth. Not for clinical use.")


# P(evidence | class): lesion, context, note, metadata, none (ambiguous)
_EVIDENCE_P: dict[str, tuple[float, float, float, float, float]] = {
    "akiec": (0.32, 0.20, 0.26, 0.12, 0.10),
    "bcc": (0.36, 0.18, 0.28, 0.08, 0.10),
    "bkl": (0.34, 0.20, 0.28, 0.08, 0.10),
    "df": (0.44, 0.14, 0.20, 0.12, 0.10),
    "mel": (0.34, 0.18, 0.30, 0.08, 0.10),
    "nv": (0.34, 0.16, 0.24, 0.16, 0.10),
    "vasc": (0.44, 0.14, 0.20, 0.12, 0.10),
}
# lookalikes: an undecisive lesion or a misleading note borrows one of these classes' hallmarks
_CONFUSERS: dict[str, tuple[str, ...]] = {
    "akiec": ("bcc", "bkl"), "bcc": ("akiec", "mel", "df"), "bkl": ("mel", "akiec", "nv"),
    "df": ("nv", "bcc"), "mel": ("nv", "bkl", "nv"), "nv": ("mel", "df", "bkl"), "vasc": ("mel", "bcc", "df")}
# P(an undecisive lesion is pigmented rather than pink): a weak, realistic hint
_PIGMENTED_P = {"akiec": 0.25, "bcc": 0.3, "bkl": 0.8, "df": 0.6, "mel": 0.88, "nv": 0.95, "vasc": 0.15}
_P_LESION_LOOKALIKE = 0.28          # undecisive lesion drawn with a confuser's hallmarks
_P_CONTEXT_NOISE = 0.08             # undecisive context still shows some class's cue, weakly
_NOTE_KINDS_P = {"missing": 0.28, "metadata": 0.22, "vague": 0.25, "weak": 0.18, "misleading": 0.07}


@dataclass
class _Plan:
    label: str
    evidence: str | None
    lesion_look: str                 # a class, or "generic"
    lesion_strength: float
    pigmented: bool
    context_cue: str | None          # class whose surroundings are drawn; None = plain skin
    context_strength: float
    note_kind: str                   # decisive / weak / vague / metadata / misleading / missing
    note_class: str                  # class the note speaks for (a confuser when misleading)
    metadata_kind: str               # prototype / typical


def label_counts(n: int) -> dict[str, int]:
    """HAM10000 proportions as exact counts for ``n`` (largest remainder); every class keeps at least
    min(3, n // 7) cases so small cohorts still have each class in each split."""
    total = sum(HAM_COUNTS.values())
    raw = {k: n * v / total for k, v in HAM_COUNTS.items()}
    counts = {k: int(math.floor(x)) for k, x in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    floor = min(3, n // len(LABELS))
    for k in LABELS:
        if counts[k] < floor:
            counts["nv"] -= floor - counts[k]
            counts[k] = floor
    return {k: counts[k] for k in LABELS}


def sample_labels(n: int, seed: int = 0) -> list[str]:
    """The label of every case, separable from drawing the cases (cheap to test on large ``n``)."""
    counts = label_counts(n)
    labels = np.array([k for k in LABELS for _ in range(counts[k])])
    return list(np.random.default_rng([seed, n, 7919]).permutation(labels))


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _plan(rng: np.random.Generator, label: str) -> _Plan:
    evidence = _pick(rng, dict(zip((*EVIDENCE, "none"), _EVIDENCE_P[label])))
    ev = None if evidence == "none" else evidence
    # lesion: hallmarks of the class when decisive; otherwise generic or a lookalike's hallmarks
    if ev == "lesion":
        look, strength = label, float(rng.uniform(0.55, 1.0))
    elif rng.random() < _P_LESION_LOOKALIKE:
        look, strength = str(rng.choice(_CONFUSERS[label])), float(rng.uniform(0.35, 0.75))
    else:
        look, strength = "generic", 0.0
    pigmented = bool(rng.random() < _PIGMENTED_P[label])
    # context: the class's surroundings when decisive; otherwise plain skin, sometimes a weak random cue
    if ev == "context":
        cue, cstrength = label, float(rng.uniform(0.6, 1.0))
    elif rng.random() < _P_CONTEXT_NOISE:
        cue, cstrength = str(rng.choice(LABELS)), float(rng.uniform(0.25, 0.55))
    else:
        cue, cstrength = None, 0.0
    # note
    if ev == "note":
        note_kind, note_class = "decisive", label
    else:
        kinds = dict(_NOTE_KINDS_P)
        if ev == "metadata":
            kinds.pop("metadata")  # keep metadata-decided cases' evidence out of the text
        note_kind = _pick(rng, kinds)
        note_class = str(rng.choice(_CONFUSERS[label])) if note_kind == "misleading" else label
    return _Plan(label, ev, look, strength, pigmented, cue, cstrength, note_kind, note_class,
                 "prototype" if ev == "metadata" else "typical")


#: sources a control cohort can put the label in (``generate_dermatology(single_source=...)``)
SINGLE_SOURCES = ("lesion", "context", "note", "metadata")
#: metadata-only controls plant the label in one feature: the site (one site per class); age and sex
#: come from a label-independent decoy class
CONTROL_SITE = {"akiec": "scalp", "bcc": "ear", "bkl": "chest", "df": "lower extremity", "mel": "back",
                "nv": "abdomen", "vasc": "genital"}
CONTROL_PLANTED_FEATURE = "localization"


def _single_source_plan(rng: np.random.Generator, label: str, source: str) -> tuple[_Plan, str]:
    """A plan in which only ``source`` depends on the label; every other source is drawn for decoy
    classes picked uniformly at random, independently of the label (so an accurate model must use
    ``source``). Returns the plan and the decoy class for the metadata."""
    if source not in SINGLE_SOURCES:
        raise ValueError(f"single_source must be one of {', '.join(SINGLE_SOURCES)}, not {source!r}.")
    d_lesion, d_context, d_note, d_meta = (str(c) for c in rng.choice(LABELS, size=4))
    if source == "lesion":
        look, strength, pig = label, float(rng.uniform(0.7, 1.0)), bool(rng.random() < _PIGMENTED_P[label])
    elif rng.random() < 0.5:   # a decoy's hallmarks: the lesion is not blank, only uninformative
        look, strength, pig = d_lesion, float(rng.uniform(0.5, 1.0)), bool(rng.random() < _PIGMENTED_P[d_lesion])
    else:
        look, strength, pig = "generic", 0.0, bool(rng.random() < _PIGMENTED_P[d_lesion])
    if source == "context":
        cue, cstrength = label, float(rng.uniform(0.75, 1.0))
    elif rng.random() < 0.5:
        cue, cstrength = d_context, float(rng.uniform(0.5, 1.0))
    else:
        cue, cstrength = None, 0.0
    if source == "note":
        note_kind, note_class = "decisive", label
    else:   # "misleading" draws the decoy's hallmark sentences (and its weak phrases), never the label's
        note_kind = _pick(rng, {"misleading": 0.35, "weak": 0.2, "vague": 0.25, "missing": 0.2})
        note_class = d_note
    # "prototype" keeps the note from restating the metadata (the site would leak into a metadata-only
    # control's note); the metadata itself is drawn by _single_source_metadata
    plan = _Plan(label, source, look, strength, pig, cue, cstrength, note_kind, note_class, "prototype")
    return plan, d_meta
