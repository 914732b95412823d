"""The explanation parts, each registered once: what it needs, which default lists it is in, how it runs.

``explain_case`` loops over this registry; the CLI, the dashboard and the report take their part lists
from it (``PARTS``, ``DEFAULT_PARTS``, ``default_parts(use)``) instead of typing them out.

A part's function takes a :class:`PartRun` (the case's :class:`ExplainContext`, the
:class:`~core.explain.engine.Explanation` being filled, the ``explain_case`` options and its timer)
and writes its result into the explanation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import numpy as np
import torch

from ..registry import Registry
from .attributions import image_attributions, note_attributions, spectrum_attributions, table_attributions
from .context import ExplainContext
from .gradcam import cam_stability, image_cam, stability_cam
from .image_ig import middle_stage_ig, plain_image_encoder
from .modality import modality_shapley

USES = ("explain", "report", "compare")   # the default lists: `explain`, `report` (+ faithfulness), `compare`
SKIP_ORDER = ("note", "metadata", "spectrum", "image")  # ``Explanation.skipped`` lists the missing inputs in this order


@dataclass
class PartRun:
    """What a part's function gets: the case held still, the explanation so far, the options, a timer."""
    ctx: ExplainContext
    ex: Any                                   # core.explain.engine.Explanation
    timed: Callable[..., Any]                 # timed(name, fn, *args) records timings[name]
    cam_methods: tuple[str, ...] = ("gradcam",)
    cam_layer: str = "last stage"
    tta: bool = False
    ig_steps: int = 24
    stability_samples: int = 8
    shapley_samples: int = 40


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[PartRun], None]
    needs: tuple[str, ...] = ()               # modalities the case must have (else the part is skipped)
    unused: str = ""                          # the sentence in ``skipped`` when the model does not use them
    uses: frozenset[str] = field(default_factory=frozenset)  # the default lists (USES) the part is in
    options: tuple[str, ...] = ()             # explain_case options (besides the target) its result depends on
    after: str | None = None                  # runs right after this part when both are asked for
    last: bool = False                        # runs after every other part (it reads their results)

    def skip_reason(self, modality: str, model_modalities: Collection[str]) -> str:
        """Why the part was not computed for a case without ``modality``."""
        return f"the case has no {modality}" if modality in model_modalities else self.unused


EXPLAIN_PARTS: Registry[Part] = Registry("explanation part")


def part(name: str, **kw: Any) -> Callable[[Callable[[PartRun], None]], Callable[[PartRun], None]]:
    """Register the decorated function as the explanation part ``name`` (keywords: the ``Part`` fields)."""
    def deco(fn: Callable[[PartRun], None]) -> Callable[[PartRun], None]:
        EXPLAIN_PARTS.register(name)(Part(name, fn, **kw))
        return fn

    return deco


_ALL = frozenset(USES)
_IMAGE: dict[str, Any] = {"needs": ("image",), "unused": "This model does not use images."}
_CAM_OPTIONS = ("cam_methods", "cam_layer", "tta")


@part("cam", uses=_ALL, options=_CAM_OPTIONS, **_IMAGE)
def _cam(r: PartRun) -> None:
    ex, ctx = r.ex, r.ctx
    ex.cam_layer = r.cam_layer
    for m in r.cam_methods:
        ex.cams[m] = r.timed(f"cam:{m}", image_cam, ctx, m, r.cam_layer, r.tta)
    if ctx.model.encoders["image"].dual_expert and r.cam_methods:  # the lesion stream's map too
        ex.lesion_stream_cam = r.timed("cam:lesion_stream", image_cam, ctx, r.cam_methods[0], r.cam_layer, False,
                                       "lesion")


@part("lesion_context", uses=_ALL, options=_CAM_OPTIONS, after="cam", **_IMAGE)
def _lesion_context(r: PartRun) -> None:
    if r.ex.cams:
        r.ex.lesion_context = r.timed("lesion_context", lesion_context_report, r.ctx, r.ex.cams)


@part("stability", uses=frozenset({"explain", "report"}), options=("cam_methods", "cam_layer", "stability_samples"),
      **_IMAGE)
def _stability(r: PartRun) -> None:
    # the first CAM asked for; a map (e.g. the dermatology default, IG from the median features) has no MC-dropout
    # stability, so with maps only the stability is last-stage Grad-CAM's (gradcam.stability_cam)
    method = stability_cam(r.cam_methods)
    s = r.timed("stability", cam_stability, r.ctx, method, r.cam_layer, r.stability_samples)
    r.ex.stability = {**s, "method": method} if isinstance(s, dict) else s   # which heatmap's stability it is


@part("note", uses=_ALL, options=("ig_steps",), needs=("note",), unused="This model does not use a clinical note.")
def _note(r: PartRun) -> None:
    r.ex.note = r.timed("note", note_attributions, r.ctx, r.ig_steps, r.ig_steps)


