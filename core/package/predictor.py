"""Prediction with a loaded package: cases -> encoder inputs, one encoder + fusion pass with the head
run once without dropout and T times with it (MC dropout), the calibrated posterior, test-time
augmentation, and the referral policy with its advice text (one place for every prediction path:
``Package.predict``, TTA and the what-if session)."""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from ..case import Case, CaseError
from ..encoders import ModalityFeatures
from ..fusion import GLOBAL_DIAGNOSTICS, case_diagnostics
from ..model import ModelOutput, MultimodalClassifier
from ..uncertainty import decompose, mean_pairwise_symmetric_kl
from ..utils import to_jsonable
from .format import RESEARCH_NOTICE

if TYPE_CHECKING:
    from .package import Package

REFERRAL_MEASURE = "normalised_entropy"


@dataclass
class Prediction:
    labels: list[str]
    label: str
    label_index: int
    probabilities: np.ndarray            # softmax of the logits (uncalibrated, dropout off)
    calibrated: np.ndarray               # softmax(logits / T_cal), dropout off: the headline numbers
    mc_mean: np.ndarray                  # mean of T calibrated MC-dropout samples
    mc_samples: np.ndarray               # [T, C]
    uncertainty: dict[str, float]
    refer: bool
    referral: dict[str, Any]
    present: dict[str, bool]
    diagnostics: dict[str, Any]
    model: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    case_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id, "label": self.label, "label_index": self.label_index,
            "probabilities": dict(zip(self.labels, _r(self.probabilities))),
            "calibrated_probabilities": dict(zip(self.labels, _r(self.calibrated))),
            "mc_mean_probabilities": dict(zip(self.labels, _r(self.mc_mean))),
            "mc_std_probabilities": dict(zip(self.labels, _r(self.mc_samples.std(0)))),
            "uncertainty": {k: round(v, 6) for k, v in self.uncertainty.items()},
            "refer": self.refer, "referral": self.referral, "present": self.present,
            "diagnostics": to_jsonable(self.diagnostics), "model": self.model, "warnings": self.warnings,
            "notice": RESEARCH_NOTICE,
        }


def _r(a: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in np.asarray(a).ravel()]


# ---- the referral policy ---------------------------------------------------------------------------
def referral_advice(refer: bool) -> str:
    """The referral policy's advice text, in one place for every prediction path."""
    return "advise re-check by a clinician" if refer else "no referral flag"


def referral(value: float, threshold: float) -> tuple[bool, dict[str, Any]]:
    """The referral policy: refer when the normalised entropy exceeds the package's threshold.
    -> (refer, the Prediction's ``referral`` entry)."""
    refer = value > threshold
    return refer, {"measure": REFERRAL_MEASURE, "value": value, "threshold": threshold, "advice": referral_advice(refer)}


# ---- cases -> tensors --------------------------------------------------------------------------------
def prepare_batch(model: MultimodalClassifier, cases: Sequence[Case], skip: frozenset[str] | set[str] = frozenset(),
                  memo: dict[str, Any] | None = None) -> tuple[dict[str, Any], torch.Tensor, list[list[str]]]:
    """Validated cases -> (encoder inputs for the present rows, presence mask [B, M], warnings).
    Each encoder takes its input from a case (``Encoder.case_input``: metadata checked against this
    model's schema, a spectrum against its grid, CaseError on a bad value). Modalities in ``skip`` are
    checked and marked present but not preprocessed (their features come from elsewhere).

    ``memo``: a dict kept by a caller that prepares the same ``cases`` for several packages (a comparison):
    an encoder whose type and config equal an earlier one's (see ``input_key``) reuses its checked values,
    warnings and prepared tensors (read-only) instead of preparing the cases again."""
    warnings: list[list[str]] = [[] for _ in cases]
    flags = [[False] * len(model.modalities) for _ in cases]
    inputs: dict[str, Any] = {}
    for j, m in enumerate(model.modalities):
        enc = model.encoders[m]
        hit = None if memo is None else memo.setdefault(input_key(enc), {})
        if hit is not None and "values" in hit:
            checked = hit["values"]
        else:
            checked = [enc.case_input(c) for c in cases]
            if hit is not None:
                hit["values"] = checked
        vals = []
        for i, (v, w) in enumerate(checked):
            warnings[i] += w
            if v is not None:
                flags[i][j] = True
                vals.append(v)
        if not vals or m in skip:
            inputs[m] = None
        elif hit is None:
            inputs[m] = enc.prepare(vals)
        else:
            if "prepared" not in hit:
                hit["prepared"] = enc.prepare(vals)
            inputs[m] = hit["prepared"]
    present = torch.tensor(flags, dtype=torch.bool).reshape(len(cases), len(model.modalities))
    for i, c in enumerate(cases):
        ignored = [k for k, v in c.present().items() if v and k not in model.modalities]
        if ignored:
            warnings[i].append(f"This model does not use: {', '.join(ignored)}.")
        if not any(flags[i]):
            raise CaseError({"case": "The case has none of the inputs this model uses "
                                     f"({', '.join(model.modalities)}); add at least one."})
    return inputs, present, warnings


