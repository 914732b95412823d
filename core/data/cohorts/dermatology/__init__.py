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

Modules, in drawing order: :mod:`.plan` (classes, evidence, how each modality is drawn; control plans),
:mod:`.notes` (metadata and clinical notes), :mod:`.canvas` (image primitives), :mod:`.optics` (skin,
dermoscope optics, artifacts), :mod:`.lesion`, :mod:`.context` (the ring around the lesion),
:mod:`.generation` (one case, the cached cohort) and :mod:`.demo` (demo case folders).
"""
from __future__ import annotations

from .demo import write_demo_cases
from .generation import default_cache_dir, draw_case, generate_dermatology
from .notes import decisive_spans
from .plan import (CONTROL_PLANTED_FEATURE, CONTROL_SITE, DEMO_KINDS, DERM_SCHEMA, DESCRIPTION, EVIDENCE,
                   GENERATOR_VERSION, HAM_COUNTS, LABEL_DESCRIPTIONS, LABELS, SINGLE_SOURCES, SITES, label_counts,
                   sample_labels)

__all__ = ["LABELS", "DERM_SCHEMA", "SITES", "EVIDENCE", "DEMO_KINDS", "GENERATOR_VERSION", "generate_dermatology",
           "write_demo_cases", "sample_labels", "label_counts", "draw_case", "default_cache_dir",
           "SINGLE_SOURCES", "CONTROL_SITE", "CONTROL_PLANTED_FEATURE", "decisive_spans",
           "HAM_COUNTS", "LABEL_DESCRIPTIONS", "DESCRIPTION"]
