"""HAM10000's vocabulary, defined once: class names and frequencies, sexes, anatomical sites and the
metadata schema. The real-data loader (:mod:`core.data.loaders.ham10000`) and the generated
dermatology cohort (:mod:`core.data.cohorts.dermatology`) both use it, so a model trained on one reads
the other's cases.
"""
from __future__ import annotations

from typing import Any

LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]   # HAM10000 order
# HAM10000 counts (of 10,015 images): the long tail the generated cohort reproduces
COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
#: the generated cohort's descriptions (with the subtypes each class lumps together)
LABEL_DESCRIPTIONS = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion (seborrhoeic keratosis, solar lentigo, lichen-planus-like keratosis)",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic naevus",
    "vasc": "Vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
}
#: the real-data loader's shorter descriptions (recorded as such in the HAM10000 packages in assets/)
LABEL_DESCRIPTIONS_SHORT = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis-like lesion", "df": "Dermatofibroma",
    "mel": "Melanoma", "nv": "Melanocytic nevus", "vasc": "Vascular lesion"}
SITES = ["abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity",
         "neck", "scalp", "trunk", "upper extremity", "unknown"]
SEXES = ["male", "female", "unknown"]
#: the metadata columns of HAM10000_metadata.csv a case must have
COLUMNS = ("lesion_id", "image_id", "dx")

SCHEMA: list[dict[str, Any]] = [
    {"name": "age", "type": "numeric", "unit": "years", "min": 0, "max": 100,
     "description": "Age at the time of imaging (HAM10000 records it in steps of 5 years)."},
    {"name": "sex", "type": "categorical", "categories": list(SEXES), "description": "Sex as recorded."},
    {"name": "localization", "type": "categorical", "categories": list(SITES),
     "description": "Anatomical site of the lesion (HAM10000's 15 sites)."},
]

__all__ = ["LABELS", "COUNTS", "LABEL_DESCRIPTIONS", "LABEL_DESCRIPTIONS_SHORT", "SITES", "SEXES", "COLUMNS", "SCHEMA"]
