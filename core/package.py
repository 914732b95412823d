"""Model packages: a folder with ``config.json`` + ``model.safetensors``; never a pickle.

``config.json`` holds the architecture (encoders, fusion variant, head), the label names, the
tabular schema, image preprocessing, the text-encoder reference, the calibration temperature, the
referral threshold, a description of the training data, metrics, and the sha256 of every weights
file. Frozen pretrained encoders shipped by a pip package are referenced, not copied; fine-tuned
encoders shared by several packages of a suite live once in a shared safetensors file next to them.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .case import Case, CaseError
from .encoders import ModalityFeatures, build_encoder, encoder_config
from .fusion import FUSIONS, case_diagnostics
from .model import ModelOutput, MultimodalClassifier
from .uncertainty import decompose

FORMAT = "fusionlens-package/1"
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".sav")
RESEARCH_NOTICE = "Research use only, not a medical device: never use it to diagnose or treat a patient."


class PackageError(Exception):
    """A model package that can't be used; the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def architecture(model: MultimodalClassifier) -> dict[str, Any]:
    return {
        "modalities": {m: encoder_config(enc) for m, enc in model.encoders.items()},
        "fusion": {"name": model.fusion_name, "options": model.fusion_options, "out_dim": model.fused_dim},
        "head": model.head_options,
        "n_classes": model.n_classes,
        "missing": model.missing_mode,
    }


# Frozen encoders whose weights are identical in several packages (a pip-shipped pretrained encoder, or
# a suite's shared safetensors file with the same sha256) are built once per process and the one
# module is used by every such package: a suite of 13 packages holds one MiniLM, not 13. Entries go
# away with the last package that uses them.
_ENCODER_POOL: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_POOL_LOCK = threading.Lock()


def encoder_fingerprint(config: Mapping[str, Any], modality: str) -> str | None:
    """A key naming a frozen encoder's weights exactly, from a package config; None when the encoder
    is trained inside the package (its output is then that package's own)."""
    enc_cfg = config["architecture"]["modalities"].get(modality)
    if not enc_cfg or not enc_cfg.get("frozen"):
        return None
    prefix = f"encoders.{modality}."
    if prefix in config.get("external_weights", []):
        source = "external"
    else:
        source = next((e.get("sha256") for e in config.get("shared_weights", []) if e.get("prefix") == prefix), None)
        if source is None:
            return None
    return json.dumps({"modality": modality, "encoder": enc_cfg, "weights": source}, sort_keys=True)


def build_model(arch: Mapping[str, Any], reuse: Mapping[str, Any] | None = None) -> MultimodalClassifier:
    """``reuse``: modality -> an already built encoder to use instead of building one."""
    reuse = reuse or {}
    encoders = {m: reuse[m] if m in reuse else build_encoder(m, cfg) for m, cfg in arch["modalities"].items()}
    f = arch["fusion"]
    return MultimodalClassifier(encoders, arch["n_classes"], f["name"], f.get("options", {}), f.get("out_dim", 256),
                                arch.get("head", {}), arch.get("missing", "embedding"))


def _external_prefixes(model: MultimodalClassifier) -> list[str]:
    return [f"encoders.{m}.{p}" for m, e in model.encoders.items() for p in e.external_state_prefixes()]