_INPUT_KEYS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def input_key(enc: Any) -> str:
    """What an encoder's ``case_input`` and ``prepare`` depend on: its class and the config that rebuilds it
    (schema, grid, tokenizer, image size, crop margin...). Computed once per encoder (configs never change)."""
    key = _INPUT_KEYS.get(enc)
    if key is None:
        key = _INPUT_KEYS[enc] = f"{type(enc).__module__}.{type(enc).__qualname__}:" + json.dumps(
            enc.config(), sort_keys=True, default=str)
    return key


# ---- the posterior -----------------------------------------------------------------------------------
@dataclass
class Posterior:
    """Batch prediction numbers shared by Package.predict and the evaluation code."""

    probabilities: torch.Tensor   # [B, C] softmax(logits), dropout off
    calibrated: torch.Tensor      # [B, C] softmax(logits / T_cal), dropout off
    uncertainty: Any              # UncertaintySummary of the calibrated MC samples

    @property
    def normalised_entropy(self) -> torch.Tensor:
        return self.uncertainty.normalised_entropy


def posterior(det_logits: torch.Tensor, mc_logits: torch.Tensor, mc_log_var: torch.Tensor,
              temperature: "float | torch.Tensor") -> Posterior:
    """``temperature``: one for every row, or a [B, 1] tensor (each row its own)."""
    return Posterior(torch.softmax(det_logits, -1), torch.softmax(det_logits / temperature, -1),
                     decompose(mc_logits, mc_log_var, temperature))


def make_prediction(pkg: "Package", post: Posterior, i: int, present: dict[str, bool], diagnostics: dict[str, Any],
                    warnings: list[str], case_id: str | None) -> Prediction:
    """Row ``i`` of a posterior as a Prediction, with the package's referral decision."""
    unc = post.uncertainty
    cal = post.calibrated[i]
    k = int(cal.argmax())
    value = float(unc.normalised_entropy[i])
    refer, ref = referral(value, pkg.referral_threshold)
    return Prediction(
        labels=pkg.labels, label=pkg.labels[k], label_index=k,
        probabilities=post.probabilities[i].numpy(), calibrated=cal.numpy(), mc_mean=unc.mean_probs[i].numpy(),
        mc_samples=unc.sample_probs[:, i].numpy(),
        uncertainty={"predictive_entropy": float(unc.predictive_entropy[i]), "normalised_entropy": value,
                     "aleatoric": float(unc.aleatoric[i]), "epistemic": float(unc.epistemic[i]),
                     "data_variance": float(unc.data_variance[i])},
        refer=refer, referral=ref, present=present, diagnostics=diagnostics,
        model=pkg.info() | {"path": str(pkg.path)}, warnings=warnings, case_id=case_id)


