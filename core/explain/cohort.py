"""Explanations measured against the generator's ground truth on a cohort split.

For each case with an image: Grad-CAM mass in the lesion (the cohort's mask), the pointing game,
and whether the top modality by exact Shapley value is the modality the generator put the decisive
evidence in ("lesion" and "context" evidence both live in the image)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data import CohortItem
from ..package import Package
from .context import ExplainContext
from .gradcam import image_cam
from .lesion_context import cam_shares, context_ring
from .modality import modality_shapley

EVIDENCE_MODALITY = {"lesion": "image", "context": "image", "note": "note", "metadata": "metadata", "spectrum": "spectrum"}


def cohort_faithfulness(pkg: Package, items: Sequence[CohortItem], method: str = "gradcam") -> dict[str, Any]:
    from ..case import CaseError

    rows = []
    for it in items:
        case = it.to_case(with_mask=True)
        try:
            ctx = ExplainContext(pkg, case)
        except CaseError:  # the case has none of this model's inputs (a note-only model, no note)
            continue
        row: dict[str, Any] = {"evidence": it.evidence, "correct": pkg.labels[ctx.target] == it.label}
        if ctx.has("image") and case.mask is not None:
            s = cam_shares(image_cam(ctx, method), case.mask, context_ring(case.mask))
            row.update(lesion_share=s["lesion"], context_share=s["context"], hit=s["pointing_game"]["hit_lesion"])
        if ctx.has("image") and "local_pixels" in ctx.inputs["image"]:  # dual expert: its own lesion gate
            with __import__("torch").no_grad():
                f = ctx.model.encoders["image"](**ctx.inputs["image"])
            row["lesion_gate"] = float(f.extras["lesion_gate"][0])
        sh = modality_shapley(ctx)
        if it.evidence in EVIDENCE_MODALITY and sh["top_modality"] is not None:
            row["shapley_agrees"] = sh["top_modality"] == EVIDENCE_MODALITY[it.evidence]
        rows.append(row)

    def mean(key: str, where=lambda r: True) -> float:
        v = [float(r[key]) for r in rows if key in r and r[key] is not None and not
             (isinstance(r[key], float) and np.isnan(r[key])) and where(r)]
        return float(np.mean(v)) if v else float("nan")

    return {"n": len(rows), "method": method,
            "cam_lesion_share_lesion_decided": mean("lesion_share", lambda r: r["evidence"] == "lesion"),
            "cam_lesion_share_context_decided": mean("lesion_share", lambda r: r["evidence"] == "context"),
            "cam_context_share_context_decided": mean("context_share", lambda r: r["evidence"] == "context"),
            "pointing_game_rate": mean("hit"),
            "shapley_top_equals_evidence": mean("shapley_agrees"),
            # dual-expert models: does the lesion / context gate lean on context where the context decides?
            "lesion_gate_lesion_decided": mean("lesion_gate", lambda r: r["evidence"] == "lesion"),
            "lesion_gate_context_decided": mean("lesion_gate", lambda r: r["evidence"] == "context"),
            "n_lesion_decided": sum(r["evidence"] == "lesion" for r in rows),
            "n_context_decided": sum(r["evidence"] == "context" for r in rows)}
