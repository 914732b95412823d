"""Grad-CAM family (pytorch-grad-cam) on the image encoder, through the whole fused model.

The other modalities of the case are held fixed (their cached features), the target is the chosen
class's calibrated logit. pytorch-grad-cam hooks a layer; it hooks a private copy of the image
encoder (a hook on the shared model would also record other sessions' forward passes), inside the
CAM's ``with`` block, which releases the hooks even on error.

Besides the encoder's own layers, a *layer product* (``"last × early stage"``) multiplies the chosen
method's map on the last stage by LayerCAM's map on the early stage (each scaled to [0, 1] at the input
size): the coarse, class-specific map gated by a finer one (the idea of Guided Grad-CAM, with LayerCAM as
the fine map). ``method="auto"`` / ``layer="auto"`` mean the package's default (:func:`default_cam`): a
per-suite choice measured against real lesion masks (``scripts/ham10000_gradcam.py``), plain Grad-CAM on
the last stage elsewhere.
"""
from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np
import torch

from .context import ExplainContext, ImageTargetModel
from .image_ig import stage_maps

#: name -> (pytorch-grad-cam class name, uses gradients, relative cost); the dashboard lists these without a
#: hand-kept table. pytorch-grad-cam is imported when a CAM is computed (``cam_class``), not with this module:
#: its package imports torchvision and scikit-learn (~3 CPU s), which a process that never draws a CAM
#: (a Ray actor without ``cam_summary``, the CLI's parser) should not pay.
CAM_METHODS: dict[str, tuple[str, bool, str]] = {
    "gradcam": ("GradCAM", True, "fast"),
    "gradcam++": ("GradCAMPlusPlus", True, "fast"),
    "xgradcam": ("XGradCAM", True, "fast"),
    "layercam": ("LayerCAM", True, "fast"),
    "hirescam": ("HiResCAM", True, "fast"),
    "eigencam": ("EigenCAM", False, "fast"),
    "scorecam": ("ScoreCAM", False, "slow: one forward pass per channel of the layer"),
}


