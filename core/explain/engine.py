"""``explain_case``: every explanation of one case in one structured object.

Computing is separate from drawing: this returns arrays and numbers; ``core.plots`` (and the
dashboard) turn them into figures.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..case import Case
from ..package import Package, Prediction, to_jsonable
from .attributions import image_attributions, note_attributions, spectrum_attributions, table_attributions
from .context import ExplainContext
from .gradcam import CAM_METHODS, cam_stability, image_cam
from .image_ig import middle_stage_ig
from .modality import modality_shapley

PARTS = ("cam", "lesion_context", "stability", "note", "table", "spectrum", "modality", "image_ig", "occlusion",
         "faithfulness", "image_ig_pixels")
DEFAULT_PARTS = ("cam", "lesion_context", "stability", "note", "table", "spectrum", "modality")


@dataclass
class Explanation:
    prediction: Prediction
    target: int
    target_label: str
    cams: dict[str, np.ndarray] = field(default_factory=dict)          # method -> [S, S] in [0, 1]
    lesion_stream_cam: np.ndarray | None = None                         # dual-expert models: the lesion stream's map
    cam_layer: str | None = None
    lesion_context: dict[str, Any] | None = None
    stability: dict[str, Any] | None = None
    note: dict[str, Any] | None = None
    table: dict[str, Any] | None = None
    spectrum: dict[str, Any] | None = None
    modality: dict[str, Any] | None = None
    image_attributions: dict[str, np.ndarray] = field(default_factory=dict)
    image_attribution_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> steps, layer, delta
    faithfulness: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)               # part -> why it was not computed

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("target", "target_label", "cams", "cam_layer", "lesion_context", "stability",
                                           "note", "table", "spectrum", "modality", "image_attributions", "image_attribution_info", "faithfulness", "timings",
                                           "lesion_stream_cam",
                                           "skipped")}
        d = to_jsonable(d)
        d["prediction"] = self.prediction.to_dict()
        return d


class ExplainCancelled(Exception):
    """``explain_case`` was told to stop (its ``cancel`` event was set) between two parts."""


def explain_case(package: Package, case: Case, target: int | str | None = None, parts: Sequence[str] = DEFAULT_PARTS,
                 cam_methods: Sequence[str] = ("gradcam",), cam_layer: str = "last stage", tta: bool = False,
                 ig_steps: int = 24, stability_samples: int = 8, shapley_samples: int = 40,
                 mc_samples: int | None = None, features: dict[str, Any] | None = None,
                 progress: Callable[[str, "Explanation"], None] | None = None,
                 cancel: threading.Event | None = None) -> Explanation:
    """Explain ``case`` for ``target`` (class index or label; default: the predicted class).

    Every encoder runs once: the context's features feed the prediction too. ``features`` (modality ->
    encoder output, e.g. from a variant comparison sharing frozen encoders) skips those encoders.
    Parts run in the order given (the lesion/context check after the heatmaps, faithfulness last);
    ``progress(part, explanation)`` is called as each is done ("prediction" first), and a set
    ``cancel`` event stops the work between parts (``ExplainCancelled``)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown explanation part '{unknown[0]}'; choose from: {', '.join(PARTS)}.")
    if isinstance(target, str):
        if target not in package.labels:
            raise ValueError(f"unknown class '{target}'; the model's classes are: {', '.join(package.labels)}.")
        target = package.labels.index(target)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        timings[name] = round(time.perf_counter() - t0, 4)
        return out

    ctx = timed("context", ExplainContext, package, case, target, features)
    pred = timed("prediction", package.predict, case, mc_samples, 0, ctx.present_features())
    ex = Explanation(pred, ctx.target, package.labels[ctx.target], timings=timings)
    if progress is not None:
        progress("prediction", ex)
    has_image = ctx.has("image")
    for part, modality in (("note", "note"), ("table", "metadata"), ("spectrum", "spectrum")):
        if part in parts and not ctx.has(modality):
            what = {"note": "a clinical note", "metadata": "metadata", "spectrum": "a spectrum"}[modality]
            ex.skipped[part] = (f"the case has no {modality}" if modality in package.modalities
                                else f"This model does not use {what}.")
    for part in ("cam", "lesion_context", "stability", "image_ig", "occlusion", "image_ig_pixels"):
        if part in parts and not has_image:
            ex.skipped[part] = "the case has no image" if "image" in package.modalities else "This model does not use images."

    def cam() -> None:
        ex.cam_layer = cam_layer
        for m in cam_methods:
            ex.cams[m] = timed(f"cam:{m}", image_cam, ctx, m, cam_layer, tta)
        if "local_pixels" in ctx.inputs["image"] and cam_methods:  # dual expert: the lesion stream too
            ex.lesion_stream_cam = timed("cam:lesion_stream", image_cam, ctx, cam_methods[0], cam_layer, False, "lesion")

    def lesion_context() -> None:
        if ex.cams:
            ex.lesion_context = timed("lesion_context", lesion_context_report, ctx, ex.cams)

    def stability() -> None:
        ex.stability = timed("stability", cam_stability, ctx, cam_methods[0] if cam_methods else "gradcam", cam_layer,
                             stability_samples)

    def image_ig() -> None:  # on the middle stage: converges where pixel IG does not, at a fraction of the cost
        info = timed("image_ig", middle_stage_ig, ctx)
        ex.image_attributions["integrated_gradients"] = info.pop("map")
        ex.image_attribution_info["integrated_gradients"] = info

    def image_ig_pixels() -> None:
        ex.image_attributions["integrated_gradients_pixels"] = timed("image_ig_pixels", image_attributions, ctx,
                                                                     "integrated_gradients")
        ex.image_attribution_info["integrated_gradients_pixels"] = {"layer": "pixels", "n_steps": 16,
                                                                    "baseline": "black image"}

    def note() -> None:
        ex.note = timed("note", note_attributions, ctx, ig_steps, ig_steps)

    def table() -> None:
        ex.table = timed("table", table_attributions, ctx, ig_steps, shapley_samples)

    def spectrum() -> None:
        ex.spectrum = timed("spectrum", spectrum_attributions, ctx, ig_steps)

    def modality() -> None:
        ex.modality = timed("modality", modality_shapley, ctx)

    def occlusion() -> None:
        ex.image_attributions["occlusion"] = timed("occlusion", image_attributions, ctx, "occlusion")

    def faithfulness() -> None:
        timed("faithfulness", _faithfulness, ctx, ex, cam_layer)

    runnable = {"cam": (cam, has_image), "lesion_context": (lesion_context, has_image), "stability": (stability, has_image),
                "note": (note, ctx.has("note")), "table": (table, ctx.has("metadata")),
                "spectrum": (spectrum, ctx.has("spectrum")), "modality": (modality, True),
                "image_ig": (image_ig, has_image), "image_ig_pixels": (image_ig_pixels, has_image),
                "occlusion": (occlusion, has_image), "faithfulness": (faithfulness, True)}
    order = list(dict.fromkeys(parts))
    if "cam" in order and "lesion_context" in order and order.index("lesion_context") < order.index("cam"):
        order.remove("lesion_context")
        order.insert(order.index("cam") + 1, "lesion_context")
    if "faithfulness" in order:
        order.remove("faithfulness")
        order.append("faithfulness")
    for part in order:
        fn, ok = runnable[part]
        if cancel is not None and cancel.is_set():
            raise ExplainCancelled(part)
        if ok:
            fn()
        if progress is not None:  # also for a part this case or model has nothing for (see ``skipped``)
            progress(part, ex)
    timings["total"] = round(sum(v for k, v in timings.items()), 4)
    return ex


