"""Test-time augmentation (TTA) of the image, with settings fitted on a validation split and kept in a
suite-level file (``suite_inference.json`` next to the packages).

Dermoscopy images have no canonical orientation, so the eight symmetries of the image (identity, the
two flips, the 180-degree turn, the two transposes and the two 90-degree turns) are equally valid
views. For a non-square image (HAM10000's 200 x 150) a transpose or a quarter turn swaps width and
height; the backbone is fully convolutional with global pooling, so the view is encoded as it is, never
squashed back to 200 x 150. Each view is encoded by the package's own image encoder from pixels, as a
new case is; fusion and head run on every view, and the views are combined:

* ``mean_logits``: the deterministic logits averaged over views (and each MC-dropout sample's logits
  averaged over views), then the usual posterior with the temperature fitted for TTA;
* ``mean_probs``: the calibrated probabilities averaged over views, the MC samples of all views pooled.

Two levels: ``pixels`` (each view is a whole encoder pass) and ``maps`` (the view is applied to the activation map
after block 10 of the fine-tuned EfficientNet-Lite0, ``core.training.finetune``'s cut: the stem and blocks 0-10 run
once, the fine-tuned blocks 11-15 + head convolution once per view). ``maps`` is what stage 1 was trained with (flips
and transposition of those maps as augmentation) and costs about one encoder pass plus a tenth of one per view.

Averaging shrinks the logits, so the temperature (and the referral threshold) are refitted on the
validation split for the TTA outputs and stored per package in ``suite_inference.json`` with the
package's weights sha256: a package retrained since is refused (``load_settings`` returns None), never
silently run with another package's calibration. Nothing here changes a package's weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ..encoders import ModalityFeatures
from ..uncertainty import decompose
from .predictor import Posterior, posterior, prepare_batch

if TYPE_CHECKING:
    from ..case import Case
    from ..data import CohortItem
    from .package import Package

SETTINGS_FILE = "suite_inference.json"
FORMAT = "fusionlens-suite-inference/1"
COMBINE = ("mean_logits", "mean_probs")
LEVELS = ("pixels", "maps")


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


# the dihedral group of the rectangle / square on the last two dims ([..., H, W]); the names say what the image does
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-2, -1),
    "transpose": _t,
    "rot90": lambda x: _t(x).flip(-1),        # a quarter turn clockwise
    "rot270": lambda x: _t(x).flip(-2),       # a quarter turn anticlockwise
    "antitranspose": lambda x: _t(x).flip(-2, -1),
}
FLIPS = ("identity", "hflip", "vflip", "rot180")   # the views that keep the image's width and height


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One view of an image batch ``[..., H, W]`` (pixels or activation maps), contiguous."""
    if view not in VIEWS:
        raise ValueError(f"unknown view '{view}'; use {', '.join(VIEWS)}.")
    return VIEWS[view](x).contiguous()


@dataclass
class TTASettings:
    views: tuple[str, ...] = FLIPS
    combine: str = "mean_logits"
    level: str = "pixels"                     # or "maps": the views of the block-10 map (see the module docstring)
    temperature: float = 1.0
    referral_threshold: float | None = None
    # the logit (class-prior) adjustment: calibrated log-probabilities minus ``shift`` (tau * log training prior),
    # rescaled by ``pool_temperature``; None / 1.0: no adjustment
    shift: tuple[float, ...] | None = None
    pool_temperature: float = 1.0
    source: str = ""                          # where the settings came from (file, fitted on what)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        for v in self.views:
            if v not in VIEWS:
                raise ValueError(f"unknown view '{v}'; use {', '.join(VIEWS)}.")
        if not self.views:
            raise ValueError("TTA needs at least one view.")
        if self.combine not in COMBINE:
            raise ValueError(f"unknown combine '{self.combine}'; use {' or '.join(COMBINE)}.")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level '{self.level}'; use {' or '.join(LEVELS)}.")
        if not (self.temperature > 0 and self.pool_temperature > 0):
            raise ValueError(f"temperatures must be > 0, got {self.temperature} and {self.pool_temperature}.")
        if self.shift is not None:
            self.shift = tuple(float(v) for v in self.shift)


