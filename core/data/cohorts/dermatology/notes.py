"""Notes and metadata: HAM10000-like class-conditional age / sex / site, and the clinical note."""
from __future__ import annotations

from typing import Any

import numpy as np

from .plan import CONTROL_SITE, _pick, _Plan

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


def _single_source_metadata(rng: np.random.Generator, label: str, source: str, decoy: str) -> dict[str, Any]:
    md = _metadata(rng, decoy, "typical")
    if source == "metadata":
        md["localization"] = CONTROL_SITE[label]
    return md


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


#: note-only controls: label-independent decoy sentences are mixed in among the planted ones until the
#: planted words are a minority of the note (a share drawn per case from this range), so that a uniform or
#: random word attribution cannot meet the note criterion (IG mass on the planted words >= 0.6)
NOTE_DECOY_SHARE = (0.25, 0.45)
#: part of a note-only cohort's cache parameters (other cohorts' caches are untouched). 2: the label's own weak
#: phrases are taken out of note-only notes (:func:`_without_label_weak`)
NOTE_DECOY_VERSION = 2


def planted_word_share(note: str | None, cls: str) -> float:
    """Share of the note's words (whitespace tokens) inside the planted spans for ``cls``: what a uniform
    word attribution puts on them (NaN for an empty note)."""
    words = (note or "").split()
    if not words:
        return float("nan")
    spans = decisive_spans(note, cls)
    return sum(len(note[s:e].split()) for s, e in spans) / len(words)   # type: ignore[index]


def _without_label_weak(note: str | None, label: str) -> str | None:
    """``note`` without the weak phrases of ``label`` (``_note`` adds one to 30% of decisive notes). In a
    note-only control they carry the label outside the planted (decisive) sentences, so a model may rightly
    use words the known answer does not count; the decoys then add weak phrases of random classes only."""
    import re

    if not note:
        return note
    own = {t for t, group in _WEAK if label in group}
    kept = [s for s in re.split(r"(?<=[.!?])\s+", note) if s not in own]
    return " ".join(kept) if kept else note


def _with_decoys(rng: np.random.Generator, note: str | None, label: str, md: dict[str, Any]) -> str | None:
    """``note`` with label-independent sentences (vague history, a random class's weak phrases, the decoy
    metadata's age / sex / site) inserted at random sentence boundaries until the planted words make up
    at most a drawn share of the words."""
    import re

    if not note:
        return note
    target = float(rng.uniform(*NOTE_DECOY_SHARE))
    sentences = re.split(r"(?<=[.!?])\s+", note)
    vague = [str(v) for v in rng.permutation(_VAGUE)]
    used_meta = False
    while planted_word_share(" ".join(sentences), label) > target:
        u = rng.random()
        if u < 0.15 and not used_meta:
            s, used_meta = _metadata_sentence(rng, md), True
        elif u < 0.45:
            s = _weak_sentences(rng, str(rng.choice(list(_DECISIVE))), 1)[0]
        elif vague:
            s = vague.pop()
        else:
            break
        if s in sentences:
            continue
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), s)
    return " ".join(sentences)
