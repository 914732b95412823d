"""A generated dermatology cohort (synthetic demo data): dermoscopy-like images with lesion and
context-ring masks, clinical notes and HAM10000-style metadata (age, sex, anatomical site).

No real dermoscopy images can be shipped, so cases are drawn. Because the generator knows where it
put the decisive evidence (in the lesion, in its surroundings, in the note or in the metadata), an
explanation can be *measured* against that ground truth; seed 003 observed on HAM10000 that some
correct cases are decided by the lesion and others by its context.

How a case is built (case ``i`` uses only ``SeedSequence([seed, i])``, so worker count is irrelevant):

1. label: HAM10000's long-tail class frequencies, as exact quotas for ``n`` shuffled by ``seed``;
2. evidence: which modality carries the decisive evidence (class-dependent probabilities). About
   one case in ten is *ambiguous*: no modality is decisive (``evidence`` is None and
   ``extras["ambiguous"]`` is True);
3. every modality is then drawn *decisive* (the class's hallmarks), *weak* (a look shared by a group
   of classes), *misleading* (a confusable class's hallmarks) or *missing* (notes only). So no single
   modality decides every case, which is what gives fusion something to add (honest difficulty).

``extras`` records what was drawn: ``lesion_look`` (class whose hallmarks the lesion shows, or
"generic"), ``context_cue`` (class whose surroundings were drawn, or None), ``note_kind``,
``metadata_kind``, ``structures`` (dermoscopic structures drawn), ``artifacts``.

Measured difficulty (dermatology-6, n=6000, seed 0, test split; frozen EfficientNet-Lite0 and MiniLM
features, metadata one-hot / standardised, class-balanced logistic regression): balanced accuracy
image 0.42, note 0.48, metadata 0.36, all three concatenated 0.66. By construction a perfect
image-only model stays near 0.7 (only about half the cases are decided in the image).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..base import Cohort, CohortItem, fit_schema, grouped_split

GENERATOR_VERSION = "dermatology-6"

LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]   # HAM10000 order
# HAM10000 counts (of 10,015 images): the long tail the cohort reproduces
HAM_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
LABEL_DESCRIPTIONS = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion (seborrhoeic keratosis, solar lentigo, lichen-planus-like keratosis)",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic naevus",
    "vasc": "Vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
}
SITES = ["abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity",
         "neck", "scalp", "trunk", "upper extremity", "unknown"]
EVIDENCE = ("lesion", "context", "note", "metadata")
DEMO_KINDS = ("lesion", "context", "note", "metadata", "missing-note", "ambiguous")

DERM_SCHEMA: list[dict[str, Any]] = [
    {"name": "age", "type": "numeric", "unit": "years", "min": 0, "max": 100,
     "description": "Age at the time of imaging (HAM10000 records it in steps of 5 years)."},
    {"name": "sex", "type": "categorical", "categories": ["male", "female", "unknown"],
     "description": "Sex as recorded."},
    {"name": "localization", "type": "categorical", "categories": list(SITES),
     "description": "Anatomical site of the lesion (HAM10000's 15 sites)."},
]

DESCRIPTION = (
    "Synthetic demo data: a generated dermatology cohort of dermoscopy-like images, clinical notes and "
    "HAM10000-style metadata (age, sex, site) over HAM10000's seven classes and long-tail frequencies. "
    "No real patients. Each case records which modality the generator made decisive (the lesion, its "
    "surroundings, the note or the metadata; some cases none), with lesion and context-ring masks, so "
    "explanations can be checked against ground truth. Not for clinical use.")

# ---------------------------------------------------------------------------------------------
# Plan: label, evidence and how each modality is drawn
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Metadata (HAM10000-like class-conditional age / sex / site)
# ---------------------------------------------------------------------------------------------

_AGE_MIX: dict[str, list[tuple[float, float, float]]] = {   # (weight, mean, sd)
    "akiec": [(1, 67, 11)], "bcc": [(1, 66, 12)], "bkl": [(1, 63, 13)], "df": [(1, 50, 14)],
    "mel": [(1, 60, 15)], "nv": [(0.25, 28, 9), (0.75, 50, 14)], "vasc": [(0.25, 8, 6), (0.75, 52, 17)]}
_MALE_P = {"akiec": 0.68, "bcc": 0.62, "bkl": 0.56, "df": 0.40, "mel": 0.61, "nv": 0.51, "vasc": 0.47}
_SITE_W: dict[str, dict[str, float]] = {
    "akiec": {"face": 35, "upper extremity": 12, "lower extremity": 10, "scalp": 10, "hand": 8, "neck": 5,
              "back": 5, "ear": 5, "chest": 4, "trunk": 2, "unknown": 2, "abdomen": 1, "foot": 1},
    "bcc": {"back": 30, "face": 20, "trunk": 8, "chest": 8, "lower extremity": 8, "upper extremity": 7,
            "neck": 6, "abdomen": 4, "scalp": 3, "ear": 2, "unknown": 1, "hand": 1, "foot": 0.5, "genital": 0.5},
    "bkl": {"face": 28, "back": 17, "lower extremity": 12, "trunk": 10, "chest": 10, "upper extremity": 9,
            "abdomen": 5, "neck": 4, "scalp": 2, "unknown": 1.5, "hand": 1, "ear": 1, "foot": 0.5},
    "df": {"lower extremity": 60, "upper extremity": 15, "trunk": 10, "back": 3, "foot": 3, "unknown": 3,
           "chest": 2, "abdomen": 2, "hand": 2},
    "mel": {"back": 28, "lower extremity": 18, "upper extremity": 14, "face": 10, "trunk": 7, "chest": 6,
            "abdomen": 4, "neck": 3, "unknown": 2.5, "scalp": 2, "foot": 2, "ear": 1, "hand": 1, "acral": 1,
            "genital": 0.5},
    "nv": {"lower extremity": 22, "back": 20, "trunk": 15, "abdomen": 12, "upper extremity": 10, "chest": 5,
           "foot": 4, "unknown": 3, "face": 2.5, "neck": 2, "genital": 1, "scalp": 1, "hand": 1, "acral": 1,
           "ear": 0.5},
    "vasc": {"lower extremity": 22, "trunk": 18, "abdomen": 12, "back": 10, "upper extremity": 10, "face": 8,
             "chest": 5, "unknown": 4, "acral": 3, "genital": 3, "hand": 3, "neck": 2},
}
# metadata-decided cases: the class's most typical patient (still overlapping other classes)
_PROTOTYPE: dict[str, tuple[tuple[float, float], float, dict[str, float]]] = {   # (age mean, sd), P(male), sites
    "akiec": ((80, 4), 0.85, {"scalp": 4, "hand": 3, "ear": 2, "face": 1}),
    "bcc": ((70, 6), 0.75, {"face": 5, "neck": 3, "back": 2}),
    "bkl": ((66, 6), 0.50, {"chest": 4, "trunk": 3, "face": 2}),
    "df": ((36, 7), 0.15, {"lower extremity": 9, "upper extremity": 1}),
    "mel": ((58, 6), 0.85, {"back": 8, "upper extremity": 2}),
    "nv": ((22, 6), 0.50, {"back": 3, "trunk": 3, "abdomen": 3, "lower extremity": 1}),
    "vasc": ((4, 4), 0.45, {"trunk": 3, "face": 2, "genital": 2, "abdomen": 1.5}),
}


def _round_age(rng: np.random.Generator, age: float) -> float:
    age = float(np.clip(age, 0, 95))
    # HAM10000 stores ages in 5-year steps; a few records are exact
    return float(5 * round(age / 5)) if rng.random() < 0.85 else float(round(age))


def _metadata(rng: np.random.Generator, label: str, kind: str) -> dict[str, Any]:
    if kind == "prototype":
        (mu, sd), male_p, sites = _PROTOTYPE[label]
        age: float | None = _round_age(rng, rng.normal(mu, sd))
    else:
        mix = _AGE_MIX[label]
        w, mu, sd = mix[int(rng.choice(len(mix), p=np.array([m[0] for m in mix]) / sum(m[0] for m in mix)))]
        age = _round_age(rng, rng.normal(mu, sd)) if rng.random() > 0.02 else None
        male_p, sites = _MALE_P[label], _SITE_W[label]
    u = rng.random()
    sex = "unknown" if u < 0.01 else "male" if u < 0.01 + 0.99 * male_p else "female"
    return {"age": age, "sex": sex, "localization": _pick(rng, sites)}


# ---------------------------------------------------------------------------------------------
# Known-answer controls: the label carried by ONE source only
# ---------------------------------------------------------------------------------------------

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


def _single_source_metadata(rng: np.random.Generator, label: str, source: str, decoy: str) -> dict[str, Any]:
    md = _metadata(rng, decoy, "typical")
    if source == "metadata":
        md["localization"] = CONTROL_SITE[label]
    return md


# ---------------------------------------------------------------------------------------------
# Clinical notes
# ---------------------------------------------------------------------------------------------

_DECISIVE: dict[str, list[str]] = {
    "mel": [
        "New mole that has grown noticeably over the last {months} months.",
        "Patient reports the spot has become darker and changed shape recently.",
        "Partner noticed it getting bigger and more irregular at the edge.",
        "Family history of melanoma ({relative}).",
        "History of blistering sunburns as a child; the lesion appeared in adulthood.",
        "Previous melanoma excised from the {other_site} {years} years ago.",
        "Stands out from the patient's other moles (ugly duckling sign).",
        "Several colours in the lesion according to the patient, with a recent increase in size.",
        "Enlarging over the last year, now with an uneven, notched border.",
    ],
    "bcc": [
        "Slow-growing, shiny, pearly bump present for about {years} years.",
        "Sore that bleeds, crusts over and never fully heals.",
        "Bleeds when drying with a towel, then scabs again.",
        "Small blood vessels visible on a translucent surface.",
        "Long history of outdoor work as a {outdoor_job}.",
        "Previous basal cell carcinoma treated on the {other_site}.",
        "Waxy raised edge with a slight central dip, slowly enlarging.",
    ],
    "akiec": [
        "Rough, scaly patch that feels like sandpaper.",
        "The scale keeps coming back after the patient picks it off.",
        "Multiple similar rough spots on sun-exposed skin.",
        "Extensive chronic sun damage after {decades} decades as a {outdoor_job}.",
        "Previously treated with cryotherapy for actinic keratoses.",
        "Red, crusted and tender; has thickened over several months.",
        "Immunosuppressed after a kidney transplant; several scaly lesions.",
    ],
    "bkl": [
        "Warty, stuck-on looking lesion present for many years.",
        "Several similar lesions elsewhere on the body that have multiplied with age.",
        "Greasy brown plaque; the patient says bits of it can be scratched off.",
        "Catches on clothing and gets irritated.",
        "Flat brown age spot on sun-exposed skin, slowly enlarging.",
        "Crumbly, rough surface; mother had many similar 'barnacles'.",
    ],
    "df": [
        "Firm small nodule that appeared after an insect bite.",
        "Dimples inward when pinched from the sides.",
        "Hard, button-like bump present for several years, unchanged.",
        "Nicked it while shaving; since then a firm brownish papule.",
        "Feels like a small stone under the skin; occasionally itchy.",
    ],
    "nv": [
        "Mole present since childhood, unchanged in size and colour.",
        "Routine skin check; the patient has many similar moles.",
        "Monitored with serial photography for {years} years without change.",
        "Regular brown mole, one of about {count} similar ones on the body.",
        "No change reported, no symptoms.",
        "All of the patient's moles have looked like this since adolescence.",
    ],
    "vasc": [
        "Red-purple bump that bleeds heavily after minor trauma.",
        "Soft, compressible red spot, present since birth.",
        "Bright red papule that grew quickly over a few weeks.",
        "Partly blanches with pressure.",
        "Several cherry-red spots have appeared with age.",
        "Dark red-blue lesion; bled after being scratched.",
    ],
}
_IMPRESSION = {"mel": "melanoma", "bcc": "BCC", "akiec": "actinic keratosis / Bowen's", "bkl": "seborrhoeic keratosis",
               "df": "dermatofibroma", "nv": "benign naevus", "vasc": "haemangioma"}
# phrases a group of classes share: they narrow the diagnosis without deciding it
_WEAK: list[tuple[str, frozenset[str]]] = [
    ("Itchy at times.", frozenset({"bkl", "df", "akiec", "nv"})),
    ("Has changed a little recently.", frozenset({"mel", "bkl", "bcc", "nv"})),
    ("Bleeds occasionally.", frozenset({"bcc", "vasc", "mel", "akiec"})),
    ("Fair skin, a lot of sun exposure over the years.", frozenset({"bcc", "akiec", "mel", "bkl"})),
    ("Present for many years.", frozenset({"nv", "bkl", "df", "bcc"})),
    ("Appeared recently.", frozenset({"mel", "vasc", "akiec"})),
    ("Raised, firm to touch.", frozenset({"bcc", "df", "vasc", "bkl"})),
    ("Brown spot.", frozenset({"nv", "mel", "bkl", "df"})),
    ("Red, slightly scaly.", frozenset({"akiec", "bcc", "bkl"})),
    ("Dark lesion.", frozenset({"mel", "nv", "vasc", "bkl"})),
    ("Tender when pressed.", frozenset({"df", "akiec", "vasc"})),
]
_VAGUE = [
    "Patient attended for a skin check.", "Lesion noted during routine examination.",
    "Referred by GP for dermoscopy.", "Patient unsure how long it has been there.",
    "No further history available.", "Patient would like it checked.",
    "Spot noticed by the patient in the mirror.", "Seen in the pigmented lesion clinic.",
    "History limited; interpreter not available.", "Patient reports no bleeding and no itch.",
    "Concerned about a spot.", "Second opinion requested.",
]
_FILL: dict[str, list[str]] = {
    "months": ["2", "3", "4", "6", "8"], "years": ["2", "3", "5", "8", "10"], "decades": ["three", "four", "five"],
    "count": ["20", "30", "40", "50"], "relative": ["mother", "father", "sister", "brother", "grandmother"],
    "outdoor_job": ["farmer", "builder", "sailor", "gardener", "roofer", "lifeguard"],
    "other_site": ["back", "shoulder", "arm", "leg", "chest", "face"],
}
_SITE_TEXT = {"lower extremity": ["lower extremity", "leg", "lower leg", "thigh"],
              "upper extremity": ["upper extremity", "arm", "forearm"], "acral": ["acral skin", "sole"],
              "genital": ["genital area"], "trunk": ["trunk"], "unknown": [""]}


def _fill(rng: np.random.Generator, text: str) -> str:
    for key, options in _FILL.items():
        if "{" + key + "}" in text:
            text = text.replace("{" + key + "}", str(rng.choice(options)))
    return text


def _metadata_sentence(rng: np.random.Generator, md: dict[str, Any]) -> str:
    """Seed 003's narrative built from metadata when no history exists ("65-year-old male, lesion on the back.")."""
    age, sex, site = md.get("age"), md.get("sex"), md.get("localization")
    who = "patient" if sex in (None, "unknown") else str(sex)
    site_txt = str(rng.choice(_SITE_TEXT.get(site, [site]))) if site else ""
    where = f"on the {site_txt}" if site_txt else "(site not recorded)"
    if age is None:
        return f"Adult {who}, lesion {where}."
    a = int(age)
    if a < 2:
        return f"Infant, lesion {where}."
    forms = [f"{a}-year-old {who}, lesion {where}.",
             f"{who.capitalize()}, {a} years. Lesion {where}.",
             f"{a} y/o {who} presenting with a lesion {where}.",
             f"Lesion {where} of a {a}-year-old {who}."]
    return str(rng.choice(forms))