def load_settings(pkg: "Package", path: str | Path | None = None, logit_adjustment: bool = False) -> TTASettings | None:
    """The TTA settings fitted for ``pkg`` (``suite_inference.json`` beside its folder, or ``path``); None
    when the file, the package's entry or its TTA part is missing, or the entry was fitted on other weights.
    ``logit_adjustment``: also the class-prior shift fitted for balanced accuracy (it raises the rare classes'
    recall and costs calibration: off by default)."""
    f = Path(path) if path else Path(pkg.path).parent / SETTINGS_FILE
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{f}: not a {FORMAT} file.")
    entry = doc.get("packages", {}).get(Path(pkg.path).name)
    tta = doc.get("tta")
    if not entry or not tta or entry.get("package_sha256") != pkg.sha256 or "tta_temperature" not in entry:
        return None
    if tta.get("level", "pixels") == "maps" and tta.get("map_after_block", 10) != 10:
        raise ValueError(f"{f}: map views after block {tta['map_after_block']} are not implemented (block 10 only).")
    adj = (doc.get("logit_adjustment") or {}) if logit_adjustment else {}
    tau = float(adj.get("tau", 0.0))
    shift = tuple(tau * float(v) for v in adj["log_prior_train"]) if tau else None
    if shift is not None and len(shift) != len(pkg.labels):
        raise ValueError(f"{f}: the logit adjustment has {len(shift)} classes, the package {len(pkg.labels)}.")
    return TTASettings(tuple(tta["views"]), tta["combine"], tta.get("level", "pixels"), float(entry["tta_temperature"]),
                       entry.get("tta_adjusted_referral_threshold" if shift is not None else "tta_referral_threshold"), shift,
                       float(entry.get("pool_temperature", 1.0)) if shift is not None else 1.0,
                       source=f"{f.name}: {doc.get('fitted_on', '')}")


def view_features(pkg: "Package", pixels: torch.Tensor, views: Sequence[str], level: str = "pixels") -> list[ModalityFeatures]:
    """The package's image encoder on each view of prepared ``pixels`` [B, 3, H, W] (``level='pixels'``), or on
    each view of its block-10 activation map (``'maps'``; EfficientNet-Lite0 only)."""
    enc = pkg.inference_model.encoders["image"]
    with torch.inference_mode():
        if level == "pixels":
            return [enc(apply_view(pixels, v)) for v in views]
        if level != "maps":
            raise ValueError(f"unknown level '{level}'; use {' or '.join(LEVELS)}.")
        if getattr(enc, "arch", None) != "efficientnet_lite0":
            raise ValueError(f"map-level views need an EfficientNet-Lite0 image encoder, not {getattr(enc, 'arch', '?')}.")
        from ..training.finetune import frozen_part, trained_part

        x, l0, l1 = frozen_part(enc, pixels)
        return [enc.from_stages([trained_part(enc, apply_view(x, v))], (l0, l1)) for v in views]


def run_views(pkg: "Package", cases: Sequence["Case"], views: Sequence[str], mc_samples: int | None = None,
              seed: int = 0, level: str = "pixels") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic logits [V, B, K], MC logits [V, T, B, K] and MC log-variances [V, T, B] of every view.
    Cases without an image (or a package without one) give the same numbers in every view."""
    return stack_runs(view_runs(pkg, cases, views, mc_samples, seed, level))


def stack_runs(runs: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`view_runs`' outputs -> deterministic logits [V, B, K], MC logits [V, T, B, K], MC log-variances [V, T, B]."""
    return (torch.stack([d.logits for d, *_ in runs]), torch.stack([m.logits for _, m, *_ in runs]),
            torch.stack([m.log_var for _, m, *_ in runs]))


def view_runs(pkg: "Package", cases: Sequence["Case"], views: Sequence[str], mc_samples: int | None = None,
              seed: int = 0, level: str = "pixels") -> list[tuple]:
    """``core.package.predictor.run``'s outputs (deterministic, MC, presence, warnings) for every view, the
    image encoded per view (:func:`view_features`), so a caller can also read one view's diagnostics."""
    from .predictor import run

    feats: list[dict[str, ModalityFeatures]] = [{} for _ in views]
    if "image" in pkg.modalities:
        inputs, _, _ = prepare_batch(pkg.model, cases, skip={m for m in pkg.modalities if m != "image"})
        if inputs.get("image") is not None:
            feats = [{"image": f} for f in view_features(pkg, inputs["image"]["pixels"], views, level)]
    return [run(pkg, cases, mc_samples, seed, f) for f in feats]