# ---- one pass --------------------------------------------------------------------------------------
def prepare_with_features(pkg, cases, features=None, memo=None):
    """``prepare_batch`` for ``pkg`` with encoder outputs already computed spliced in: ``features`` maps a
    modality to the output for the present rows of these cases (by an encoder with the same
    ``encoder_fingerprint``); that encoder's input is not prepared. -> (inputs, present, warnings)."""
    features = {m: f for m, f in (features or {}).items() if m in pkg.modalities}
    inputs, present, warnings = prepare_batch(pkg.model, cases, set(features), memo)
    counts = present.sum(0).tolist() if features else []
    for m, f in features.items():
        rows = counts[pkg.modalities.index(m)]
        if rows:
            if f.pooled.shape[0] != rows:
                raise ValueError(f"precomputed {m} features have {f.pooled.shape[0]} rows for {rows} present cases.")
            inputs[m] = f
    return inputs, present, warnings


def run(pkg: "Package", cases: Sequence[Case], mc_samples: int | None = None, seed: int = 0,
        features: Mapping[str, ModalityFeatures] | None = None) -> tuple[ModelOutput, ModelOutput, torch.Tensor, list[list[str]]]:
    """One encoder + fusion pass; the head runs once without dropout and T times with it, on the
    same fused features. -> (deterministic output, MC output, presence, warnings).

    ``features``: modality -> encoder output already computed for the present rows of these cases
    (by this package's encoder or one with the same ``encoder_fingerprint``); that encoder is skipped."""
    T = pkg.mc_samples if mc_samples is None else mc_samples
    inputs, present, warnings = prepare_with_features(pkg, cases, features)
    gen = torch.Generator().manual_seed(seed)
    model = pkg.inference_model
    with torch.inference_mode():
        det, mc = forward_with_single_rows(model, pkg.modalities, inputs, present, pkg.temperature, max(T, 1), gen)
    return det, mc, present, warnings


def forward_with_single_rows(model: MultimodalClassifier, modalities: Sequence[str], inputs: Mapping[str, Any],
                             present: torch.Tensor, temperature: float, mc_samples: int = 0,
                             generator: torch.Generator | None = None) -> Any:
    """The deterministic forward pass of the cases, with the single-modality rows that the modality
    disagreement needs appended to the same fusion + head batch (one pass instead of two; each
    encoder still runs once). Diagnostics and features are those of the cases' rows; the diagnostics
    gain ``modality_disagreement`` ([B], NaN for a case with fewer than two modalities).

    ``mc_samples=T`` > 0: the head also runs T times with dropout on the cases' fused rows (MC dropout),
    in the same head batch where the head supports it -> (deterministic output, MC output)."""
    rows = fused_rows(model, modalities, inputs, present)
    heads = head_pass(model.head, rows.fused, rows.B, mc_samples, generator)
    return finish_rows(model, rows, heads, temperature, mc_samples)


@dataclass
class FusedRows:
    """The cases (and their single-modality rows) up to the head: ``fused_rows`` -> ``head_pass`` ->
    ``finish_rows`` is ``forward_with_single_rows`` cut where a comparison runs several packages' heads
    as one stacked pass (``core.package.stacked``)."""
    B: int                                # the cases
    pres: list[list[bool]]                # their presence rows
    singles: bool                         # single-modality rows follow the cases' rows
    feats: list[ModalityFeatures]         # encoded and filled, every row
    present: torch.Tensor                 # [rows, M]
    fused: torch.Tensor                   # [rows, F]
    diag: dict[str, Any]                  # the fusion's diagnostics, every row


def fused_rows(model: MultimodalClassifier, modalities: Sequence[str], inputs: Mapping[str, Any],
               present: torch.Tensor, memo: dict[Any, Any] | None = None) -> FusedRows:
    """Encoders, missing-modality fill and fusion of the cases, with their single-modality rows appended
    when a case has two modalities or more (see ``forward_with_single_rows``). ``memo``: kept by a caller
    that hands the same precomputed features to several packages (a comparison): their rows are picked once."""
    rows = select_rows(model, modalities, inputs, present, memo)
    return fuse_rows(model, rows, model.encode(rows.joined, rows.present))