def _decisive_sentences(rng: np.random.Generator, cls: str, k: int) -> list[str]:
    bank = _DECISIVE[cls]
    idx = rng.choice(len(bank), size=min(k, len(bank)), replace=False)
    return [_fill(rng, bank[i]) for i in idx]


def decisive_spans(note: str | None, cls: str) -> list[tuple[int, int]]:
    """Character spans of ``note`` that are the generator's decisive sentences for class ``cls`` (its
    hallmark history and the "Clinical impression" line): the words it planted. Recovered by matching
    the sentence templates (placeholders and the "Pt" abbreviation included), so it also works on
    cached cohorts."""
    import re

    if not note or cls not in _DECISIVE:   # not this generator's class: it planted nothing
        return []
    spans = []
    pats = [*_DECISIVE[cls], f"Clinical impression: ?{_IMPRESSION[cls]}."]
    for t in pats:
        rx = re.escape(t)
        for key, options in _FILL.items():
            rx = rx.replace(re.escape("{" + key + "}"), "(?:" + "|".join(map(re.escape, options)) + ")")
        rx = rx.replace("Patient", "(?:Patient|Pt)").replace("patient", "(?:patient|pt)")
        spans += [(m.start(), m.end()) for m in re.finditer(rx, note)]
    return sorted(spans)


def _weak_sentences(rng: np.random.Generator, cls: str, k: int) -> list[str]:
    pool = [t for t, group in _WEAK if cls in group]
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in idx]


def _note(rng: np.random.Generator, plan: _Plan, md: dict[str, Any]) -> str | None:
    kind, cls = plan.note_kind, plan.note_class
    if kind == "missing":
        return None
    if kind == "metadata":
        return _metadata_sentence(rng, md)
    parts: list[str] = []
    if kind in ("decisive", "misleading"):
        parts = _decisive_sentences(rng, cls, int(rng.integers(1, 4)) if kind == "decisive" else int(rng.integers(1, 3)))
        if rng.random() < 0.3:
            parts += _weak_sentences(rng, plan.label if kind == "decisive" else cls, 1)
        if rng.random() < 0.12:
            parts.append(f"Clinical impression: ?{_IMPRESSION[cls]}.")
    elif kind == "weak":
        parts = _weak_sentences(rng, cls, int(rng.integers(1, 3)))
    if kind == "vague" or rng.random() < 0.25:
        parts.append(str(rng.choice(_VAGUE)))
    parts = [parts[i] for i in rng.permutation(len(parts))]
    if plan.metadata_kind != "prototype" and rng.random() < 0.35:
        parts.insert(0, _metadata_sentence(rng, md))
    text = " ".join(parts)
    if rng.random() < 0.2:
        text = text.replace("Patient ", "Pt ").replace("patient", "pt")
    return text