#: heatmaps that are not pytorch-grad-cam CAMs (core.explain.image_maps.image_map; each reads its own fixed layer, so
#: the layer picker does not apply): name -> (the layer it reads, relative cost, one-line description). Offered beside
#: ``CAM_METHODS`` (:func:`heatmap_methods`) for packages whose image encoder can draw them (a plain encoder, not a dual
#: expert). Feature occlusion is the map the known-answer controls validated (core/explain/controls.py,
#: ``CONTROL_FEATURE_MAP``: lesion-only control lesion mass ratio 6.42, pointing game in the lesion 0.94, chance 0.10,
#: fresh seed 9305; the last-stage Grad-CAM 2.90 / 0.39 there). Cost on the shipped dermatology ``mmtm``, one torch
#: thread, same run as Grad-CAM (cases of seed 9932): median 2.3 s per map vs Grad-CAM 0.09 s (6 cases, load ~3;
#: faithfulness_maps_choice.md); 9.1 s vs 0.26 s (8 cases, load ~9, channels-last batches; commit 300e84c, no results
#: file) -- far above the ~0.3 s a default heatmap may cost, so it is a selectable method marked slow (the suite's
#: default was Grad-CAM until session 10; now IG from the median features, below). Issue #15 §4,
#: assets/models/dermatology/: chosen by the rule in faithfulness_maps_choice.md on
#: choice seed 9932 (10 lesion- + 10 context-decided cases; 13 fusion variants: decisive-region pointing game median
#: 0.70, chance 0.19), then measured once on report seed 9931 (20 + 20 cases, predicted class; faithfulness_maps in
#: each package's metrics.json, table faithfulness_feature_occlusion.md): pointing game best 0.80 (concat), median
#: 0.68 (chance median 0.22); lesion mass ratio on lesion-decided cases best 7.05 (irene), median 5.03; median 3.85 s
#: per map over the variants (shared CPU); the two dual experts not drawn.
MAP_METHODS: dict[str, tuple[str, str, str]] = {
    "feature_occlusion": (
        "middle stage", "slow: one pass of the later blocks per 14 × 14 cell (196; about 2.3 s per case on a quiet CPU thread)",
        "Feature occlusion: each 16 px cell of the middle stage replaced by the image's median features; red = where "
        "that lowers the class's logit. The map the known-answer controls validated (the lesion-only control's "
        "lesion: mass ratio 6.42 / 6.57, peak in it 94% / 100% on fresh seeds 9305 / 9306; last-stage Grad-CAM "
        "2.90 / 3.28, 39% / 33%)."),
    # Session 10: integrated gradients on the same middle stage from feature occlusion's fill (the image's per-channel
    # median features) instead of the product's black-image activation: 8 Gauss-Legendre steps + the baseline's row,
    # forward and backward through the later blocks in one batch (core.explain.image_maps.median_ig). The dermatology
    # suite's default since session 10, by the rule written before measuring (assets/models/dermatology/
    # median_ig_choice.md): known-answer controls on fresh seed 9307 (70 cases each; controls_9307_median_ig.json):
    # lesion-only lesion ratio 7.28, pointing 0.99 (chance 0.10; randomised copy 2.47 / 0.40; last-stage Grad-CAM 3.08
    # / 0.51), context-only context ratio 1.93 (randomised 1.18; its lesion ratio 2.07, the <= 1 criterion missed);
    # shipped suite on fresh seed 9935 (20 + 20 cases, 13 fusion variants; faithfulness_median_ig.md): decisive-region
    # pointing median 0.78, best 0.90 (chance 0.22), lesion ratio median 5.25 (the gate; report seed 9937:
    # median 0.82, best 0.95, chance 0.19, lesion ratio median 4.71); cost on the shipped mmtm, one thread,
    # same process as Grad-CAM: median 0.13 s per case vs 0.04 s (n = 20, load ~1.6).
    "median_ig": (
        "middle stage", "fast",
        "IG from the median features: integrated gradients on the 14 × 14 middle stage from the image's own median "
        "features (plain skin) to the case's; red = cells whose share of the class's logit above that plain-skin "
        "reference is positive. The known-answer controls validated it on fresh seed 9307 (the lesion-only control's "
        "lesion: mass ratio 7.28, peak in it 99% of 70 cases, a random point 10%; last-stage Grad-CAM 3.08, 51%); "
        "about 0.13 s per case."),
}
#: where each suite's heatmaps were validated against known-answer controls (core/explain/controls.py) and measured on
#: the shipped packages (scripts/faithfulness_table.py --method): (cohort, image architecture) -> map method. Not the
#: default heatmap (that is ``SUITE_DEFAULTS`` / :func:`default_cam`); the dashboard names it beside the default.
#: Dermatology: feature occlusion (session 9) and, since session 10, IG from the median features, which is also the
#: suite's default (``SUITE_DEFAULTS``); the page names the validated map where it is not the default.
VALIDATED_MAPS: dict[tuple[str, str], str] = {("dermatology", "efficientnet_lite0"): "median_ig"}
#: each validated map's lesion-only control figures, as the page quotes them: the share of fresh cases whose map peaks
#: in the lesion, last-stage Grad-CAM's share on the same cases, a random point's (the lesion's area share), the seed
#: and the number of cases (controls_9306.json: feature occlusion; controls_9307_median_ig.json: median IG)
CONTROL_FIGURES: dict[str, dict[str, float]] = {
    "feature_occlusion": {"peak_in_lesion": 1.00, "gradcam": 0.33, "random": 0.10, "seed": 9306, "n": 70},
    "median_ig": {"peak_in_lesion": 0.99, "gradcam": 0.51, "random": 0.10, "seed": 9307, "n": 70},
}


def heatmap_methods(package: object = None) -> list[str]:
    """Every heatmap method the dashboard offers for ``package``: the CAMs, then the maps of ``MAP_METHODS`` its image
    encoder can draw (a plain image encoder; a dual expert's two streams have no one middle stage). No package: all."""
    if package is None:
        return [*CAM_METHODS, *MAP_METHODS]
    from .image_ig import plain_image_encoder

    encoders = getattr(getattr(package, "model", None), "encoders", {})
    plain = "image" in encoders and plain_image_encoder(encoders["image"])
    return [*CAM_METHODS, *(MAP_METHODS if plain else ())]


def method_cost(method: str) -> str:
    """'fast', or why a heatmap method is slow (``CAM_METHODS`` / ``MAP_METHODS``)."""
    if method in MAP_METHODS:
        return MAP_METHODS[method][1]
    if method in CAM_METHODS:
        return CAM_METHODS[method][2]
    raise ValueError(f"unknown heatmap method '{method}'; choose one of: {', '.join(heatmap_methods())}.")