@dataclass
class SelectedRows:
    """The encoder outputs of every row to fuse (``select_rows``), before the missing-modality fill."""
    B: int
    pres: list[list[bool]]
    singles: bool
    joined: dict[str, ModalityFeatures | None]   # modality -> its present rows' features (None: absent everywhere)
    present: torch.Tensor                         # [rows, M]


def select_rows(model: MultimodalClassifier, modalities: Sequence[str], inputs: Mapping[str, Any],
                present: torch.Tensor, memo: dict[Any, Any] | None = None) -> SelectedRows:
    """Every encoder that has not run yet, and the single-modality rows picked from their outputs."""
    B, M = present.shape
    pres = present.tolist()     # a handful of rows: Python lists cost less than tensor ops here
    raw: dict[str, Any] = {}
    for j, m in enumerate(modalities):
        x = inputs.get(m)
        raw[m] = None if x is None or not any(r[j] for r in pres) else (
            x if isinstance(x, ModalityFeatures) else model.encoders[m](**x))
    # (case, modality) of every single-modality row, row-major as ``nonzero`` lists them
    singles = [(i, j) for i, r in enumerate(pres) if sum(r) >= 2 for j in range(M) if r[j]]
    if M < 2 or not singles:
        return SelectedRows(B, pres, False, raw, present)
    both = torch.tensor(pres + [[k == j for k in range(M)] for _, j in singles], dtype=torch.bool)
    joined: dict[str, Any] = {}
    for j, m in enumerate(modalities):
        f = raw[m]
        extra = [i for i, jj in singles if jj == j]
        if f is None or not extra:
            joined[m] = f
            continue
        pos, n = [], 0                       # each case's row among the encoded rows
        for r in pres:
            pos.append(n)
            n += bool(r[j])
        # the encoded rows, then these
        pick = tuple(range(f.pooled.shape[0])) + tuple(pos[i] for i in extra)
        hit = None if memo is None else memo.get((id(f), pick))
        if hit is not None and hit[0] is f:
            joined[m] = hit[1]
            continue
        joined[m] = f.index(torch.tensor(pick))
        if memo is not None:
            memo[(id(f), pick)] = (f, joined[m])
    return SelectedRows(B, pres, True, joined, both)


def fuse_rows(model: MultimodalClassifier, rows: SelectedRows, feats: list[ModalityFeatures]) -> FusedRows:
    """The fusion of the selected rows, from their filled features (``model.encode``)."""
    fused, diag = model.fusion(feats, rows.present)
    return FusedRows(rows.B, rows.pres, rows.singles, feats, rows.present, fused, diag)