def save_package(model: MultimodalClassifier, path: str | Path, labels: Sequence[str], *, name: str,
                 cohort: str = "custom", calibration_temperature: float = 1.0, referral_threshold: float = 0.5,
                 mc_samples: int = 30, training_data: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, shared: Mapping[str, str | Path] | None = None,
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write a package folder. ``shared`` maps a state-dict prefix (e.g. ``"encoders.image."``) to a
    safetensors file (usually ``../_shared/<name>.safetensors``) written once for a whole suite."""
    if len(labels) != model.n_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {model.n_classes} classes.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    skip = _external_prefixes(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not any(k.startswith(p) for p in skip)}
    shared_entries = []
    for prefix, file in (shared or {}).items():
        part = {k: state.pop(k) for k in list(state) if k.startswith(prefix)}
        file = Path(file) if Path(file).is_absolute() else path / file
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(part, str(file))
        shared_entries.append({"file": os.path.relpath(file, path), "prefix": prefix, "sha256": sha256_file(file)})
    save_file(state, str(path / WEIGHTS))
    config = {
        "format": FORMAT, "software_version": __version__, "name": name, "cohort": cohort,
        "variant": model.fusion_name, "labels": list(labels), "architecture": architecture(model),
        "external_weights": skip,
        "calibration": {"temperature": float(calibration_temperature)},
        "referral": {"measure": "normalised_entropy", "threshold": float(referral_threshold)},
        "mc_samples": int(mc_samples),
        "training_data": dict(training_data or {}), "metrics": dict(metrics or {}),
        "weights": {"file": WEIGHTS, "sha256": sha256_file(path / WEIGHTS)},
        "shared_weights": shared_entries,
        "notice": RESEARCH_NOTICE,
        **dict(extra or {}),
    }
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(path / "config.json")
    return path


def _check_weights_file(pkg: Path, entry: Mapping[str, Any], root: Path) -> Path:
    rel = entry.get("file")
    if not isinstance(rel, str):
        raise PackageError(f"{pkg / 'config.json'}: a weights entry has no file name.")
    file = (pkg / rel).resolve()
    if not file.is_relative_to(root):
        raise PackageError(f"{pkg / 'config.json'}: weights file '{rel}' lies outside the model folder.")
    if file.suffix != ".safetensors":
        raise PackageError(f"{file}: only .safetensors weights are accepted (model files are data, never code).")
    if not file.is_file():
        raise PackageError(f"{file}: the weights file is missing.")
    digest = sha256_file(file)
    if digest != entry.get("sha256"):
        raise PackageError(f"{file}: sha256 {digest[:12]}… does not match config.json ({str(entry.get('sha256'))[:12]}…); "
                           "the file was changed or damaged, so it is refused.")
    return file


def _read_config(pkg: Path) -> dict[str, Any]:
    cfg_path = pkg / "config.json"
    if not cfg_path.is_file():
        raise PackageError(f"{cfg_path}: no config.json; is this a FusionLens model folder?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{cfg_path}: not valid JSON ({e}).") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise PackageError(f"{cfg_path}: not a {FORMAT} config.")
    for key in ("name", "labels", "architecture", "weights"):
        if key not in cfg:
            raise PackageError(f"{cfg_path}: the '{key}' entry is missing.")
    variant = cfg["architecture"].get("fusion", {}).get("name")
    if variant not in FUSIONS:
        raise PackageError(f"{cfg_path}: unknown fusion variant '{variant}'; known: {', '.join(FUSIONS.names())}.")
    return cfg


def quantize_int8(model: MultimodalClassifier) -> MultimodalClassifier:
    """A copy of ``model`` with every nn.Linear dynamically quantized to int8 (weights int8, activations
    quantized per batch on the fly): CPU inference only, no gradients, so explanations keep using the
    float model. Convolutions (the image encoder) stay float."""
    from torch.ao.quantization import quantize_dynamic

    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        q = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    return q.eval()


def load_package(path: str | Path, root: str | Path | None = None, share_encoders: bool = True,
                 int8: bool | None = None) -> "Package":
    """Load a package folder. Weights files must be safetensors whose sha256 matches config.json and
    lie inside ``root`` (default: the package's parent folder, where a suite keeps shared files).

    ``share_encoders``: frozen encoders with identical weights are one module per process (see
    ``encoder_fingerprint``); a loaded package is read-only, so sharing is safe. Pass False for a
    private copy (e.g. to fine-tune it)."""
    pkg = Path(path).resolve()
    if not pkg.is_dir():
        raise PackageError(f"{pkg}: no such model folder.")
    pickles = sorted(p.name for p in pkg.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PackageError(f"{pkg}: refused because it contains pickle-based files ({', '.join(pickles)}); "
                           "FusionLens loads safetensors only.")
    root = Path(root).resolve() if root else pkg.parent
    cfg = _read_config(pkg)
    files = [(_check_weights_file(pkg, cfg["weights"], root), "")]
    files += [(_check_weights_file(pkg, e, root), e.get("prefix", "")) for e in cfg.get("shared_weights", [])]
    keys = {m: encoder_fingerprint(cfg, m) for m in cfg["architecture"].get("modalities", {})} if share_encoders else {}
    keys = {m: k for m, k in keys.items() if k is not None}
    with _POOL_LOCK:
        reuse = {m: enc for m, k in keys.items() if (enc := _ENCODER_POOL.get(k)) is not None}
    try:
        model = build_model(cfg["architecture"], reuse)
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{pkg / 'config.json'}: the architecture can't be built ({e}).") from None
    state: dict[str, torch.Tensor] = {}
    for file, prefix in files:
        try:
            part = load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise PackageError(f"{file}: not a readable safetensors file ({e}).") from None
        bad = [k for k in part if prefix and not k.startswith(prefix)]
        if bad:
            raise PackageError(f"{file}: holds '{bad[0]}', outside its declared prefix '{prefix}'.")
        state.update(part)
    expected = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in cfg.get("external_weights", []))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise PackageError(f"{files[0][0]}: weights do not fit the architecture in config.json ({what}"
                           f"{f' and {len(missing) + len(unexpected) - 1} more' if len(missing) + len(unexpected) > 1 else ''}).")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise PackageError(f"{files[0][0]}: '{k}' has shape {tuple(v.shape)} but the architecture needs {tuple(expected[k].shape)}.")
    # a reused encoder already holds exactly these weights (same sha256 / same shipped file)
    state = {k: v for k, v in state.items() if not any(k.startswith(f"encoders.{m}.") for m in reuse)}
    model.load_state_dict(state, strict=False)
    model.eval()
    for p in model.parameters():  # a loaded package is shared between sessions and never trained in place
        p.requires_grad_(False)
    with _POOL_LOCK:
        for m, k in keys.items():
            _ENCODER_POOL.setdefault(k, model.encoders[m])
    package = Package(pkg, cfg, model)
    if int8 if int8 is not None else bool(cfg.get("deployment", {}).get("int8", False)):
        package.use_int8()
    return package


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


def to_jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if torch.is_tensor(v):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return np.round(v.astype(np.float64), 6).tolist() if v.dtype.kind == "f" else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def prepare_batch(model: MultimodalClassifier, cases: Sequence[Case], skip: frozenset[str] | set[str] = frozenset()
                  ) -> tuple[dict[str, Any], torch.Tensor, list[list[str]]]:
    """Validated cases -> (encoder inputs for the present rows, presence mask [B, M], warnings).
    Metadata is checked against this model's schema here (CaseError on a bad value). Modalities in
    ``skip`` are checked and marked present but not preprocessed (their features come from elsewhere)."""
    warnings: list[list[str]] = [[] for _ in cases]
    present = torch.zeros(len(cases), len(model.modalities), dtype=torch.bool)
    inputs: dict[str, Any] = {}
    for j, m in enumerate(model.modalities):
        enc = model.encoders[m]
        vals = []
        for i, c in enumerate(cases):
            v = getattr(c, m)
            if m == "metadata" and v:
                v, w = enc.schema.validate(v)
                warnings[i] += w
                v = v if any(x is not None for x in v.values()) else None
            if m == "image" and v is not None and getattr(enc, "wants_mask", False):
                v = (v, c.mask)              # the dual-expert encoder crops the lesion from the mask
            if m == "spectrum" and v is not None:
                try:
                    enc.resample(v)
                except ValueError as e:
                    raise CaseError({"spectrum": str(e)[0].upper() + str(e)[1:]}) from None
            if v is not None and (m != "note" or v):
                present[i, j] = True
                vals.append(v)
        inputs[m] = enc.prepare(vals) if vals and m not in skip else None
    for i, c in enumerate(cases):
        ignored = [k for k, v in c.present().items() if v and k not in model.modalities]
        if ignored:
            warnings[i].append(f"This model does not use: {', '.join(ignored)}.")
        if not present[i].any():
            raise CaseError({"case": "The case has none of the inputs this model uses "
                                     f"({', '.join(model.modalities)}); add at least one."})
    return inputs, present, warnings


@dataclass
class Posterior:
    """Batch prediction numbers shared by Package.predict and the evaluation code."""

    probabilities: torch.Tensor   # [B, C] softmax(logits), dropout off
    calibrated: torch.Tensor      # [B, C] softmax(logits / T_cal), dropout off
    uncertainty: Any              # UncertaintySummary of the calibrated MC samples

    @property
    def normalised_entropy(self) -> torch.Tensor:
        return self.uncertainty.normalised_entropy



def referral_advice(refer: bool) -> str:
    """The referral policy's advice text, in one place for every prediction path."""
    return "advise re-check by a clinician" if refer else "no referral flag"

def posterior(det_logits: torch.Tensor, mc_logits: torch.Tensor, mc_log_var: torch.Tensor, temperature: float) -> Posterior:
    return Posterior(torch.softmax(det_logits, -1), torch.softmax(det_logits / temperature, -1),
                     decompose(mc_logits, mc_log_var, temperature))


class Package:
    """A loaded model package: the shared, read-only model plus everything needed to use it."""

    def __init__(self, path: Path, config: dict[str, Any], model: MultimodalClassifier):
        self.path, self.config, self.model = path, config, model
        self.labels: list[str] = list(config["labels"])
        self.name: str = config["name"]
        self.variant: str = config["variant"]
        self.sha256: str = config["weights"]["sha256"]
        self.temperature = float(config.get("calibration", {}).get("temperature", 1.0))
        self.referral_threshold = float(config.get("referral", {}).get("threshold", 0.5))
        self.mc_samples = int(config.get("mc_samples", 30))
        self.modalities = list(model.modalities)
        self.inference_model: MultimodalClassifier = model   # what predict runs (an int8 copy when enabled)
        self.int8 = False

    def use_int8(self) -> None:
        """Predict with an int8 copy of the linear layers (see ``quantize_int8``); explanations still
        run on the float model, whose gradients they need."""
        self.inference_model, self.int8 = quantize_int8(self.model), True

    # ---- facts about the package -------------------------------------------------------------
    @property
    def schema(self):
        enc = self.model.encoders["metadata"] if "metadata" in self.model.encoders else None
        return enc.schema if enc is not None else None

    @property
    def synthetic(self) -> bool:
        return bool(self.config.get("training_data", {}).get("synthetic", False))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "variant": self.variant, "cohort": self.config.get("cohort"),
                "sha256": self.sha256, "labels": self.labels, "modalities": self.modalities,
                "synthetic_training_data": self.synthetic, "int8": self.int8}

    # ---- cases -> tensors ----------------------------------------------------------------------
    def prepare(self, cases: Sequence[Case], skip: frozenset[str] | set[str] = frozenset()
                ) -> tuple[dict[str, Any], torch.Tensor, list[list[str]]]:
        return prepare_batch(self.model, cases, skip)

    # ---- prediction ----------------------------------------------------------------------------
    def run(self, cases: Sequence[Case], mc_samples: int | None = None, seed: int = 0,
            features: Mapping[str, ModalityFeatures] | None = None) -> tuple[ModelOutput, ModelOutput, torch.Tensor, list[list[str]]]:
        """One encoder + fusion pass; the head runs once without dropout and T times with it, on the
        same fused features. -> (deterministic output, MC output, presence, warnings).

        ``features``: modality -> encoder output already computed for the present rows of these cases
        (by this package's encoder or one with the same ``encoder_fingerprint``); that encoder is skipped."""
        T = self.mc_samples if mc_samples is None else mc_samples
        features = {m: f for m, f in (features or {}).items() if m in self.modalities}
        inputs, present, warnings = self.prepare(cases, set(features))
        for m, f in features.items():
            rows = int(present[:, self.modalities.index(m)].sum())
            if rows:
                if f.pooled.shape[0] != rows:
                    raise ValueError(f"precomputed {m} features have {f.pooled.shape[0]} rows for {rows} present cases.")
                inputs[m] = f
        gen = torch.Generator().manual_seed(seed)
        model = self.inference_model
        with torch.inference_mode():
            det = self._forward_with_single_rows(model, inputs, present)
            logits, log_var = model.head(det.fused, max(T, 1), gen)
        mc = ModelOutput(logits, log_var, det.fused, det.diagnostics, det.features)
        return det, mc, present, warnings

    def _forward_with_single_rows(self, model: MultimodalClassifier, inputs: Mapping[str, Any],
                                  present: torch.Tensor) -> ModelOutput:
        """The deterministic forward pass of the cases, with the single-modality rows that
        ``modality_disagreement`` needs appended to the same fusion + head batch (one pass instead of
        two; each encoder still runs once). Diagnostics and features are those of the cases' rows."""
        B, M = present.shape
        raw: dict[str, Any] = {}
        for j, m in enumerate(self.modalities):
            x = inputs.get(m)
            raw[m] = None if x is None or not bool(present[:, j].any()) else (
                x if isinstance(x, ModalityFeatures) else model.encoders[m](**x))
        sel = present & (present.sum(1, keepdim=True) >= 2)
        rows, cols = sel.nonzero(as_tuple=True)
        if M < 2 or len(rows) == 0:
            det = model.fuse_and_classify(model.encode(raw, present), present)
            det.diagnostics["modality_disagreement"] = torch.full((B,), float("nan"))
            return det
        single = torch.zeros(len(rows), M, dtype=torch.bool)
        single[torch.arange(len(rows)), cols] = True
        both = torch.cat([present, single])
        joined: dict[str, Any] = {}
        for j, m in enumerate(self.modalities):
            f = raw[m]
            extra = rows[cols == j]
            if f is None or len(extra) == 0:
                joined[m] = f
                continue
            pos = (present[:, j].long().cumsum(0) - 1)[extra]    # the case's row among the encoded rows
            joined[m] = _cat_features(f, f.index(pos))
        out = model.fuse_and_classify(model.encode(joined, both), both)
        logp = torch.log_softmax(out.logits[B:] / self.temperature, -1)
        dis = torch.full((B,), float("nan"))
        for i in rows.unique().tolist():
            lp = logp[rows == i]
            p = lp.exp()
            kl = [((p[a] * (lp[a] - lp[b])).sum() + (p[b] * (lp[b] - lp[a])).sum()) / 2
                  for a in range(len(lp)) for b in range(a + 1, len(lp))]
            dis[i] = torch.stack(kl).mean()
        keep = torch.arange(B)
        diag = _first_rows(out.diagnostics, B)
        diag["modality_disagreement"] = dis
        return ModelOutput(out.logits[:B], out.log_var[:B], out.fused[:B], diag, [f.index(keep) for f in out.features])

    def predict_tta(self, case: Case, mc_samples: int | None = None, seed: int = 0) -> Prediction:
        """Test-time augmentation (seed 003): the case with its image as is, flipped left-right,
        flipped up-down and turned 90 degrees, predicted as one batch; calibrated probabilities
        and MC samples averaged in probability space. Diagnostics are those of the original image;
        ``uncertainty['tta_spread']`` is the standard deviation of the label's probability across
        the four views. Without an image (or an image-less model) this is ``predict``."""
        if case.image is None or "image" not in self.modalities:
            return self.predict(case, mc_samples, seed)
        from dataclasses import replace

        from PIL import Image as PILImage

        views = [case.image, case.image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT),
                 case.image.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM), case.image.transpose(PILImage.Transpose.ROTATE_90)]
        preds = self.predict([replace(case, image=v, mask=None) for v in views], mc_samples, seed)
        cal = np.mean([p.calibrated for p in preds], 0)
        k = int(cal.argmax())
        first = preds[0]
        value = float(np.mean([p.uncertainty["normalised_entropy"] for p in preds]))
        unc = {key: float(np.mean([p.uncertainty[key] for p in preds])) for key in first.uncertainty}
        unc["normalised_entropy"] = value
        unc["tta_spread"] = float(np.std([p.calibrated[k] for p in preds]))
        refer = value > self.referral_threshold
        return replace(first, label=self.labels[k], label_index=k, calibrated=cal,
                       probabilities=np.mean([p.probabilities for p in preds], 0),
                       mc_mean=np.mean([p.mc_mean for p in preds], 0),
                       mc_samples=np.concatenate([p.mc_samples for p in preds]), uncertainty=unc, refer=refer,
                       referral={**first.referral, "value": value, "advice": referral_advice(refer)},
                       warnings=first.warnings + ["Test-time augmentation: averaged over the image as is, flipped "
                                                  "left-right, flipped up-down and turned 90 degrees."],
                       case_id=case.case_id)

    def modality_disagreement(self, det: ModelOutput, present: torch.Tensor) -> torch.Tensor:
        """[B] mean pairwise symmetric KL (nats) between the calibrated predictions this model makes
        from each present modality alone (the others replaced by their learned missing embedding), as
        seed 003's disagreement weighting measures it; NaN for a case with fewer than two modalities.
        One batched fusion + head pass over the single-modality rows, encoders not re-run."""
        B, M = present.shape
        rows, cols = present.nonzero(as_tuple=True)
        out = torch.full((B,), float("nan"))
        if len(rows) == 0 or M < 2:
            return out
        single = torch.zeros(len(rows), M, dtype=torch.bool)
        single[torch.arange(len(rows)), cols] = True
        inputs = {m: (det.features[j].index(rows[cols == j]) if bool((cols == j).any()) else None)
                  for j, m in enumerate(self.modalities)}
        model = self.inference_model
        feats = model.encode(inputs, single)
        fused, _ = model.fusion(feats, single)
        logp = torch.log_softmax(model.head(fused)[0] / self.temperature, -1)
        for i in range(B):
            lp = logp[rows == i]
            if len(lp) >= 2:
                p = lp.exp()
                kl = [((p[a] * (lp[a] - lp[b])).sum() + (p[b] * (lp[b] - lp[a])).sum()) / 2
                      for a in range(len(lp)) for b in range(a + 1, len(lp))]
                out[i] = torch.stack(kl).mean()
        return out

    def encoder_fingerprint(self, modality: str) -> str | None:
        return encoder_fingerprint(self.config, modality)

    def predict(self, case: Case | Sequence[Case], mc_samples: int | None = None, seed: int = 0,
                features: Mapping[str, ModalityFeatures] | None = None):
        """A Prediction for one case, or a list for a sequence of cases (batched). ``features``: see ``run``."""
        single = isinstance(case, Case)
        cases = [case] if single else list(case)
        det, mc, present, warnings = self.run(cases, mc_samples, seed, features)
        post = posterior(det.logits, mc.logits, mc.log_var, self.temperature)
        probs, cal, unc = post.probabilities, post.calibrated, post.uncertainty
        gates = self.model.encoders["metadata"].feature_gates() if "metadata" in self.model.encoders else None
        out = []
        for i, c in enumerate(cases):
            k = int(cal[i].argmax())
            value = float(unc.normalised_entropy[i])
            diag = case_diagnostics(det.diagnostics, i)
            if gates is not None:
                diag["metadata_feature_gates"] = dict(zip(self.schema.names, gates.tolist()))
            out.append(Prediction(
                labels=self.labels, label=self.labels[k], label_index=k,
                probabilities=probs[i].numpy(), calibrated=cal[i].numpy(), mc_mean=unc.mean_probs[i].numpy(),
                mc_samples=unc.sample_probs[:, i].numpy(),
                uncertainty={"predictive_entropy": float(unc.predictive_entropy[i]), "normalised_entropy": value,
                             "aleatoric": float(unc.aleatoric[i]), "epistemic": float(unc.epistemic[i]),
                             "data_variance": float(unc.data_variance[i])},
                refer=value > self.referral_threshold,
                referral={"measure": "normalised_entropy", "value": value, "threshold": self.referral_threshold,
                          "advice": referral_advice(value > self.referral_threshold)},
                present={m: bool(present[i, j]) for j, m in enumerate(self.modalities)},
                diagnostics=diag, model=self.info() | {"path": str(self.path)}, warnings=warnings[i], case_id=c.case_id))
        return out[0] if single else out