@part("table", uses=_ALL, options=("ig_steps", "shapley_samples"), needs=("metadata",),
      unused="This model does not use metadata.")
def _table(r: PartRun) -> None:
    r.ex.table = r.timed("table", table_attributions, r.ctx, r.ig_steps, r.shapley_samples)


@part("spectrum", uses=_ALL, options=("ig_steps",), needs=("spectrum",), unused="This model does not use a spectrum.")
def _spectrum(r: PartRun) -> None:
    r.ex.spectrum = r.timed("spectrum", spectrum_attributions, r.ctx, r.ig_steps)


@part("modality", uses=_ALL)
def _modality(r: PartRun) -> None:
    r.ex.modality = r.timed("modality", modality_shapley, r.ctx)


@part("image_ig", **_IMAGE)
def _image_ig(r: PartRun) -> None:  # on the middle stage: converges where pixel IG does not, at a fraction of the cost
    info = r.timed("image_ig", middle_stage_ig, r.ctx)
    r.ex.image_attributions["integrated_gradients"] = info.pop("map")
    r.ex.image_attribution_info["integrated_gradients"] = info


@part("occlusion", **_IMAGE)
def _occlusion(r: PartRun) -> None:
    r.ex.image_attributions["occlusion"] = r.timed("occlusion", image_attributions, r.ctx, "occlusion")


@part("faithfulness", uses=frozenset({"report"}), options=(*_CAM_OPTIONS, "ig_steps", "shapley_samples"), last=True)
def _faithfulness_part(r: PartRun) -> None:
    r.timed("faithfulness", _faithfulness, r.ctx, r.ex, r.cam_layer)


@part("image_ig_pixels", **_IMAGE)
def _image_ig_pixels(r: PartRun) -> None:
    r.ex.image_attributions["integrated_gradients_pixels"] = r.timed("image_ig_pixels", image_attributions, r.ctx,
                                                                     "integrated_gradients")
    r.ex.image_attribution_info["integrated_gradients_pixels"] = {"layer": "pixels", "n_steps": 16,
                                                                  "baseline": "black image"}


PARTS: tuple[str, ...] = tuple(EXPLAIN_PARTS.names())


def default_parts(use: str = "explain", package: Any = None) -> tuple[str, ...]:
    """The default part list of ``use`` (``explain``: the fast parts; ``report``: those + faithfulness;
    ``compare``: the per-variant parts), in registry order. With ``package``: only the parts whose
    inputs that model uses."""
    if use not in USES:
        raise ValueError(f"unknown part list '{use}'; choose from: {', '.join(USES)}.")
    mods = None if package is None else set(package.modalities)
    return tuple(n for n in PARTS if use in EXPLAIN_PARTS.get(n).uses
                 and (mods is None or set(EXPLAIN_PARTS.get(n).needs) <= mods))


DEFAULT_PARTS: tuple[str, ...] = default_parts("explain")


def run_order(parts: Collection[str]) -> list[str]:
    """The order parts run in: as given, but a part with ``after`` right behind that part when it came
    before it, and the ``last`` parts at the end."""
    order = list(dict.fromkeys(parts))
    for name in list(order):
        p = EXPLAIN_PARTS.get(name)
        if p.after in order and order.index(name) < order.index(p.after):
            order.remove(name)
            order.insert(order.index(p.after) + 1, name)
    for name in [n for n in order if EXPLAIN_PARTS.get(n).last]:
        order.remove(name)
        order.append(name)
    return order


def _faithfulness(ctx: ExplainContext, ex: Any, cam_layer: str) -> None:
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
    from ..imaging import auto_lesion_mask, context_ring, keep_region
    from .lesion_context import cam_shares, split_heatmap

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
    # the image as it is is the case itself: with a plain image encoder its value is the case's own calibrated
    # probability (the context's logits), so only the three altered images run through the CNN
    own = ctx.logits is not None and plain_image_encoder(ctx.model.encoders["image"])
    names = [k for k in variants if not (own and k == "full")]
    pixels = ctx.pixel_encoder.prepare([variants[k] for k in names])["pixels"]
    fixed = {k: v.expand(len(pixels), *v.shape[1:]) for k, v in ctx.image_fixed().items()}
    with torch.no_grad():
        probs = dict(zip(names, torch.softmax(ctx.calibrated_logits("image", {"pixels": pixels, **fixed}), -1)[:, ctx.target]))
        if own:
            probs["full"] = torch.softmax(ctx.logits / ctx.temperature, -1)[ctx.target]
    return {"mask_source": source, "mask": mask, "ring": ring, "shares": shares,
            "lesion_only_map": maps["lesion_only"], "context_only_map": maps["context_only"],
            "confidence": {k: float(probs[k]) for k in variants}}