def head_pass(head: Any, fused: torch.Tensor, n: int, mc_samples: int, generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The head on every fused row (dropout off) and, with ``mc_samples`` > 0, its MC-dropout samples of
    the first ``n`` rows, in one head pass where the head offers it -> (logits, log_var, MC logits, MC log_var)."""
    if mc_samples <= 0:
        logits, log_var = head(fused)
        return logits, log_var, None, None
    joint = getattr(head, "forward_with_samples", None)
    if joint is not None:
        return joint(fused, fused[:n], mc_samples, generator)
    logits, log_var = head(fused)
    mc_logits, mc_log_var = head(fused[:n], mc_samples, generator)
    return logits, log_var, mc_logits, mc_log_var


def finish_rows(model: MultimodalClassifier, rows: FusedRows, heads: Sequence[Any], temperature: float,
                mc_samples: int) -> Any:
    """``forward_with_single_rows``'s result from the fused rows and the head's outputs on them."""
    logits, log_var, mc_logits, mc_log_var = heads
    fused, diag, feats, B = rows.fused, rows.diag, rows.feats, rows.B
    if hasattr(model.head, "diagnostics"):
        diag = {**diag, **model.head.diagnostics(fused)}
    for m, f in zip(model.modalities, feats):
        for k, v in (f.extras or {}).items():
            diag[f"{m}_{k}"] = v
    out = ModelOutput(logits, log_var, fused, diag, list(feats))
    if not rows.singles:
        out.diagnostics["modality_disagreement"] = torch.full((B,), float("nan"))
        return out if mc_samples <= 0 else (out, ModelOutput(mc_logits, mc_log_var, fused[:B], diag, list(feats)))
    logp = torch.log_softmax(out.logits[B:] / temperature, -1)
    dis = torch.full((B,), float("nan"))
    start = 0
    for i, r in enumerate(rows.pres):         # a case's single rows are consecutive
        k = sum(r) if sum(r) >= 2 else 0
        if k:
            dis[i] = mean_pairwise_symmetric_kl(logp[start:start + k])
            start += k
    diag = _first_rows(out.diagnostics, B)
    diag["modality_disagreement"] = dis
    det = ModelOutput(out.logits[:B], out.log_var[:B], out.fused[:B], diag, [_head(f, B) for f in out.features])
    if mc_samples <= 0:
        return det
    return det, ModelOutput(mc_logits, mc_log_var, det.fused, det.diagnostics, det.features)


def _head(f: ModalityFeatures, n: int) -> ModalityFeatures:
    """The first ``n`` rows of ``f`` (views, no copy)."""
    return f.index(slice(None, n))


def _first_rows(diag: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of batch diagnostics (global entries kept as they are)."""
    def pick(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: pick(key, x) for k, x in v.items()}
        if torch.is_tensor(v) and v.dim() > 0 and key not in GLOBAL_DIAGNOSTICS:
            return v[:n]
        return v
    return {k: pick(k, v) for k, v in diag.items()}


# ---- predictions -----------------------------------------------------------------------------------
def predict(pkg: "Package", case: Case | Sequence[Case], mc_samples: int | None = None, seed: int = 0,
            features: Mapping[str, ModalityFeatures] | None = None):
    """A Prediction for one case, or a list for a sequence of cases (batched). ``features``: see ``run``."""
    single = isinstance(case, Case)
    cases = [case] if single else list(case)
    out = predictions(pkg, cases, *run(pkg, cases, mc_samples, seed, features))
    return out[0] if single else out


def predictions(pkg: "Package", cases: Sequence[Case], det: ModelOutput, mc: ModelOutput, present: torch.Tensor,
                warnings: list[list[str]], post: Posterior | None = None, row0: int = 0) -> list[Prediction]:
    """The Predictions of ``cases`` from the outputs of ``run`` on them. ``post``: their posterior already
    computed, in rows ``row0:`` of a larger batch (several packages' posteriors at once, ``stacked``)."""
    if post is None:
        post = posterior(det.logits, mc.logits, mc.log_var, pkg.temperature)
    gates = pkg.model.encoders["metadata"].feature_gates() if "metadata" in pkg.model.encoders else None
    out = []
    flags = present.tolist()
    for i, c in enumerate(cases):
        diag = case_diagnostics(det.diagnostics, i)
        if gates is not None:
            diag["metadata_feature_gates"] = dict(zip(pkg.schema.names, gates.tolist()))
        out.append(make_prediction(pkg, post, row0 + i, dict(zip(pkg.modalities, map(bool, flags[i]))), diag, warnings[i],
                                   c.case_id))
    return out


def predict_tta(pkg: "Package", case: Case, mc_samples: int | None = None, seed: int = 0) -> Prediction:
    """Test-time augmentation. Where the suite ships settings fitted on its validation split for these weights
    (``suite_inference.json``, :mod:`core.package.tta`), those views, combination, temperature and referral
    threshold. Otherwise (seed 003): the case with its image as is, flipped left-right,
    flipped up-down and turned 90 degrees (180 where neither the image nor the model's input is square),
    predicted as one batch; calibrated probabilities
    and MC samples averaged in probability space. Diagnostics are those of the original image;
    ``uncertainty['tta_spread']`` is the standard deviation of the label's probability across
    the four views. Without an image (or an image-less model) this is ``predict``."""
    if case.image is None or "image" not in pkg.modalities:
        return predict(pkg, case, mc_samples, seed)
    from .tta import load_settings

    unusable = None
    try:
        settings = load_settings(pkg)
        if settings is not None:   # the suite's validation-fitted views, temperature and referral threshold
            return _predict_tta_fitted(pkg, case, settings, mc_samples, seed)
    except ValueError as e:        # a damaged or unsupported suite_inference.json: say so, use the plain views
        unusable = (f"The suite's test-time augmentation settings could not be used ({e}); the four plain views "
                    "were averaged instead.")
    from PIL import Image as PILImage

    # a quarter turn swaps width and height: where the model's input is not square (HAM10000's 200 x 150) and the
    # image is not square either, prepare() would squash the turned image back, a view the model never saw: turn
    # it half way instead
    size = getattr(pkg.model.encoders["image"], "image_size", None)
    square_input = isinstance(size, int) or (isinstance(size, (tuple, list)) and size[0] == size[1])
    square = square_input or case.image.width == case.image.height
    turn = PILImage.Transpose.ROTATE_90 if square else PILImage.Transpose.ROTATE_180
    views = [case.image, case.image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT),
             case.image.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM), case.image.transpose(turn)]
    preds = predict(pkg, [replace(case, image=v, mask=None) for v in views], mc_samples, seed)
    cal = np.mean([p.calibrated for p in preds], 0)
    k = int(cal.argmax())
    first = preds[0]
    value = float(np.mean([p.uncertainty["normalised_entropy"] for p in preds]))
    unc = {key: float(np.mean([p.uncertainty[key] for p in preds])) for key in first.uncertainty}
    unc["normalised_entropy"] = value
    unc["tta_spread"] = float(np.std([p.calibrated[k] for p in preds]))
    refer, ref = referral(value, pkg.referral_threshold)
    return replace(first, label=pkg.labels[k], label_index=k, calibrated=cal,
                   probabilities=np.mean([p.probabilities for p in preds], 0),
                   mc_mean=np.mean([p.mc_mean for p in preds], 0),
                   mc_samples=np.concatenate([p.mc_samples for p in preds]), uncertainty=unc, refer=refer,
                   referral=ref,
                   warnings=first.warnings + ([unusable] if unusable else []) + [
                       "Test-time augmentation: averaged over the image as is, flipped left-right, flipped up-down "
                       "and turned " + ("90 degrees." if square else "180 degrees (neither the image nor the model's "
                                                                     "input is square).")],
                   case_id=case.case_id)