def combine_views(det: torch.Tensor, mc: torch.Tensor, lv: torch.Tensor, temperature: float,
                  mode: str = "mean_logits") -> Posterior:
    """Per-view logits ([V, B, K], [V, T, B, K], [V, T, B]) -> one posterior (see the module docstring)."""
    if mode == "mean_logits":
        return posterior(det.mean(0), mc.mean(0), lv.mean(0), temperature)
    if mode == "mean_probs":
        v, t = mc.shape[:2]
        return Posterior(torch.softmax(det, -1).mean(0), torch.softmax(det / temperature, -1).mean(0),
                         decompose(mc.reshape(v * t, *mc.shape[2:]), lv.reshape(v * t, *lv.shape[2:]), temperature))
    raise ValueError(f"unknown combine '{mode}'; use {' or '.join(COMBINE)}.")


def adjust(post: Posterior, shift: Sequence[float] | None, pool_temperature: float = 1.0) -> Posterior:
    """The logit adjustment on a posterior: calibrated (and MC) log-probabilities minus ``shift``, divided by
    ``pool_temperature``, renormalised. The uncalibrated probabilities are kept."""
    if shift is None and pool_temperature == 1.0:
        return post
    s = torch.zeros(post.calibrated.shape[-1]) if shift is None else torch.as_tensor(shift, dtype=post.calibrated.dtype)

    def f(p: torch.Tensor) -> torch.Tensor:
        return (p.clamp_min(1e-12).log() - s) / pool_temperature

    unc = post.uncertainty
    mc = f(unc.sample_probs)
    return Posterior(post.probabilities, torch.softmax(f(post.calibrated), -1),
                     decompose(mc, torch.log(unc.data_variance).expand(mc.shape[:2]), 1.0))


def tta_posterior(pkg: "Package", cases: Sequence["Case"], settings: TTASettings, mc_samples: int | None = None,
                  seed: int = 0) -> Posterior:
    det, mc, lv = run_views(pkg, cases, settings.views, mc_samples, seed, settings.level)
    post = combine_views(det, mc, lv, settings.temperature, settings.combine)
    return adjust(post, settings.shift, settings.pool_temperature)


def evaluate_package_tta(pkg: "Package", items: Sequence["CohortItem"], settings: TTASettings | None = None,
                         batch: int = 64, n_boot: int = 200, mc_samples: int | None = None) -> dict[str, Any]:
    """``core.training.evaluate.evaluate_package`` with TTA: the same metrics, plus what was run. ``settings``
    default: the package's entry in ``suite_inference.json`` (ValueError when there is none)."""
    from ..training.evaluate import check_labels
    from ..training.metrics import classification_metrics

    settings = settings or load_settings(pkg)
    if settings is None:
        raise ValueError(f"no test-time augmentation settings for {pkg.path}: {SETTINGS_FILE} beside the package is "
                         "missing, has no entry for it, or was fitted on other weights.")
    check_labels(pkg, items)
    cal, unc, ent = [], [], []
    for start in range(0, len(items), batch):
        cases = [it.to_case(with_mask=False) for it in items[start:start + batch]]
        post = tta_posterior(pkg, cases, settings, mc_samples, seed=start)
        cal.append(post.calibrated)
        unc.append(post.probabilities)
        ent.append(post.normalised_entropy)
    y = np.array([pkg.labels.index(it.label) for it in items])
    out = classification_metrics(y, torch.cat(cal).numpy(), torch.cat(unc).numpy(), torch.cat(ent).numpy(), pkg.labels,
                                 n_boot=n_boot)
    out["tta"] = {"views": list(settings.views), "combine": settings.combine, "level": settings.level,
                  "temperature": settings.temperature,
                  "shift": None if settings.shift is None else list(settings.shift),
                  "pool_temperature": settings.pool_temperature, "source": settings.source}
    return out


__all__ = ["COMBINE", "FLIPS", "FORMAT", "LEVELS", "SETTINGS_FILE", "TTASettings", "VIEWS", "adjust", "apply_view", "combine_views",
           "evaluate_package_tta", "load_settings", "run_views", "stack_runs", "tta_posterior", "view_features",
           "view_runs"]
