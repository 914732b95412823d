"""The dataset form every cohort generator and real-data loader returns, and training consumes.

A :class:`Cohort` is a list of :class:`CohortItem` (one per case, with its split and true label)
plus what a model package needs to know about the data: label names, the tabular schema (with
normalisation statistics fitted on the training split), the spectrum grid, and a description of
where the data came from (``synthetic`` says whether it is generated demo data).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..case import Case
from ..errors import FusionLensError

SPLITS = ("train", "val", "test")


class DataError(FusionLensError, ValueError):
    """A dataset that can't be used; the message names the file / column / row and the problem."""


@dataclass
class CohortItem:
    case_id: str
    label: str
    split: str                                   # "train" | "val" | "test"
    image_path: Path | None = None
    mask_path: Path | None = None                # lesion mask (white = lesion)
    context_path: Path | None = None             # context-ring mask around the lesion
    note: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    spectrum: np.ndarray | None = None           # [n] on the cohort grid, or [n, 2] (wavelength, value)
    evidence: str | None = None                  # generator ground truth: lesion / context / note / metadata / spectrum / table
    group: str | None = None                     # e.g. HAM10000 lesion_id: cases of one group share a split
    extras: dict[str, Any] = field(default_factory=dict)

    def to_case(self, with_mask: bool = True, drop: Sequence[str] = ()) -> Case:
        """A validated :class:`core.Case` (the same path user uploads take). ``drop`` removes modalities."""
        return Case.from_inputs(
            image=None if "image" in drop or self.image_path is None else self.image_path,
            mask=self.mask_path if with_mask and "image" not in drop and self.mask_path is not None else None,
            note=None if "note" in drop else self.note,
            metadata=None if "metadata" in drop else (self.metadata or None),
            spectrum=None if "spectrum" in drop else self.spectrum,
            case_id=self.case_id)


@dataclass
class Cohort:
    name: str
    labels: list[str]
    items: list[CohortItem]
    modalities: list[str]                        # subset of image / note / metadata / spectrum, in model order
    schema: list[dict[str, Any]] = field(default_factory=list)   # TabularSchema features (see core.encoders.tabular)
    spectrum_grid: list[float] | None = None
    description: str = ""
    synthetic: bool = False
    label_descriptions: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)           # e.g. generator seed, sizes, construction notes

    def split(self, name: str) -> list[CohortItem]:
        return [it for it in self.items if it.split == name]

    def label_index(self, item: CohortItem) -> int:
        return self.labels.index(item.label)

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        c = Counter(it.label for it in self.items if split is None or it.split == split)
        return {k: c.get(k, 0) for k in self.labels}

    def training_data(self) -> dict[str, Any]:
        """What a model package records about the data it was trained on."""
        return {"cohort": self.name, "description": self.description, "synthetic": self.synthetic,
                "class_counts": {s: self.class_counts(s) for s in SPLITS}, **self.info}


def fit_schema(features: Sequence[Mapping[str, Any]], items: Iterable[CohortItem]) -> list[dict[str, Any]]:
    """Fill normalisation statistics (mean / std for numbers, most frequent category) from ``items``
    (the training split); declared names, types, units, ranges and categories are kept."""
    items = list(items)
    out = []
    for f in features:
        f = dict(f)
        vals = [it.metadata.get(f["name"]) for it in items]
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if f.get("type", "numeric") == "numeric":
            arr = np.asarray(vals, dtype=np.float64)
            f["mean"] = float(arr.mean()) if len(arr) else 0.0
            f["std"] = float(arr.std()) if len(arr) > 1 and arr.std() > 0 else 1.0
        else:
            counts = Counter(str(v) for v in vals)
            f["most_frequent"] = counts.most_common(1)[0][0] if counts else f["categories"][0]
        out.append(f)
    return out


def grouped_split(keys: Sequence[str], groups: Sequence[str] | None, labels: Sequence[str], fractions=(0.7, 0.15, 0.15),
                  seed: int = 0) -> list[str]:
    """Assign train / val / test so every group (e.g. one lesion photographed several times) stays in
    one split, stratified by label as far as grouping allows. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    groups = list(groups) if groups is not None else list(keys)
    by_label: dict[str, list[str]] = {}
    first_label: dict[str, str] = {}
    for g, y in zip(groups, labels):
        first_label.setdefault(g, y)
    for g, y in first_label.items():
        by_label.setdefault(y, []).append(g)
    assign: dict[str, str] = {}
    for y in sorted(by_label):
        gs = sorted(by_label[y])
        rng.shuffle(gs)
        n = len(gs)
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        for i, g in enumerate(gs):
            assign[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [assign[g] for g in groups]
