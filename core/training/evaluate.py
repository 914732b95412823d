"""Evaluate a model package on cases through the deployed path (validation, encoders, fusion, head)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..data import Cohort, CohortItem
from ..package import Package, posterior
from .metrics import classification_metrics


def check_labels(pkg: Package, items: Sequence[CohortItem]) -> None:
    """ValueError (one sentence) when the data has labels the model does not know."""
    missing = sorted({it.label for it in items} - set(pkg.labels))
    if missing:
        raise ValueError(f"the data has labels this model does not know: {', '.join(missing)}.")


def evaluate_package(pkg: Package, items: Sequence[CohortItem], batch: int = 64, n_boot: int = 200,
                     mc_samples: int | None = None, drop: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics of ``pkg`` on ``items``; ``drop``: modalities removed from every case (to measure how
    the model copes when, say, the note is missing)."""
    from dataclasses import replace

    bad = [m for m in drop if m not in ("image", "note", "metadata", "spectrum")]
    if bad:
        raise ValueError(f"cannot drop '{bad[0]}'; drop image, note, metadata or spectrum.")
    if set(pkg.modalities) <= set(drop):
        raise ValueError(f"dropping {', '.join(drop)} leaves this model with no input.")
    check_labels(pkg, items)
    det, mc, lv = [], [], []
    for start in range(0, len(items), batch):
        cases = [it.to_case(with_mask=False) for it in items[start:start + batch]]
        if drop:
            cases = [replace(c, **{m: None for m in drop}, **({"mask": None} if "image" in drop else {})) for c in cases]
        d, m, _, _ = pkg.run(cases, mc_samples, seed=start)
        det.append(d.logits)
        mc.append(m.logits)
        lv.append(m.log_var)
    post = posterior(torch.cat(det), torch.cat(mc, 1), torch.cat(lv, 1), pkg.temperature)
    y = np.array([pkg.labels.index(it.label) for it in items])
    return classification_metrics(y, post.calibrated.numpy(), post.probabilities.numpy(),
                                  post.normalised_entropy.numpy(), pkg.labels, n_boot=n_boot)


def select_items(cohort: Cohort, split: str) -> list[CohortItem]:
    return list(cohort.items) if split == "all" else cohort.split(split)