def validated_map(package: object) -> str | None:
    """The map the known-answer controls validated for ``package``'s suite (``VALIDATED_MAPS``), when its image
    encoder can draw it; else None."""
    encoders = getattr(getattr(package, "model", None), "encoders", {})
    enc = encoders["image"] if "image" in encoders else None
    cfg = getattr(package, "cfg", None)
    m = VALIDATED_MAPS.get((getattr(cfg, "cohort", None), getattr(enc, "arch", None)))
    return m if m is not None and m in heatmap_methods(package) else None


def cam_class(method: str) -> type:
    """The pytorch-grad-cam class of ``method`` (a key of ``CAM_METHODS``), imported on first use."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method '{method}'; choose one of: {', '.join(CAM_METHODS)}.")
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method][0])

#: combined layers: name -> (coarse layer, fine layer); the map is method(coarse) x LayerCAM(fine), each scaled
#: to [0, 1] at the input size, rescaled to max 1. LayerCAM for the fine layer: measured on the HAM10000
#: validation masks, Grad-CAM-style channel weights at the early stage are at chance (pointing game 0.29,
#: chance 0.29), LayerCAM's element-wise positive gradients are not.
LAYER_PRODUCTS: dict[str, tuple[str, str]] = {"last × early stage": ("last stage", "early stage")}
FINE_METHOD = "layercam"
AUTO = "auto"

#: The package default where one was measured, per (cohort, image architecture). HAM10000 (EfficientNet-Lite0 at
#: 200 x 150; scripts/ham10000_gradcam.py, predicted class): chosen on the validation masks (gradcam_masks_val.json,
#: 140 images, 4 packages): Grad-CAM on the last stage 1.39-1.62 median lesion mass ratio / 0.49-0.56 pointing game
#: (chance 0.29), Grad-CAM++ there 2.00-2.11 / 0.75-0.82, Grad-CAM++ x early-stage LayerCAM 2.49-2.76 / 0.93-0.95;
#: reported once on the test split (gradcam_masks.json, 140 images, 15 packages): 1.30-1.67 / 0.51-0.61 before,
#: 2.51-2.81 / 0.89-0.97 now (chance 0.30).
#: Dermatology (the generated suite, EfficientNet-Lite0 at 224 px, plain encoders): IG from the median features
#: (``MAP_METHODS["median_ig"]``; it reads its own middle stage, the layer is only what the page's layer picker shows),
#: chosen by the rule in assets/models/dermatology/median_ig_choice.md (known-answer controls on seed 9307, the shipped
#: suite on seed 9935, reported on 9937, cost <= 0.3 s per case); dual experts keep Grad-CAM (no one middle stage).
SUITE_DEFAULTS: dict[tuple[str, str], tuple[str, str]] = {("ham10000", "efficientnet_lite0"): ("gradcam++", "last × early stage"),
                                                          ("dermatology", "efficientnet_lite0"): ("median_ig", "last stage")}
DEFAULT_CAM = ("gradcam", "last stage")
NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
         "hirescam": "HiResCAM", "eigencam": "EigenCAM", "scorecam": "Score-CAM", "feature_occlusion": "Feature occlusion",
         "median_ig": "IG from the median features"}


def cam_layer_names(encoder: torch.nn.Module) -> list[str]:
    """The layers a CAM can be drawn on: the encoder's own (deepest first), then the layer products it supports."""
    own = list(encoder.cam_layers())
    return own + [name for name, (a, b) in LAYER_PRODUCTS.items() if a in own and b in own]


def default_cam(package: object) -> tuple[str, str]:
    """(method, layer) a package's heatmaps use unless one is asked for: the measured per-suite choice in
    ``SUITE_DEFAULTS`` for its cohort and image architecture (a map of ``MAP_METHODS`` only where the image encoder can
    draw it), else Grad-CAM on the last stage. The stability part reads a CAM (``stability_cam``)."""
    encoders = getattr(getattr(package, "model", None), "encoders", {})
    enc = encoders["image"] if "image" in encoders else None
    if enc is None or getattr(enc, "dual_expert", False):
        return DEFAULT_CAM
    cfg = getattr(package, "cfg", None)
    method, layer = SUITE_DEFAULTS.get((getattr(cfg, "cohort", None), getattr(enc, "arch", None)), DEFAULT_CAM)
    if method in MAP_METHODS:   # a map that reads the middle stage: a plain image encoder only
        from .image_ig import plain_image_encoder

        if not plain_image_encoder(enc):
            return DEFAULT_CAM
    return (method, layer) if layer in cam_layer_names(enc) else DEFAULT_CAM