def _predict_tta_fitted(pkg: "Package", case: Case, settings: Any, mc_samples: int | None, seed: int) -> Prediction:
    """``predict_tta`` with the suite's fitted settings (see :func:`core.package.tta.tta_posterior`); the
    original image's diagnostics, presence and warnings come from the identity view's run where the settings
    have one (no separate plain prediction)."""
    from .tta import adjust, combine_views, stack_runs, view_runs

    runs = view_runs(pkg, [case], settings.views, mc_samples, seed, settings.level)
    det, mc, lv = stack_runs(runs)
    base = (predictions(pkg, [case], *runs[settings.views.index("identity")])[0] if "identity" in settings.views
            else predict(pkg, case, mc_samples, seed))
    post = adjust(combine_views(det, mc, lv, settings.temperature, settings.combine), settings.shift,
                  settings.pool_temperature)
    note = (f"Test-time augmentation: {len(settings.views)} views ({', '.join(settings.views)}; "
            f"{'activation-map' if settings.level == 'maps' else 'pixel'} level), combined by "
            f"{settings.combine.replace('_', ' ')}, with the temperature and referral threshold fitted on the "
            f"suite's validation split ({settings.source}).")
    pred = make_prediction(pkg, post, 0, base.present, base.diagnostics, base.warnings + [note], case.case_id)
    k = pred.label_index
    per_view = torch.softmax(det[:, 0] / settings.temperature, -1)[:, k]
    threshold = settings.referral_threshold if settings.referral_threshold is not None else pkg.referral_threshold
    refer, ref = referral(pred.uncertainty["normalised_entropy"], threshold)
    return replace(pred, uncertainty=pred.uncertainty | {"tta_spread": float(per_view.std(unbiased=False))},
                   refer=refer, referral=ref)