# ---------------------------------------------------------------------------------------------
# Image primitives (float32 RGB in [0, 1]; geometry in pixels of an s x s canvas)
# ---------------------------------------------------------------------------------------------

Colour = tuple[float, float, float]
_COLOURS: dict[str, Colour] = {
    "tan": (0.78, 0.60, 0.45), "light_brown": (0.62, 0.42, 0.28), "brown": (0.45, 0.28, 0.18),
    "dark_brown": (0.30, 0.18, 0.12), "black": (0.12, 0.09, 0.09), "blue_gray": (0.42, 0.47, 0.56),
    "blue_white": (0.66, 0.71, 0.80), "red": (0.80, 0.22, 0.22), "pink": (0.90, 0.60, 0.60),
    "pearl": (0.94, 0.82, 0.80), "white": (0.96, 0.94, 0.91), "purple": (0.45, 0.15, 0.35),
    "dark_red": (0.48, 0.08, 0.12), "yellow": (0.86, 0.76, 0.52), "vessel": (0.82, 0.12, 0.18),
}
_SKIN_TONES = [(0.94, 0.79, 0.71), (0.91, 0.73, 0.63), (0.85, 0.65, 0.53), (0.77, 0.56, 0.43), (0.63, 0.45, 0.34)]
_SKIN_W = [0.3, 0.3, 0.22, 0.13, 0.05]


def _col(rng: np.random.Generator, name: str, jitter: float = 0.04) -> np.ndarray:
    return np.clip(np.asarray(_COLOURS[name], np.float32) + rng.normal(0, jitter, 3).astype(np.float32), 0, 1)


@lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    return yy, xx


def _noise(rng: np.random.Generator, s: int, cells: float) -> np.ndarray:
    """Smooth value noise in about [-1, 1] with ``cells`` features across the canvas."""
    c = max(2, int(round(cells)))
    base = rng.uniform(-1, 1, (c + 1, c + 1)).astype(np.float32)
    return cv2.resize(base, (s, s), interpolation=cv2.INTER_CUBIC)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray | Sequence[float], opacity: float = 1.0) -> None:
    """Alpha-composite a flat colour (or a colour image) over ``img`` in place, touching only the
    bounding box where ``alpha`` is non-zero (most shapes are small)."""
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = np.clip(alpha[box] * np.float32(opacity), 0, 1)[..., None]
    colour = np.asarray(colour, np.float32)
    target = colour[box] if colour.ndim == 3 else colour
    img[box] += a * (target - img[box])


def _px(s: int, v: float) -> int:
    """A length given for a 224-pixel image, scaled to this canvas (at least 1 pixel)."""
    return max(1, int(round(v * s / 224)))


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy) * 16).astype(np.int32)  # cv2 sub-pixel coordinates (shift=4)


def _circles(s: int, centres: np.ndarray, radii: np.ndarray, thickness: int = -1) -> np.ndarray:
    """Anti-aliased circles -> alpha in [0, 1]."""
    can = np.zeros((s, s), np.uint8)
    for (x, y), r in zip(centres, radii):
        cv2.circle(can, (int(round(x * 16)), int(round(y * 16))), max(1, int(round(r * 16))), 255,
                   thickness, cv2.LINE_AA, 4)
    return can.astype(np.float32) / 255


def _polyline_alpha(s: int, lines: list[tuple[np.ndarray, int]]) -> np.ndarray:
    can = np.zeros((s, s), np.uint8)
    for pts, th in lines:
        cv2.polylines(can, [_pts(pts)], False, 255, th, cv2.LINE_AA, 4)
    return can.astype(np.float32) / 255