def stability_cam(methods: "tuple[str, ...] | list[str]") -> str:
    """The method the MC-dropout stability part reads: the first CAM of ``methods``, else last-stage Grad-CAM's method
    (a map of ``MAP_METHODS``, e.g. the dermatology default, reads the model without MC dropout)."""
    return next((m for m in methods if m not in MAP_METHODS), DEFAULT_CAM[0])


def resolve_cam(package: object, methods: "tuple[str, ...] | list[str]", layer: str,
                tta: bool = False) -> tuple[tuple[str, ...], str]:
    """``"auto"`` entries -> the package's default method / layer (:func:`default_cam`); other names unchanged. With
    ``tta``, a default that is a map (drawn without test-time augmentation, e.g. the dermatology suite's median IG)
    resolves to last-stage Grad-CAM instead."""
    d_method, d_layer = default_cam(package)
    if tta and d_method in MAP_METHODS:
        d_method, d_layer = DEFAULT_CAM
    out = tuple(dict.fromkeys(d_method if m == AUTO else m for m in methods))
    return out, d_layer if layer == AUTO else layer


def describe_cam(method: str, layer: str) -> str:
    """Which method on which layer drew a map, in words, e.g. 'Grad-CAM++ (last stage) × LayerCAM (early stage)'.
    A map of ``MAP_METHODS`` reads its own layer, whatever ``layer`` says."""
    if method in MAP_METHODS:
        return f"{NAMES.get(method, method)} ({MAP_METHODS[method][0]})"
    if layer in LAYER_PRODUCTS:
        coarse, fine = LAYER_PRODUCTS[layer]
        return f"{NAMES.get(method, method)} ({coarse}) × {NAMES[FINE_METHOD]} ({fine})"
    return f"{NAMES.get(method, method)} ({layer})"


# test-time augmentation (seed 003): transform, inverse transform of a [.., H, W] map
TTA: list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[np.ndarray], np.ndarray]]] = [
    (lambda x: x, lambda m: m),
    (lambda x: x.flip(-1), lambda m: m[..., ::-1]),
    (lambda x: x.flip(-2), lambda m: m[..., ::-1, :]),
    (lambda x: x.rot90(1, (-2, -1)), lambda m: np.rot90(m, -1, (-2, -1))),
]


def is_dual(ctx: ExplainContext) -> bool:
    return ctx.has("image") and ctx.model.encoders["image"].dual_expert


