"""``explain_case``: every explanation of one case in one structured object.

Computing is separate from drawing: this returns arrays and numbers; ``core.plots`` (and the
dashboard) turn them into figures. The parts themselves are registered in ``core.explain.parts``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..case import Case
from ..package import Package, Prediction, to_jsonable
from ..package.predictor import predictions
from .context import ExplainContext
from .gradcam import resolve_cam
from .image_ig import encode_image_stages, plain_image_encoder, remember_stage_maps
from .parts import DEFAULT_PARTS, EXPLAIN_PARTS, PARTS, SKIP_ORDER, PartRun, run_order


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
                                           "note", "table", "spectrum", "modality", "image_attributions",
                                           "image_attribution_info", "faithfulness", "timings", "lesion_stream_cam",
                                           "skipped")}
        d = to_jsonable(d)
        d["prediction"] = self.prediction.to_dict()
        return d


def _predict(package: Package, case: Case, mc_samples: int | None, ctx: ExplainContext, shared: bool) -> Prediction:
    """The case's prediction from the context's features; ``shared``: its deterministic logits become the context's."""
    if not shared:
        return package.predict(case, mc_samples, 0, ctx.present_features())
    det, mc, present, warnings = package.run([case], mc_samples, 0, ctx.present_features())
    ctx.set_logits(det.logits[0])
    return predictions(package, [case], det, mc, present, warnings)[0]


def _context(package: Package, case: Case, target: int | None, features: dict[str, Any] | None,
             classify: bool, stage_maps: Sequence[Any] | None = None) -> ExplainContext:
    """The case's context; a plain image encoder runs as its stage maps, which are kept for the image parts
    (middle-stage IG, last-stage CAMs, stability): the CNN's front runs once per explanation, not per part.
    Image features given with their ``stage_maps`` keep those."""
    if features and "image" in features:
        ctx = ExplainContext(package, case, target, features, classify)
        if stage_maps is not None and ctx.inputs.get("image") is not None \
                and plain_image_encoder(package.model.encoders["image"]):
            remember_stage_maps(ctx, list(stage_maps))
        return ctx
    staged = encode_image_stages(package, case)
    if staged is None:
        return ExplainContext(package, case, target, features, classify)
    ctx = ExplainContext(package, case, target, {**(features or {}), "image": staged[0]}, classify)
    remember_stage_maps(ctx, staged[1])
    return ctx


class ExplainCancelled(Exception):
    """``explain_case`` was told to stop (its ``cancel`` event was set) between two parts."""


def explain_case(package: Package, case: Case, target: int | str | None = None, parts: Sequence[str] = DEFAULT_PARTS,
                 cam_methods: Sequence[str] = ("auto",), cam_layer: str = "auto", tta: bool = False,
                 ig_steps: int = 24, stability_samples: int = 8, shapley_samples: int = 40,
                 mc_samples: int | None = None, features: dict[str, Any] | None = None,
                 progress: Callable[[str, "Explanation"], None] | None = None,
                 cancel: threading.Event | None = None, stage_maps: Sequence[Any] | None = None) -> Explanation:
    """Explain ``case`` for ``target`` (class index or label; default: the predicted class).

    Every encoder runs once: the context's features feed the prediction too. ``features`` (modality ->
    encoder output, e.g. from a variant comparison sharing frozen encoders) skips those encoders;
    ``stage_maps``: the three stage maps ``features["image"]`` was made from (``from_stages`` of a plain image
    encoder with this package's weights), kept for the image parts like the maps of an image encoded here.
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

    # the prediction's pass (float model) also gives the context its logits: one fusion + head pass fewer
    shared = package.inference_model is package.model
    ctx = timed("context", _context, package, case, target, features, not shared, stage_maps)
    pred = timed("prediction", _predict, package, case, mc_samples, ctx, shared)
    ex = Explanation(pred, ctx.target, package.labels[ctx.target], timings=timings)
    if progress is not None:
        progress("prediction", ex)
    for modality in [m for m in SKIP_ORDER if not ctx.has(m)]:
        for name in PARTS:
            p = EXPLAIN_PARTS.get(name)
            if name in parts and modality in p.needs:
                ex.skipped[name] = p.skip_reason(modality, package.modalities)
    # "auto": the package's default heatmap (core.explain.gradcam.default_cam: measured per suite)
    cam_methods, cam_layer = resolve_cam(package, tuple(cam_methods), cam_layer, tta)
    run = PartRun(ctx, ex, timed, tuple(cam_methods), cam_layer, tta, ig_steps, stability_samples, shapley_samples)
    for name in run_order(parts):
        p = EXPLAIN_PARTS.get(name)
        if cancel is not None and cancel.is_set():
            raise ExplainCancelled(name)
        if all(ctx.has(m) for m in p.needs):
            p.run(run)
        if progress is not None:  # also for a part this case or model has nothing for (see ``skipped``)
            progress(name, ex)
    timings["total"] = round(sum(v for k, v in timings.items()), 4)
    return ex