def _faithfulness(ctx: ExplainContext, ex: Explanation, cam_layer: str) -> None:
    from . import metrics as fm

    f = ex.faithfulness
    for method, cam in ex.cams.items():
        f[f"cam:{method}"] = fm.image_deletion_insertion(ctx, cam)
    if ex.cams:
        method = next(iter(ex.cams))
        f["cam_randomisation"] = fm.randomisation_check(ctx, lambda c: image_cam(c, method, cam_layer))
    if ex.note is not None:
        f["note"] = fm.token_deletion_insertion(ctx, ex.note)
    if ex.table is not None:
        f["table"] = {**fm.feature_deletion_insertion(ctx, ex.table), **fm.infidelity_sensitivity(ctx, "metadata")}
    if ex.spectrum is not None:
        f["spectrum"] = {**fm.spectrum_deletion_insertion(ctx, ex.spectrum), **fm.infidelity_sensitivity(ctx, "spectrum")}


def lesion_context_report(ctx: ExplainContext, cams: dict[str, np.ndarray]) -> dict[str, Any]:
    """CAM mass in lesion / context ring / background for each CAM, the pointing game, lesion-only and
    context-only maps, and seed 003's confidence check: the calibrated probability of the target when
    only the lesion, only the context, or neither is kept sharp (the rest blurred)."""
    from .lesion_context import auto_lesion_mask, cam_shares, context_ring, keep_region, split_heatmap

    img = ctx.case.image
    if ctx.case.mask is not None:
        mask, source = ctx.case.mask, "uploaded"
    else:
        mask, info = auto_lesion_mask(img, return_info=True)
        source = f"automatic ({info.get('method', 'otsu')})"
    ring = context_ring(mask)
    shares = {m: cam_shares(c, mask, ring) for m, c in cams.items()}
    first = next(iter(cams.values()))
    maps = split_heatmap(first, mask, ring)
    variants = {"full": img, "lesion_only": keep_region(img, mask), "context_only": keep_region(img, ring),
                "neither": keep_region(img, np.zeros_like(mask))}
    pixels = ctx.pixel_encoder.prepare(list(variants.values()))["pixels"]
    fixed = {k: v.expand(len(pixels), *v.shape[1:]) for k, v in ctx.image_fixed().items()}
    with torch.no_grad():
        probs = torch.softmax(ctx.calibrated_logits("image", {"pixels": pixels, **fixed}), -1)[:, ctx.target]
    return {"mask_source": source, "mask": mask, "ring": ring, "shares": shares,
            "lesion_only_map": maps["lesion_only"], "context_only_map": maps["context_only"],
            "confidence": {k: float(p) for k, p in zip(variants, probs)}}