def _run_cam(ctx: ExplainContext, pixels: torch.Tensor, method: str, layer: str, mc_seed: int | None = None,
             stream: str = "global", rows: int = 1) -> np.ndarray:
    """CAMs of ``pixels`` ([n, 3, S, S]) -> [n, S, S]. ``rows`` > 1 with one image: ``rows`` CAMs of that
    image (under ``rows`` MC-dropout masks of the head), the layers before the target layer run once."""
    enc = ctx.model.encoders["image"]
    if layer in LAYER_PRODUCTS and layer in cam_layer_names(enc):
        coarse, fine = LAYER_PRODUCTS[layer]
        a = _run_cam(ctx, pixels, method, coarse, mc_seed, stream, rows)
        b = _run_cam(ctx, pixels, FINE_METHOD, fine, mc_seed, stream, rows)
        return _unit_max(_unit_max(a) * _unit_max(b))
    cls = cam_class(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = enc.cam_layers()
    if layer not in layers:
        raise ValueError(f"unknown layer '{layer}'; choose one of: {', '.join(cam_layer_names(enc))}.")
    kept = stage_maps(ctx, pixels) if layer == "last stage" and stream == "global" and method != "scorecam" else None
    if kept is not None:
        return _run_cam_on_last_map(ctx, kept, cls, ClassifierOutputTarget, mc_seed, rows)
    wrapper = ImageTargetModel(ctx, mc_seed, stream, input_grad=False)
    target_layer = (wrapper.encoder.cam_layers(stream) if is_dual(ctx) else wrapper.encoder.cam_layers())[layer]
    if rows > 1 and pixels.shape[0] == 1:
        wrapper.rows = rows
    else:
        rows = pixels.shape[0]
    targets = [ClassifierOutputTarget(ctx.target)] * rows
    # The CAMs read the target layer's activations and the gradients at its output only: the graph starts
    # at the layer's input (a leaf), so the backward pass stops there instead of running back to the pixels
    # through every earlier layer. Same activations, same gradients; the hook goes with the private copy's
    # use (removed in ``finally``, so the copy comes back hook-free).
    cut = target_layer.register_forward_pre_hook(_graph_starts_here if wrapper.rows == 1 else _repeated_leaf(rows))
    try:
        with cls(model=wrapper, target_layers=[target_layer]) as cam:
            cam.batch_size = 32  # ScoreCAM: masked images per forward pass
            quiet = contextlib.redirect_stderr(io.StringIO()) if method == "scorecam" else contextlib.nullcontext()
            with torch.enable_grad(), quiet:  # ScoreCAM draws a tqdm bar on stderr
                maps = cam(input_tensor=pixels.clone(), targets=targets)
    finally:
        cut.remove()
    return np.asarray(maps, dtype=np.float32)


class _LastMapModel(torch.nn.Module):
    """The case's last-stage map -> calibrated logits: what ``ImageTargetModel`` computes after its target
    layer ``last stage`` (pooling, tokens, fusion, head), with that layer's output as the input. ``layer`` (an
    identity) is the CAM's hook point: its activations and gradients are the target layer's."""

    def __init__(self, ctx: ExplainContext, pooled: tuple[torch.Tensor, ...], mc_seed: int | None):
        super().__init__()
        self.ctx, self.pooled, self.mc_seed = ctx, pooled, mc_seed
        self.layer = torch.nn.Identity()
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # the library asks for a device

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        n = last.shape[0]
        gen = None if self.mc_seed is None else torch.Generator().manual_seed(self.mc_seed)
        feats = self.ctx.model.encoders["image"].from_stages([self.layer(last)],
                                                             tuple(p.expand(n, *p.shape[1:]) for p in self.pooled))
        return self.ctx.calibrated_logits("image", feats, gen)


def _run_cam_on_last_map(ctx: ExplainContext, maps: list[torch.Tensor], cls: type, target_cls: type,
                         mc_seed: int | None, rows: int) -> np.ndarray:
    """``_run_cam`` on the last stage of the case's own image from its kept stage maps (``image_ig.stage_maps``):
    the library hooks an identity on the last map, so the CNN does not run again. Same activations, same
    gradients, same maps (``rows``: that many MC-dropout rows of the one image, as ``_run_cam``)."""
    with torch.no_grad():
        pooled = tuple(m.mean(dim=(2, 3)) for m in maps[:-1])
    last = maps[-1].detach()
    if rows > 1:
        last = last.expand(rows, *last.shape[1:])
    model = _LastMapModel(ctx, pooled, mc_seed)
    pixels = ctx.inputs["image"]["pixels"]
    size = (pixels.size(-1), pixels.size(-2))
    with cls(model=model, target_layers=[model.layer]) as cam:
        cam.get_target_width_height = lambda _t: size  # the maps at the model's input size, as from the pixels
        with torch.enable_grad():
            out = cam(input_tensor=last.contiguous().requires_grad_(True),
                      targets=[target_cls(ctx.target)] * last.shape[0])
    return np.asarray(out, dtype=np.float32)


def _unit_max(maps: np.ndarray) -> np.ndarray:
    """[n, H, W] non-negative maps, each divided by its maximum (an all-zero map stays zero)."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0, None)
    top = maps.reshape(len(maps), -1).max(1)
    return (maps / np.where(top > 0, top, 1.0)[:, None, None]).astype(np.float32)


def _repeated_leaf(rows: int) -> Callable[[torch.nn.Module, tuple], tuple]:
    """Like ``_graph_starts_here``, with a one-row input repeated ``rows`` times (the layers before ran once)."""
    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        return tuple(a.detach().expand(rows, *a.shape[1:]).contiguous().requires_grad_(True)
                     if torch.is_tensor(a) and a.is_floating_point() and a.shape[0] == 1 else a for a in args)
    return hook


def _graph_starts_here(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer's tensor inputs as fresh leaves that require gradients."""
    return tuple(a.detach().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def image_cam(ctx: ExplainContext, method: str = AUTO, layer: str = AUTO, tta: bool = False,
              stream: str = "global") -> np.ndarray:
    """[S, S] heatmap in [0, 1] at the model's input resolution (resize to the upload for overlays).

    ``method`` / ``layer``: a key of ``CAM_METHODS`` / a name of :func:`cam_layer_names`, or ``"auto"``
    for the package's default (:func:`default_cam`; :func:`describe_cam` names it).
    ``stream="lesion"`` (dual-expert models): the heatmap of the lesion stream, computed on its crop
    and pasted back where the crop lies in the whole image (zero elsewhere).

    A ``method`` of ``MAP_METHODS`` is drawn by :func:`core.explain.image_maps.image_map` on its own layer
    (``layer`` unused; no test-time augmentation, no lesion stream: ValueError)."""
    (method,), layer = resolve_cam(ctx.package, (method,), layer)
    if method in MAP_METHODS:
        if tta or stream != "global":
            raise ValueError(f"{NAMES.get(method, method)} is drawn without test-time augmentation, on the whole image "
                             "(no lesion stream).")
        from .image_maps import image_map

        return image_map(ctx, method)
    if stream == "lesion":
        if not is_dual(ctx):
            raise ValueError("only a dual-expert image model has a lesion stream.")
        crop = _run_cam(ctx, ctx.inputs["image"]["local_pixels"], method, layer, stream="lesion")[0]
        return paste_crop(crop, ctx.inputs["image"]["crop_box"][0])
    pixels = ctx.inputs["image"]["pixels"]
    if not tta:
        return _run_cam(ctx, pixels, method, layer)[0]
    views = [t(pixels) for t, _ in TTA]
    if all(v.shape == views[0].shape for v in views):
        maps = list(_run_cam(ctx, torch.cat(views), method, layer))
    else:  # a non-square image (HAM10000's 200 x 150): the rotated view has another shape, one call per view
        maps = [_run_cam(ctx, v, method, layer)[0] for v in views]
    merged = np.mean([inv(maps[i]) for i, (_, inv) in enumerate(TTA)], axis=0)
    return (merged / max(float(merged.max()), 1e-12)).astype(np.float32)


def paste_crop(crop_map: np.ndarray, box: torch.Tensor) -> np.ndarray:
    """A map computed on the lesion crop -> the same map placed on the whole image's grid."""
    import cv2

    s = crop_map.shape[0]
    x0, y0, x1, y1 = (box * s).round().long().tolist()
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    out = np.zeros((s, s), dtype=np.float32)
    out[y0:y1, x0:x1] = cv2.resize(crop_map.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def cam_stability(ctx: ExplainContext, method: str = AUTO, layer: str = AUTO, samples: int = 8,
                  seed: int = 0) -> dict[str, np.ndarray | float]:
    """The heatmap under ``samples`` MC-dropout masks of the head (one batched CAM call): its mean,
    standard deviation, and the mean pairwise correlation of the samples (1 = perfectly stable). CAMs only: a map
    of ``MAP_METHODS`` reads the model without MC dropout (ValueError)."""
    (method,), layer = resolve_cam(ctx.package, (method,), layer)
    if method in MAP_METHODS:
        raise ValueError(f"{NAMES.get(method, method)} has no MC-dropout stability (it reads the model without dropout).")
    pixels = ctx.inputs["image"]["pixels"]
    if is_dual(ctx) or not CAM_METHODS.get(method, (None, False))[1]:
        maps = _run_cam(ctx, pixels.expand(samples, -1, -1, -1), method, layer, mc_seed=seed)
    else:  # the layers before the CAM's target layer run once, not once per sample (same maps)
        maps = _run_cam(ctx, pixels, method, layer, mc_seed=seed, rows=samples)
    flat = maps.reshape(samples, -1)
    flat = flat - flat.mean(1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    ok = norms > 1e-9
    if ok.sum() >= 2:
        c = (flat[ok] @ flat[ok].T) / np.outer(norms[ok], norms[ok])
        corr = float((c.sum() - np.trace(c)) / (c.shape[0] * (c.shape[0] - 1)))
    else:
        corr = float("nan")
    return {"mean": maps.mean(0), "std": maps.std(0), "mean_pairwise_correlation": corr, "samples": samples}