def _blob(rng: np.random.Generator, s: int, cx: float, cy: float, r: float, asym: float, rough: float,
          elong: float = 0.0) -> np.ndarray:
    """A closed shape r(theta): low harmonics make it asymmetric, high harmonics make the border irregular."""
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    rad = np.ones_like(th)
    for k in (1, 2, 3):
        rad += asym * rng.uniform(0.3, 1.0) * np.cos(k * th + rng.uniform(0, 2 * np.pi)) / k ** 0.3
    for k in range(4, 16):
        rad += rough * rng.normal(0, 1) / k ** 0.7 * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    rad *= 1 + elong * np.cos(2 * (th - rng.uniform(0, np.pi)))
    rad = np.clip(rad, 0.35, None)
    pts = np.stack([cx + r * rad * np.cos(th), cy + r * rad * np.sin(th)], -1)
    m = np.zeros((s, s), np.uint8)
    cv2.fillPoly(m, [_pts(pts)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _curve(rng: np.random.Generator, x: float, y: float, angle: float, length: float, wiggle: float,
           n: int = 12) -> np.ndarray:
    """A random-walk polyline (hair, vessel, streak)."""
    pts = [(x, y)]
    for _ in range(n):
        angle += rng.normal(0, wiggle)
        x += math.cos(angle) * length / n
        y += math.sin(angle) * length / n
        pts.append((x, y))
    return np.asarray(pts, np.float32)


def _sample_where(rng: np.random.Generator, region: np.ndarray, n: int) -> np.ndarray:
    """``n`` random (x, y) points inside a boolean region (empty region -> no points)."""
    ys, xs = np.nonzero(region)
    if len(xs) == 0 or n <= 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.integers(0, len(xs), n)
    return np.stack([xs[idx], ys[idx]], -1).astype(np.float32) + rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Skin, optics and artifacts (all independent of the class: no shortcuts)
# ---------------------------------------------------------------------------------------------

def _skin(rng: np.random.Generator, s: int) -> np.ndarray:
    i = int(rng.choice(len(_SKIN_TONES), p=_SKIN_W))
    j = min(i + 1, len(_SKIN_TONES) - 1)
    t = rng.uniform()
    base = (1 - t) * np.asarray(_SKIN_TONES[i]) + t * np.asarray(_SKIN_TONES[j]) + rng.normal(0, 0.02, 3)
    img = np.empty((s, s, 3), np.float32)
    img[:] = np.clip(base, 0, 1)
    img *= (1 + 0.05 * _noise(rng, s, 3))[..., None]                    # tone variation
    red = 0.05 * (1 + _noise(rng, s, 5)) / 2                             # blotchy redness
    img[..., 1] *= 1 - red
    img[..., 2] *= 1 - red
    img *= (1 + 0.025 * _noise(rng, s, s / 8))[..., None]                # mottled texture
    img *= (1 - rng.uniform(0.008, 0.02) * _furrows(rng, s))[..., None]  # skin lines
    return img


def _furrows(rng: np.random.Generator, s: int) -> np.ndarray:
    """The rhomboid network of skin furrows: two crossing sets of faint warped lines."""
    yy, xx = _grid(s)
    period = s * rng.uniform(0.06, 0.1)
    a = rng.uniform(0, np.pi)
    warp = 0.6 * _noise(rng, s, 4)
    u = (xx * math.cos(a) + yy * math.sin(a)) / period + warp
    v = (xx * math.cos(a + 1.1) + yy * math.sin(a + 1.1)) / period + warp
    return np.maximum(np.exp(-np.sin(np.pi * u) ** 2 / 0.015), np.exp(-np.sin(np.pi * v) ** 2 / 0.015))


@dataclass
class _Optics:
    field: np.ndarray | None        # soft dermoscope field in [0, 1], or None (no dark border)
    visible: np.ndarray             # bool: inside the field
    gain: np.ndarray                # per-channel colour cast


def _optics(rng: np.random.Generator, s: int) -> _Optics:
    yy, xx = _grid(s)
    if rng.random() < 0.55:  # dermoscope with a visible circular border (vignetting)
        R = s * rng.uniform(0.47, 0.66)
        cx, cy = s / 2 + rng.normal(0, 0.02 * s), s / 2 + rng.normal(0, 0.02 * s)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        field = np.clip((R - d) / (s * rng.uniform(0.01, 0.04)), 0, 1)
    else:
        field = None
    visible = field > 0.5 if field is not None else np.ones((s, s), bool)
    gain = np.clip(rng.normal(1, 0.04, 3) * rng.normal(1, 0.05), 0.8, 1.2).astype(np.float32)
    return _Optics(field, visible, gain)


def _apply_optics(rng: np.random.Generator, img: np.ndarray, o: _Optics) -> None:
    s = img.shape[0]
    yy, xx = _grid(s)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, 0.08) * ((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s
    falloff = 1 - rng.uniform(0.05, 0.25) * (((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s / 2) ** 2)
    img *= (grad * falloff)[..., None] * o.gain
    if o.field is not None:
        dark = np.float32(rng.uniform(0.01, 0.07))
        img *= o.field[..., None]
        img += (1 - o.field)[..., None] * dark


def _hairs(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    n = int(rng.integers(1, 25))
    lines = []
    for _ in range(n):
        x, y = rng.uniform(-0.1, 1.1, 2) * s
        lines.append((_curve(rng, x, y, rng.uniform(0, 2 * np.pi), s * rng.uniform(0.2, 0.9), 0.06),
                      _px(s, rng.choice([1, 1, 1, 2, 2]))))
    _paint(img, _polyline_alpha(s, lines), _col(rng, "dark_brown") * rng.uniform(0.3, 0.8), rng.uniform(0.7, 0.95))


def _bubbles(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    n = int(rng.integers(1, 7))
    centres = rng.uniform(0.1, 0.9, (n, 2)) * s
    radii = rng.uniform(0.01, 0.06, n) * s
    _paint(img, _circles(s, centres, radii), np.ones(3, np.float32), 0.08)          # slight lightening inside
    _paint(img, _circles(s, centres, radii, _px(s, 1)), np.ones(3, np.float32), rng.uniform(0.35, 0.6))  # rim
    _paint(img, _circles(s, centres - radii[:, None] * 0.4, radii * 0.2), np.ones(3, np.float32), 0.6)  # glint


def _ruler(rng: np.random.Generator, img: np.ndarray) -> None:
    s = img.shape[0]
    a = rng.uniform(0, 2 * np.pi)
    d = s * rng.uniform(0.3, 0.4)
    n_dir, t_dir = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c0 = np.array([s / 2, s / 2]) + d * n_dir
    half, step = s * 0.3, s * rng.uniform(0.025, 0.04)
    lines = [(np.stack([c0 - half * t_dir, c0 + half * t_dir]), _px(s, 1))]
    for k, t in enumerate(np.arange(-half, half, step)):
        p = c0 + t * t_dir
        lines.append((np.stack([p, p + n_dir * s * (0.05 if k % 5 == 0 else 0.025)]), _px(s, 1)))
    colour = np.full(3, 0.08 if rng.random() < 0.7 else 0.92, np.float32)
    _paint(img, _polyline_alpha(s, lines), colour, rng.uniform(0.6, 0.9))


def _glare(rng: np.random.Generator, img: np.ndarray, centre: tuple[float, float] | None = None,
           size: float | None = None) -> None:
    s = img.shape[0]
    c = np.asarray(centre if centre is not None else rng.uniform(0.2, 0.8, 2) * s)
    r = size if size is not None else s * rng.uniform(0.02, 0.05)
    a = cv2.GaussianBlur(_circles(s, c[None], np.array([r])), (0, 0), max(0.5, r / 2))
    _paint(img, a, np.ones(3, np.float32), rng.uniform(0.4, 0.8))


# ---------------------------------------------------------------------------------------------
# Lesion: geometry, colour and dermoscopic structures per class
# ---------------------------------------------------------------------------------------------

@dataclass
class _Lesion:
    s: int
    cx: float
    cy: float
    r: float
    mask: np.ndarray                 # bool
    depth: np.ndarray                # 0 at the border .. 1 at the deepest point
    layer: np.ndarray                # the lesion's own colours [s, s, 3]
    structures: list[str] = field(default_factory=list)

    def points(self, rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        region = self.mask & (self.depth >= lo) & (self.depth <= hi)
        return _sample_where(rng, region if region.any() else self.mask, n)


# (radius as a fraction of s, asymmetry, border roughness, edge softness in px at 224)
_GEOMETRY: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "mel": ((0.17, 0.26), (0.12, 0.28), (0.10, 0.24), (0.8, 2.0)),
    "nv": ((0.12, 0.20), (0.02, 0.07), (0.01, 0.04), (2.0, 4.0)),
    "bkl": ((0.16, 0.25), (0.06, 0.16), (0.05, 0.12), (0.6, 1.2)),
    "bcc": ((0.13, 0.21), (0.05, 0.14), (0.04, 0.10), (1.5, 3.0)),
    "akiec": ((0.13, 0.21), (0.08, 0.18), (0.08, 0.16), (3.0, 5.0)),
    "df": ((0.11, 0.17), (0.02, 0.06), (0.02, 0.05), (1.5, 3.0)),
    "vasc": ((0.09, 0.15), (0.02, 0.08), (0.02, 0.05), (0.6, 1.2)),
    "generic": ((0.12, 0.23), (0.03, 0.14), (0.02, 0.10), (1.0, 3.0)),
}


def _lesion_geometry(rng: np.random.Generator, s: int, look: str, strength: float) -> tuple[float, float, float, float]:
    """Radius, asymmetry, roughness, softness: a weak look lies between the generic and the class's range."""
    def draw(key: str) -> np.ndarray:
        return np.array([rng.uniform(lo, hi) for lo, hi in _GEOMETRY[key]])
    g = draw("generic")
    v = g if look == "generic" else strength * draw(look) + (1 - strength) * g
    r, asym, rough, soft = v
    return r * s, asym, rough, soft * s / 224


def _colour_field(rng: np.random.Generator, L: _Lesion, colours: list[np.ndarray], layout: str) -> None:
    """Fill the lesion layer: uniform, concentric (centre -> edge) or patchy (irregular zones)."""
    s = L.s
    if layout == "concentric" and len(colours) > 1:
        t = np.clip(L.depth * rng.uniform(1.2, 2.0), 0, 1)[..., None]
        L.layer[:] = (1 - t) * colours[-1] + t * colours[0]
    elif layout == "patchy" and len(colours) > 1:
        cells = rng.uniform(3, 7) * s / (2 * L.r + 1) * 0.5
        fields = np.stack([_noise(rng, s, cells) for _ in colours], -1) * rng.uniform(4, 9)
        w = np.exp(fields - fields.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        L.layer[:] = w @ np.stack(colours)
    else:
        L.layer[:] = colours[0]
    L.layer *= (1 + 0.06 * _noise(rng, s, s / 10))[..., None]


def _cell_edges(rng: np.random.Generator, s: int, period: float, jitter: float, region: np.ndarray) -> np.ndarray:
    """Distance to the nearest cell wall of a jittered Voronoi tiling (F2 - F1 of cellular noise), in
    units of ``period``, 0 on the walls; computed inside ``region``'s bounding box only (large elsewhere).
    Draws a reticular (honeycomb-like) network."""
    out = np.full((s, s), 9.0, np.float32)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if len(rows) == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    yy, xx = (g[box] for g in _grid(s))
    n = int(s / period) + 3
    seeds = ((np.mgrid[0:n, 0:n].transpose(1, 2, 0)[..., ::-1] + 0.5 + rng.uniform(-jitter, jitter, (n, n, 2)))
             * period - period).astype(np.float32)   # (x, y) per cell
    gx, gy = (xx / period).astype(np.int32) + 1, (yy / period).astype(np.int32) + 1
    f1 = np.full(xx.shape, np.inf, np.float32)
    f2 = np.full(xx.shape, np.inf, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            p = seeds[np.clip(gy + dy, 0, n - 1), np.clip(gx + dx, 0, n - 1)]
            d = np.hypot(xx - p[..., 0], yy - p[..., 1])
            f2 = np.where(d < f1, f1, np.minimum(f2, d))
            f1 = np.minimum(f1, d)
    out[box] = (f2 - f1) / period
    return out


def _network(rng: np.random.Generator, L: _Lesion, colour: np.ndarray, opacity: float, regular: bool,
             zone: np.ndarray | None = None) -> None:
    """Pigment network: a reticular grid of pigmented lines around paler holes. Regular (naevus): thin,
    even, fading at the periphery; atypical (melanoma): thick, uneven lines that stop abruptly in patches."""
    s = L.s
    period = s * rng.uniform(0.035, 0.05)
    edges = _cell_edges(rng, s, period, 0.3 if regular else 0.5, L.mask)
    width = 0.16 if regular else 0.16 * (1 + 0.9 * _noise(rng, s, 6))
    line = np.clip(1 - edges / np.maximum(width, 0.04), 0, 1)
    if zone is None:
        zone = np.clip(L.depth / 0.35, 0, 1) if regular else (_noise(rng, s, 5) > -0.2).astype(np.float32)
    _paint(L.layer, line * zone * L.mask, colour, opacity)
    L.structures.append("regular network" if regular else "atypical network")


def _dots(rng: np.random.Generator, L: _Lesion, n: int, radius: tuple[float, float], colour: np.ndarray,
          opacity: float, lo: float = 0.0, hi: float = 1.0, name: str = "dots/globules") -> None:
    pts = L.points(rng, n, lo, hi)
    radii = rng.uniform(*radius, len(pts)) * L.s / 224
    _paint(L.layer, cv2.GaussianBlur(_circles(L.s, pts, radii), (0, 0), 0.6), colour, opacity)
    L.structures.append(name)


def _streaks(rng: np.random.Generator, L: _Lesion, n: int, colour: np.ndarray, opacity: float) -> None:
    """Radial streaks / pseudopods at the periphery (melanoma, some Spitz naevi)."""
    pts = L.points(rng, n, 0.0, 0.25)
    lines = []
    for x, y in pts:
        a = math.atan2(y - L.cy, x - L.cx)
        length = L.r * rng.uniform(0.25, 0.5)
        lines.append((_curve(rng, x - math.cos(a) * length * 0.6, y - math.sin(a) * length * 0.6, a, length, 0.08, 5),
                      _px(L.s, rng.choice([1, 2]))))
    _paint(L.layer, _polyline_alpha(L.s, lines), colour, opacity)
    L.structures.append("streaks")


def _veil(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Blue-white veil: a hazy blue-grey-white area over part of the lesion."""
    zone = (_noise(rng, L.s, 4) > rng.uniform(-0.1, 0.3)).astype(np.float32) * L.mask
    _paint(L.layer, cv2.GaussianBlur(zone, (0, 0), _px(L.s, 3)), _col(rng, "blue_white"), opacity)
    L.structures.append("blue-white veil")


def _peppering(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Regression: fine blue-grey granules (peppering) in one area."""
    zone = L.mask & (_noise(rng, L.s, 4) > 0.2)
    pts = _sample_where(rng, zone if zone.any() else L.mask, int(rng.integers(30, 80)))
    _paint(L.layer, _circles(L.s, pts, np.full(len(pts), 0.8 * L.s / 224)), _col(rng, "blue_gray"), opacity)
    L.structures.append("peppering")


def _vessels(rng: np.random.Generator, L: _Lesion, trunks: int, opacity: float) -> None:
    """Arborizing (tree-like) vessels: sharp red branches narrowing outwards (basal cell carcinoma)."""
    lines: list[tuple[np.ndarray, int]] = []

    def branch(x: float, y: float, a: float, length: float, th: int, level: int) -> None:
        pts = _curve(rng, x, y, a, length, 0.18, 8)
        lines.append((pts, th))
        if level > 0:
            for sign in (-1, 1):
                k = int(rng.integers(3, 8))
                branch(float(pts[k, 0]), float(pts[k, 1]), a + sign * rng.uniform(0.35, 0.9),
                       length * rng.uniform(0.45, 0.7), max(1, th - 1), level - 1)

    for x, y in L.points(rng, trunks, 0.3, 1.0):
        branch(float(x), float(y), rng.uniform(0, 2 * np.pi), L.r * rng.uniform(0.6, 1.1), _px(L.s, 2.5), 2)
    _paint(L.layer, _polyline_alpha(L.s, lines) * L.mask, _col(rng, "vessel", 0.03), opacity)
    L.structures.append("arborizing vessels")


def _nests(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Blue-grey ovoid nests (basal cell carcinoma)."""
    can = np.zeros((L.s, L.s), np.uint8)
    for x, y in L.points(rng, n, 0.2, 1.0):
        ax = L.r * rng.uniform(0.12, 0.3)
        cv2.ellipse(can, (int(x * 16), int(y * 16)), (int(ax * 16), int(ax * rng.uniform(0.5, 0.9) * 16)),
                    rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, 4)
    _paint(L.layer, cv2.GaussianBlur(can.astype(np.float32) / 255, (0, 0), _px(L.s, 1.5)), _col(rng, "blue_gray"), opacity)
    L.structures.append("blue-grey ovoid nests")


def _ulcer(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    x, y = L.points(rng, 1, 0.4, 1.0)[0]
    m = _blob(rng, L.s, x, y, L.r * rng.uniform(0.15, 0.3), 0.2, 0.15).astype(np.float32)
    _paint(L.layer, cv2.GaussianBlur(m, (0, 0), 1.0), _col(rng, "dark_red"), opacity)
    L.structures.append("ulceration")


def _shiny_lines(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Shiny white (chrysalis) lines: short, crossing at right angles."""
    lines = []
    for x, y in L.points(rng, n, 0.2, 1.0):
        a = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15)
        length = L.r * rng.uniform(0.15, 0.3)
        lines.append((np.array([[x, y], [x + math.cos(a) * length, y + math.sin(a) * length]]), _px(L.s, 1)))
    _paint(L.layer, _polyline_alpha(L.s, lines) * L.mask, _col(rng, "white"), opacity)
    L.structures.append("shiny white lines")


def _scale(rng: np.random.Generator, L: _Lesion, coverage: float, opacity: float) -> None:
    """White-yellow surface scale: rough, patchy and slightly granular."""
    zone = (_noise(rng, L.s, 6) > 1 - 2 * coverage).astype(np.float32) * L.mask
    grain = 0.75 + 0.25 * _noise(rng, L.s, L.s / 5)
    _paint(L.layer, cv2.GaussianBlur(zone, (0, 0), 1.2) * grain, _col(rng, "white") * 0.97 + 0.03 * _col(rng, "yellow"),
           opacity)
    L.structures.append("scale")


def _rosettes(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Strawberry pattern: white-yellow follicular openings on a red pseudo-network (actinic keratosis)."""
    pts = L.points(rng, n, 0.1, 1.0)
    _paint(L.layer, _circles(L.s, pts, rng.uniform(1.5, 3.0, len(pts)) * L.s / 224), _col(rng, "yellow") + 0.1, opacity)
    _paint(L.layer, _circles(L.s, pts, rng.uniform(3.5, 5.0, len(pts)) * L.s / 224, _px(L.s, 1)), _col(rng, "red"),
           opacity * 0.6)
    L.structures.append("strawberry pattern")


def _elevation(rng: np.random.Generator, L: _Lesion, amount: float) -> None:
    """A raised lesion: lit from one side, with a specular highlight."""
    yy, xx = _grid(L.s)
    a = rng.uniform(0, 2 * np.pi)
    shade = 1 + amount * (((xx - L.cx) * math.cos(a) + (yy - L.cy) * math.sin(a)) / L.r).clip(-1, 1)
    L.layer *= shade[..., None]
    hx, hy = L.cx + math.cos(a) * L.r * 0.4, L.cy + math.sin(a) * L.r * 0.4
    _glare(rng, L.layer, (hx, hy), L.r * rng.uniform(0.08, 0.18))
    L.structures.append("raised")


def _fissures(rng: np.random.Generator, L: _Lesion, opacity: float) -> None:
    """Cerebriform fissures and ridges (seborrhoeic keratosis): the winding zero-contours of a noise field."""
    cells = L.s / (L.s * rng.uniform(0.05, 0.08))
    furrow = np.exp(-_noise(rng, L.s, cells) ** 2 / 0.004)
    _paint(L.layer, furrow * L.mask, _col(rng, "dark_brown"), opacity)
    L.structures.append("fissures/ridges")


def _lacunae(rng: np.random.Generator, L: _Lesion, n: int, opacity: float) -> None:
    """Red-purple lacunae separated by pale septa (angioma)."""
    pts = L.points(rng, n, 0.1, 1.0)
    for colour_name in ("red", "dark_red", "purple"):
        sel = pts[rng.random(len(pts)) < 0.45]
        radii = L.r * rng.uniform(0.1, 0.22, len(sel))
        _paint(L.layer, _circles(L.s, sel, radii) * L.mask, _col(rng, colour_name), opacity)
    L.structures.append("lacunae")


def _central_patch(rng: np.random.Generator, L: _Lesion, size: float, opacity: float) -> None:
    """Central white scar-like patch (dermatofibroma)."""
    zone = np.clip((L.depth - (1 - size)) / 0.15, 0, 1) * (0.8 + 0.2 * _noise(rng, L.s, 6))
    _paint(L.layer, zone, _col(rng, "white") * 0.95 + 0.05 * _col(rng, "pink"), opacity)
    L.structures.append("central white patch")


def _look_mel(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = ["light_brown", "brown", "dark_brown", "black", "blue_gray", "red", "white"]
    k = 2 + int(round(st * rng.uniform(1, 3)))
    chosen = rng.choice(names, size=k, replace=False, p=np.array([3, 3, 3, 2, 2, 1, 0.6]) / 14.6)
    _colour_field(rng, L, [_col(rng, c) for c in chosen], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.6, lambda: _network(rng, L, _col(rng, "dark_brown"), 0.5 + 0.4 * st, regular=False)),
        (0.6, lambda: _dots(rng, L, int(rng.integers(6, 20)), (1.5, 4.5), _col(rng, rng.choice(["black", "dark_brown"])),
                            0.85, 0.0, 0.35)),
        (0.45, lambda: _streaks(rng, L, int(rng.integers(4, 12)), _col(rng, "dark_brown"), 0.85)),
        (0.4, lambda: _veil(rng, L, 0.45 + 0.25 * st)),
        (0.3, lambda: _peppering(rng, L, 0.8)),
        (0.15, lambda: _shiny_lines(rng, L, int(rng.integers(3, 8)), 0.7)),
    ]
    _some(rng, options, 1 + int(round(2 * st)))
    return 0.9


def _look_nv(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = rng.choice(["tan", "light_brown", "brown"], size=int(rng.integers(1, 3)), replace=False)
    cols = [_col(rng, c) for c in sorted(names, key=["brown", "light_brown", "tan"].index)]  # darker centre
    _colour_field(rng, L, cols, "concentric")
    u = rng.random()
    if u < 0.55:
        _network(rng, L, _col(rng, "dark_brown"), 0.5 + 0.4 * st, regular=True)
    elif u < 0.8:
        _dots(rng, L, int(rng.integers(15, 35)), (2.5, 3.5), _col(rng, "brown") * 0.85, 0.7, 0.15, 1.0, "regular globules")
    else:
        L.structures.append("homogeneous")
    return 0.85


def _look_bkl(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = rng.choice(["tan", "light_brown", "yellow", "brown"], size=int(rng.integers(2, 4)), replace=False)
    _colour_field(rng, L, [_col(rng, c) for c in names], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.6, lambda: _dots(rng, L, int(rng.integers(3, 10)), (2.0, 4.0), _col(rng, "white"), 0.9, 0.1, 1.0,
                            "milia-like cysts")),
        (0.55, lambda: _dots(rng, L, int(rng.integers(3, 10)), (2.0, 4.0), _col(rng, "dark_brown") * 0.7, 0.85, 0.1, 1.0,
                             "comedo-like openings")),
        (0.5, lambda: _fissures(rng, L, 0.35 + 0.3 * st)),
        (0.25, lambda: _network(rng, L, _col(rng, "light_brown") * 0.85, 0.3, regular=True,
                                zone=np.ones_like(L.depth))),
    ]
    _some(rng, options, 1 + int(round(st)))
    if rng.random() < 0.3:
        _glare(rng, L.layer, tuple(L.points(rng, 1, 0.3)[0]), L.r * 0.12)  # waxy sheen
    return 0.9


def _look_bcc(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pearl"), _col(rng, "pink")], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.85, lambda: _vessels(rng, L, int(rng.integers(2, 5)), 0.7 + 0.25 * st)),
        (0.5, lambda: _nests(rng, L, int(rng.integers(1, 5)), 0.7)),
        (0.3, lambda: _ulcer(rng, L, 0.85)),
        (0.3, lambda: _shiny_lines(rng, L, int(rng.integers(3, 8)), 0.7)),
        (0.6, lambda: _elevation(rng, L, 0.08)),
    ]
    _some(rng, options, 1 + int(round(st)))
    return float(rng.uniform(0.55, 0.8))


def _look_akiec(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    names = ["pink", "red"] + (["light_brown"] if rng.random() < 0.2 else [])
    _colour_field(rng, L, [_col(rng, c) for c in names], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.85, lambda: _scale(rng, L, rng.uniform(0.25, 0.5), 0.6 + 0.3 * st)),
        (0.5, lambda: _rosettes(rng, L, int(rng.integers(10, 30)), 0.8)),
        (0.5, lambda: _dots(rng, L, int(rng.integers(15, 40)), (1.0, 1.8), _col(rng, "vessel"), 0.8, 0.0, 1.0,
                            "dotted vessels")),
    ]
    _some(rng, options, 1 + int(round(st)))
    return float(rng.uniform(0.6, 0.85))


def _look_df(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pink") * 0.9 + 0.1, _col(rng, "light_brown") * 0.9], "concentric")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.95, lambda: _central_patch(rng, L, rng.uniform(0.4, 0.65), 0.7 + 0.3 * st)),
        (0.9, lambda: _network(rng, L, _col(rng, "brown"), 0.6,
                               regular=True, zone=np.clip(1 - L.depth / 0.45, 0, 1))),
        (0.4, lambda: _elevation(rng, L, 0.06)),
    ]
    _some(rng, options, 1 + int(round(st)))
    return 0.85


def _look_vasc(rng: np.random.Generator, L: _Lesion, st: float) -> float:
    _colour_field(rng, L, [_col(rng, "pink") * 0.8 + 0.2 * _col(rng, "white"), _col(rng, "red")], "patchy")
    options: list[tuple[float, Callable[[], None]]] = [
        (0.95, lambda: _lacunae(rng, L, int(rng.integers(6, 16)), 0.85 + 0.1 * st)),
        (0.3, lambda: _veil(rng, L, 0.3)),
        (0.2, lambda: _dots(rng, L, int(rng.integers(1, 3)), (5.0, 9.0), _col(rng, "black"), 0.8, 0.2, 1.0,
                            "thrombosis")),
    ]
    _some(rng, options, 1)
    return 0.95


def _look_generic(rng: np.random.Generator, L: _Lesion, pigmented: bool) -> float:
    """An undecisive lesion: brown (or pink) and bland, with structures that belong to no class."""
    if pigmented:
        names = list(rng.choice(["tan", "light_brown", "brown"], size=int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.25:
            names.append("dark_brown")
        _colour_field(rng, L, [_col(rng, c) for c in names], str(rng.choice(["concentric", "patchy", "uniform"])))
        if rng.random() < 0.4:
            _network(rng, L, _col(rng, "brown") * 0.8, rng.uniform(0.2, 0.45), regular=bool(rng.random() < 0.5))
        if rng.random() < 0.35:
            _dots(rng, L, int(rng.integers(3, 12)), (1.5, 3.0), _col(rng, "brown") * 0.8, 0.6)
        return float(rng.uniform(0.75, 0.9))
    _colour_field(rng, L, [_col(rng, "pink"), _col(rng, "pink") * 0.9 + 0.1 * _col(rng, "red")], "patchy")
    if rng.random() < 0.3:
        _scale(rng, L, 0.15, 0.35)
    if rng.random() < 0.35:
        _dots(rng, L, int(rng.integers(5, 15)), (1.0, 1.6), _col(rng, "vessel"), 0.5, 0.0, 1.0, "dotted vessels")
    if rng.random() < 0.2:
        _paint(L.layer, L.mask * (_noise(rng, L.s, 4) > 0.3), _col(rng, "light_brown"), 0.4)
    return float(rng.uniform(0.55, 0.8))


_LOOKS: dict[str, Callable[[np.random.Generator, _Lesion, float], float]] = {
    "akiec": _look_akiec, "bcc": _look_bcc, "bkl": _look_bkl, "df": _look_df, "mel": _look_mel, "nv": _look_nv,
    "vasc": _look_vasc}


def _some(rng: np.random.Generator, options: list[tuple[float, Callable[[], None]]], at_least: int) -> None:
    """Draw each optional structure with its probability, topping up to ``at_least`` of them."""
    chosen = [i for i, (p, _) in enumerate(options) if rng.random() < p]
    rest = [i for i in range(len(options)) if i not in chosen]
    while len(chosen) < min(at_least, len(options)):
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    for i in sorted(chosen):
        options[i][1]()


def _lesion_shape(rng: np.random.Generator, s: int, plan: _Plan) -> tuple[_Lesion, float]:
    """The lesion's footprint (drawn before anything else: the context ring is defined by it)."""
    r, asym, rough, soft = _lesion_geometry(rng, s, plan.lesion_look, plan.lesion_strength)
    cx, cy = s / 2 + rng.normal(0, 0.04 * s, 2)
    mask = _blob(rng, s, cx, cy, r, asym, rough, elong=rng.uniform(0, 0.15))
    d = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    depth = d / max(float(d.max()), 1e-6)
    return _Lesion(s, float(cx), float(cy), float(r), mask, depth, np.zeros((s, s, 3), np.float32)), soft


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, L: _Lesion, soft: float, plan: _Plan) -> None:
    if plan.lesion_look == "generic":
        opacity = _look_generic(rng, L, plan.pigmented)
    else:
        opacity = _LOOKS[plan.lesion_look](rng, L, plan.lesion_strength)
    alpha = cv2.GaussianBlur(L.mask.astype(np.float32), (0, 0), max(0.5, soft))
    _paint(img, alpha, np.clip(L.layer, 0, 1), opacity)


# ---------------------------------------------------------------------------------------------
# Context: what surrounds the lesion (inside the ring from the border out to ~ one lesion radius)
# ---------------------------------------------------------------------------------------------

@dataclass
class _Ring:
    s: int
    dout: np.ndarray                 # distance from the lesion (0 inside it)
    r_eq: float                      # equivalent lesion radius: the ring's width
    visible: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return (self.dout > 0) & (self.dout <= self.r_eq) & self.visible

    def points(self, rng: np.random.Generator, n: int, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
        region = (self.dout > lo * self.r_eq) & (self.dout < hi * self.r_eq) & self.visible
        return _sample_where(rng, region, n)

    def halo(self, rng: np.random.Generator, reach: float) -> np.ndarray:
        """A soft band hugging the lesion, fading out by ``reach`` ring widths, with an irregular edge."""
        return np.exp(-self.dout / (reach * self.r_eq)) * (self.dout > 0) * np.clip(0.7 + 0.5 * _noise(rng, self.s, 6), 0, 1)


def _small_lesions(rng: np.random.Generator, img: np.ndarray, R: _Ring, n: int, radius: tuple[float, float],
                   colour_names: Sequence[str], asym: float, soft: float, opacity: float) -> None:
    for x, y in R.points(rng, n):
        m = _blob(rng, R.s, x, y, rng.uniform(*radius) * R.s, asym, asym * 0.6).astype(np.float32)
        _paint(img, cv2.GaussianBlur(m, (0, 0), max(0.5, soft * R.s / 224)), _col(rng, str(rng.choice(colour_names))),
               opacity)


def _ctx_mel(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Satellite lesions: small, dark, irregular pigmented spots near the lesion."""
    _small_lesions(rng, img, R, int(round(4 + 6 * st * rng.uniform(0.5, 1))), (0.015, 0.04),
                   ["dark_brown", "black", "blue_gray"], 0.35, 0.7, 0.7 + 0.25 * st)


def _ctx_nv(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Sibling naevi: several small, round, evenly brown moles (the patient's 'signature' naevus)."""
    _small_lesions(rng, img, R, int(round(3 + 3 * st * rng.uniform(0.5, 1))), (0.02, 0.04),
                   ["brown", "brown", "dark_brown"], 0.04, 1.5, 0.75 + 0.2 * st)


def _ctx_bkl(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """More seborrhoeic keratoses / solar lentigines: tan, waxy, sharply demarcated patches."""
    _small_lesions(rng, img, R, int(round(2 + 3 * st * rng.uniform(0.5, 1))), (0.04, 0.08),
                   ["tan", "yellow", "yellow"], 0.25, 0.5, 0.65 + 0.25 * st)
    for x, y in R.points(rng, int(rng.integers(3, 8))):   # comedo-like openings on them
        _paint(img, _circles(R.s, np.array([[x, y]]), np.array([_px(R.s, 1.5)])), _col(rng, "brown"), 0.7)


def _ctx_akiec(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Field cancerisation: actinic background with erythema, rough scaly patches, mottled pigment."""
    _paint(img, R.halo(rng, 1.0), _col(rng, "red"), 0.45 + 0.25 * st)
    _small_lesions(rng, img, R, int(round(3 + 4 * st)), (0.015, 0.035), ["pink", "white", "white"], 0.3, 1.0,
                   0.6 + 0.25 * st)
    _small_lesions(rng, img, R, int(rng.integers(2, 6)), (0.006, 0.015), ["light_brown"], 0.3, 0.8, 0.4)


def _ctx_bcc(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Sun-damaged surroundings with telangiectasia and a pearly perilesional rim."""
    _paint(img, np.exp(-R.dout / (0.15 * R.r_eq)) * (R.dout > 0), _col(rng, "pearl"), 0.4 + 0.3 * st)
    lines = [(_curve(rng, x, y, rng.uniform(0, 2 * np.pi), R.r_eq * rng.uniform(0.5, 1.0), 0.35, 10),
              _px(R.s, rng.choice([1, 2, 2]))) for x, y in R.points(rng, int(round(6 + 6 * st)))]
    _paint(img, _polyline_alpha(R.s, lines) * R.visible, _col(rng, "vessel"), 0.7 + 0.2 * st)


def _ctx_df(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Leg skin: a brown, delicately reticulated halo hugging the lesion plus shaving nicks / bite marks."""
    halo = R.halo(rng, 0.55)
    _paint(img, halo, _col(rng, "light_brown"), 0.55 + 0.25 * st)
    period = R.s * rng.uniform(0.035, 0.05)
    net = np.clip(1 - _cell_edges(rng, R.s, period, 0.3, halo > 0.3) / 0.16, 0, 1)
    _paint(img, net * halo, _col(rng, "brown"), 0.6)
    pts = R.points(rng, int(rng.integers(3, 7)), 0.3, 0.95)
    _paint(img, _circles(R.s, pts, rng.uniform(1.5, 3.0, len(pts)) * R.s / 224), _col(rng, "dark_red"), 0.85)


def _ctx_vasc(rng: np.random.Generator, img: np.ndarray, R: _Ring, st: float) -> None:
    """Haemorrhage: a purple-red bruise around the lesion with petechiae."""
    _paint(img, R.halo(rng, 0.8), _col(rng, "purple") * 0.7 + 0.3 * _col(rng, "red"), 0.5 + 0.25 * st)
    pts = R.points(rng, int(rng.integers(10, 25)), 0.1, 1.0)
    _paint(img, _circles(R.s, pts, rng.uniform(0.8, 1.8, len(pts)) * R.s / 224), _col(rng, "dark_red"), 0.85)


_CONTEXTS: dict[str, Callable[[np.random.Generator, np.ndarray, _Ring, float], None]] = {
    "akiec": _ctx_akiec, "bcc": _ctx_bcc, "bkl": _ctx_bkl, "df": _ctx_df, "mel": _ctx_mel, "nv": _ctx_nv,
    "vasc": _ctx_vasc}


def _background_findings(rng: np.random.Generator, img: np.ndarray, R: _Ring) -> list[str]:
    """Class-independent findings anywhere on the skin, so 'something around the lesion' decides nothing."""
    found = []
    s = img.shape[0]
    if rng.random() < 0.25:
        pts = _sample_where(rng, R.visible & (R.dout > 0), int(rng.integers(3, 12)))
        _paint(img, cv2.GaussianBlur(_circles(s, pts, rng.uniform(1.0, 2.5, len(pts)) * s / 224), (0, 0), 0.8),
               _col(rng, "light_brown"), 0.5)
        found.append("freckles")
    if rng.random() < 0.1:
        _paint(img, R.halo(rng, 0.5), _col(rng, "red"), rng.uniform(0.08, 0.18))
        found.append("pressure erythema")
    return found


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

def _render(rng: np.random.Generator, plan: _Plan, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """-> RGB uint8 image, lesion mask, context-ring mask, facts about what was drawn."""
    optics = _optics(rng, s)
    img = _skin(rng, s)
    L, soft = _lesion_shape(rng, s, plan)
    dout = cv2.distanceTransform((~L.mask).astype(np.uint8), cv2.DIST_L2, 3)
    R = _Ring(s, dout, math.sqrt(float(L.mask.sum()) / math.pi), optics.visible)
    facts: dict[str, Any] = {"background": _background_findings(rng, img, R)}
    if plan.context_cue is not None:
        _CONTEXTS[plan.context_cue](rng, img, R, plan.context_strength)
    _paint_lesion(rng, img, L, soft, plan)          # over its surroundings
    artifacts = []
    if rng.random() < 0.4:
        _hairs(rng, img)
        artifacts.append("hairs")
    if rng.random() < 0.2:
        _bubbles(rng, img)
        artifacts.append("gel bubbles")
    if rng.random() < 0.1:
        _ruler(rng, img)
        artifacts.append("ruler")
    if rng.random() < 0.12:
        _glare(rng, img)
        artifacts.append("glare")
    _apply_optics(rng, img, optics)
    if optics.field is not None:
        artifacts.append("dermoscope border")
    img = cv2.GaussianBlur(img, (0, 0), 0.5 * s / 224)   # lens softness
    out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    facts.update(structures=sorted(set(L.structures)), artifacts=artifacts,
                 lesion_center=[round(L.cx, 1), round(L.cy, 1)], lesion_radius=round(R.r_eq, 1))
    return out, L.mask, R.mask, facts


def _case_id(index: int, n: int) -> str:
    return f"derm-{index:0{max(5, len(str(n - 1)))}d}"


def _png(path: Path, arr: np.ndarray) -> None:
    # zlib level 3: about 3x faster than the default 6 for ~10 % larger files (~45 KB per image at 224 px)
    ok, buf = cv2.imencode(".png", arr[..., ::-1] if arr.ndim == 3 else arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def draw_case(seed: int, index: int, label: str, image_size: int = 224, single_source: str | None = None) -> dict[str, Any]:
    """Draw one case in memory: ``image`` (uint8 RGB), ``mask`` / ``context`` (bool) and the item fields.
    Independent streams for plan, metadata, note and image: editing the note templates never moves a pixel.
    ``single_source``: a known-answer control case in which only that source depends on the label."""
    plan_ss, meta_ss, note_ss, image_ss = np.random.SeedSequence([seed, index]).spawn(4)
    if single_source is None:
        plan = _plan(np.random.default_rng(plan_ss), label)
        md = _metadata(np.random.default_rng(meta_ss), label, plan.metadata_kind)
    else:
        plan, decoy = _single_source_plan(np.random.default_rng(plan_ss), label, single_source)
        md = _single_source_metadata(np.random.default_rng(meta_ss), label, single_source, decoy)
    note = _note(np.random.default_rng(note_ss), plan, md)
    image, mask, context, facts = _render(np.random.default_rng(image_ss), plan, image_size)
    extras = {"ambiguous": plan.evidence is None, "lesion_look": plan.lesion_look,
              "lesion_strength": round(plan.lesion_strength, 3), "pigmented": plan.pigmented,
              "context_cue": plan.context_cue, "context_strength": round(plan.context_strength, 3),
              "note_kind": plan.note_kind, "note_class": plan.note_class, "metadata_kind": plan.metadata_kind,
              **facts}
    if single_source is not None:
        extras["single_source"] = single_source
        if single_source == "metadata":
            extras["planted_feature"] = CONTROL_PLANTED_FEATURE
    return {"image": image, "mask": mask, "context": context, "label": label, "note": note, "metadata": md,
            "evidence": plan.evidence, "extras": extras}


def _write_case(job: tuple[Any, ...]) -> dict[str, Any]:
    seed, index, n, label, image_size, root, *rest = job   # rest: (single_source,) for control cohorts
    case = draw_case(seed, index, label, image_size, *rest)
    cid = _case_id(index, n)
    out = Path(root)
    _png(out / "images" / f"{cid}.png", case.pop("image"))
    _png(out / "masks" / f"{cid}.png", case.pop("mask").astype(np.uint8) * 255)
    _png(out / "context" / f"{cid}.png", case.pop("context").astype(np.uint8) * 255)
    return {"case_id": cid, "image_path": f"images/{cid}.png", "mask_path": f"masks/{cid}.png",
            "context_path": f"context/{cid}.png", "group": cid, **case}


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def default_cache_dir(n: int, seed: int, image_size: int, single_source: str | None = None) -> Path:
    root = Path(os.environ.get("FUSIONLENS_CACHE") or Path.home() / ".cache" / "fusionlens")
    tail = f"-only-{single_source}" if single_source else ""
    return root / "cohorts" / f"dermatology-s{seed}-n{n}-{image_size}{tail}"


def _params(n: int, seed: int, image_size: int, single_source: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"n": n, "seed": seed, "image_size": image_size}
    if single_source is not None:   # absent for ordinary cohorts: their cached index stays valid
        p["single_source"] = single_source
    return p


def _load_index(root: Path, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The cached items, or None when the cache is missing, stale (other version / params) or incomplete."""
    try:
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if index.get("version") != GENERATOR_VERSION or index.get("params") != params:
        return None
    items = index.get("items", [])
    if len(items) != params["n"] or not all((root / it["image_path"]).is_file() for it in items):
        return None
    return items


def _generate(root: Path, n: int, seed: int, image_size: int, workers: int,
              single_source: str | None = None) -> list[dict[str, Any]]:
    for sub in ("images", "masks", "context"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if single_source is None:
        labels = sample_labels(n, seed)
        jobs: list[tuple[Any, ...]] = [(seed, i, n, labels[i], image_size, str(root)) for i in range(n)]
    else:   # controls: balanced classes (a known answer needs every class, not HAM10000's long tail)
        labels = list(np.random.default_rng([seed, n, 7919]).permutation([LABELS[i % len(LABELS)] for i in range(n)]))
        jobs = [(seed, i, n, labels[i], image_size, str(root), single_source) for i in range(n)]
    if workers <= 1 or n < 2 * workers:
        return [_write_case(j) for j in jobs]
    # forkserver: forking a process that already runs threads (torch, streamlit, OpenCV) can deadlock.
    # Like any spawned workers, they re-import the caller's main script: guard it with __name__ == "__main__".
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            return list(pool.map(_write_case, jobs, chunksize=max(1, min(64, n // (workers * 8)))))
    except BrokenProcessPool as e:
        raise RuntimeError("The dermatology generator's worker processes failed to start. When calling it from a "
                           "script, put the call under `if __name__ == \"__main__\":`, or pass workers=1.") from e


def generate_dermatology(n: int = 10000, seed: int = 0, cache_dir: str | Path | None = None,
                         workers: int | None = None, image_size: int = 224, single_source: str | None = None) -> Cohort:
    """The generated dermatology cohort (synthetic demo data), drawn once into ``cache_dir`` and loaded
    from its ``index.json`` afterwards. Splits 70/15/15 stratified by label (each case its own group).
    ``single_source`` (one of SINGLE_SOURCES): a known-answer control cohort, balanced classes, in which
    only that source carries the label (every case's ``evidence`` is that source)."""
    if single_source is not None and single_source not in SINGLE_SOURCES:
        raise ValueError(f"single_source must be one of {', '.join(SINGLE_SOURCES)}, not {single_source!r}.")
    if n < 1:
        raise ValueError("n must be at least 1.")
    if not 64 <= image_size <= 1024:
        raise ValueError(f"image_size must be between 64 and 1024 pixels, not {image_size}.")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(n, seed, image_size, single_source)
    params = _params(n, seed, image_size, single_source)
    records = _load_index(root, params)
    if records is None:
        records = _generate(root, n, seed, image_size, workers or os.cpu_count() or 1, single_source)
        splits = grouped_split([r["case_id"] for r in records], None, [r["label"] for r in records], seed=seed)
        for r, sp in zip(records, splits):
            r["split"] = sp
        tmp = root / "index.json.tmp"
        tmp.write_text(json.dumps({"version": GENERATOR_VERSION, "params": params, "items": records}))
        os.replace(tmp, root / "index.json")   # written last: a half-drawn cache is never mistaken for a full one
    items = [_item(root, r) for r in records]
    schema = fit_schema(DERM_SCHEMA, [it for it in items if it.split == "train"])
    evidence_counts = {e: sum(it.evidence == e for it in items) for e in EVIDENCE}
    info = {"generator": "dermatology", "version": GENERATOR_VERSION, **params,
            "evidence_counts": evidence_counts, "ambiguous": sum(bool(it.extras.get("ambiguous")) for it in items)}
    return Cohort(name="dermatology", labels=list(LABELS), items=items, modalities=["image", "note", "metadata"],
                  schema=schema, description=DESCRIPTION, synthetic=True, label_descriptions=dict(LABEL_DESCRIPTIONS),
                  info=info)


def _item(root: Path, r: dict[str, Any]) -> CohortItem:
    return CohortItem(case_id=r["case_id"], label=r["label"], split=r["split"], image_path=root / r["image_path"],
                      mask_path=root / r["mask_path"], context_path=root / r["context_path"], note=r["note"],
                      metadata=dict(r["metadata"]), evidence=r["evidence"], group=r["group"], extras=dict(r["extras"]))


# ---------------------------------------------------------------------------------------------
# Demo cases
# ---------------------------------------------------------------------------------------------

_KIND_TEST: dict[str, Callable[[CohortItem], bool]] = {
    "lesion": lambda it: it.evidence == "lesion" and it.note is not None,
    "context": lambda it: it.evidence == "context" and it.note is not None,
    "note": lambda it: it.evidence == "note",
    "metadata": lambda it: it.evidence == "metadata" and it.note is not None,
    "missing-note": lambda it: it.note is None and it.evidence in ("lesion", "context"),
    "ambiguous": lambda it: bool(it.extras.get("ambiguous")),
}


def _pick_demo(items: list[CohortItem], per_kind: int) -> list[tuple[str, CohortItem]]:
    """``per_kind`` test cases per kind, no case twice, preferring a different label each time."""
    used: set[str] = set()
    picked: list[tuple[str, CohortItem]] = []
    for kind in DEMO_KINDS:
        pool = [it for it in items if _KIND_TEST[kind](it) and it.case_id not in used]
        labels_seen: set[str] = set()
        for _ in range(per_kind):
            fresh = [it for it in pool if it.label not in labels_seen and it.case_id not in used]
            choice = fresh[0] if fresh else next((it for it in pool if it.case_id not in used), None)
            if choice is None:
                break
            used.add(choice.case_id)
            labels_seen.add(choice.label)
            picked.append((kind, choice))
    return picked


def write_demo_cases(cohort: Cohort, dest: str | Path, per_kind: int = 2) -> list[Path]:
    """Write test-split cases as ``dest/<case_id>/`` (image.png, mask.png, note.txt when there is a note,
    metadata.json with the label, the evidence and the demo ``kind``): lesion-, context-, note- and
    metadata-decided cases, cases without a note and ambiguous cases."""
    dest = Path(dest)
    folders = []
    for kind, it in _pick_demo(sorted(cohort.split("test"), key=lambda it: it.case_id), per_kind):
        folder = dest / it.case_id
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.image_path, folder / "image.png")
        shutil.copyfile(it.mask_path, folder / "mask.png")
        if it.note:
            (folder / "note.txt").write_text(it.note + "\n", encoding="utf-8")
        meta = {**it.metadata, "label": it.label, "evidence": it.evidence, "kind": kind}
        (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders


__all__ = ["LABELS", "DERM_SCHEMA", "SITES", "EVIDENCE", "DEMO_KINDS", "GENERATOR_VERSION", "generate_dermatology",
           "write_demo_cases", "sample_labels", "label_counts", "draw_case", "default_cache_dir",
           "SINGLE_SOURCES", "CONTROL_SITE", "CONTROL_PLANTED_FEATURE", "decisive_spans"]