def _cat_features(a: ModalityFeatures, b: ModalityFeatures) -> ModalityFeatures:
    """Rows of ``a`` followed by rows of ``b`` (same encoder, so the same token count)."""
    extras = None if not a.extras else {k: torch.cat([v, b.extras[k]]) for k, v in a.extras.items()}
    return ModalityFeatures(torch.cat([a.pooled, b.pooled]), tuple(torch.cat([x, y]) for x, y in zip(a.levels, b.levels)),
                            torch.cat([a.tokens, b.tokens]), torch.cat([a.token_mask, b.token_mask]), extras)


def _first_rows(diag: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of batch diagnostics (global entries kept as they are)."""
    from .fusion import GLOBAL_DIAGNOSTICS

    def pick(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: pick(key, x) for k, x in v.items()}
        if torch.is_tensor(v) and v.dim() > 0 and key not in GLOBAL_DIAGNOSTICS:
            return v[:n]
        return v
    return {k: pick(k, v) for k, v in diag.items()}


def discover_packages(root: str | Path) -> list[Path]:
    """Model package folders (those with a config.json) below ``root``, sorted; shared-weight
    folders (names starting with '_') are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("config.json") if not any(part.startswith("_") for part in p.relative_to(root).parts))


def read_package_summary(path: str | Path) -> dict[str, Any]:
    """The config facts a model list shows, without loading weights (PackageError if unreadable)."""
    cfg = _read_config(Path(path))
    return {"path": str(path), "name": cfg["name"], "cohort": cfg.get("cohort"), "variant": cfg["variant"],
            "labels": cfg["labels"], "modalities": list(cfg["architecture"]["modalities"]),
            "synthetic": bool(cfg.get("training_data", {}).get("synthetic", False)),
            "training_data": cfg.get("training_data", {}).get("description", ""),
            "metrics": cfg.get("metrics", {}), "calibration_temperature": cfg.get("calibration", {}).get("temperature"),
            "sha256": cfg["weights"].get("sha256")}
