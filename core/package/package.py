"""``Package``, a loaded model package, and ``load_package``, which checks and loads a package folder."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..case import Case
from ..encoders import ModalityFeatures, build_encoder
from ..model import ModelOutput, MultimodalClassifier
from . import predictor
from .config import PackageConfig
from .format import PackageError, check_weights_file, read_config, refuse_pickles
from .pool import add_to_pool, encoder_fingerprint, pooled_encoders
from .predictor import Prediction
from .quant import quantize_int8

log = logging.getLogger(__name__)


class Package:
    """A loaded model package: the shared, read-only model plus everything needed to use it.

    ``cfg`` is the typed config (``PackageConfig``); ``config`` the raw config.json dict."""

    def __init__(self, path: Path, config: dict[str, Any], model: MultimodalClassifier):
        self.path, self.config, self.model = path, config, model
        self.cfg = PackageConfig.from_dict(config)
        self.labels: list[str] = list(self.cfg.labels)
        self.name: str = self.cfg.name
        self.variant: str = self.cfg.variant
        self.sha256: str = config["weights"]["sha256"]
        self.temperature = self.cfg.temperature
        self.referral_threshold = self.cfg.referral_threshold
        self.mc_samples = self.cfg.mc_samples
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
    def spectrum_grid(self) -> np.ndarray | None:
        """The wavelengths the spectrum encoder reads (None for a model without a spectrum)."""
        return self.model.encoders["spectrum"].grid if "spectrum" in self.model.encoders else None

    def note_tokens(self, note: str | None) -> list[str] | None:
        """The word pieces the note encoder makes of ``note`` (None without a note or a note encoder)."""
        if not note or "note" not in self.model.encoders:
            return None
        return self.model.encoders["note"].tokens(note)

    @property
    def synthetic(self) -> bool:
        return self.cfg.synthetic

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "variant": self.variant, "cohort": self.cfg.cohort,
                "sha256": self.sha256, "labels": self.labels, "modalities": self.modalities,
                "synthetic_training_data": self.synthetic, "int8": self.int8}

    def encoder_fingerprint(self, modality: str) -> str | None:
        cache = self.__dict__.setdefault("_fingerprints", {})   # the config never changes: computed once
        if modality not in cache:
            cache[modality] = encoder_fingerprint(self.config, modality)
        return cache[modality]

    # ---- cases -> tensors and predictions (core/package/predictor.py) -------------------------
    def prepare(self, cases: Sequence[Case], skip: frozenset[str] | set[str] = frozenset()
                ) -> tuple[dict[str, Any], torch.Tensor, list[list[str]]]:
        return predictor.prepare_batch(self.model, cases, skip)

    def run(self, cases: Sequence[Case], mc_samples: int | None = None, seed: int = 0,
            features: Mapping[str, ModalityFeatures] | None = None) -> tuple[ModelOutput, ModelOutput, torch.Tensor, list[list[str]]]:
        return predictor.run(self, cases, mc_samples, seed, features)

    run.__doc__ = predictor.run.__doc__

    def predict(self, case: Case | Sequence[Case], mc_samples: int | None = None, seed: int = 0,
                features: Mapping[str, ModalityFeatures] | None = None):
        return predictor.predict(self, case, mc_samples, seed, features)

    predict.__doc__ = predictor.predict.__doc__

    def predict_tta(self, case: Case, mc_samples: int | None = None, seed: int = 0) -> Prediction:
        return predictor.predict_tta(self, case, mc_samples, seed)

    predict_tta.__doc__ = predictor.predict_tta.__doc__


def build_model(arch: Mapping[str, Any], reuse: Mapping[str, Any] | None = None) -> MultimodalClassifier:
    """``reuse``: modality -> an already built encoder to use instead of building one."""
    reuse = reuse or {}
    encoders = {m: reuse[m] if m in reuse else build_encoder(m, cfg) for m, cfg in arch["modalities"].items()}
    f = arch["fusion"]
    return MultimodalClassifier(encoders, arch["n_classes"], f["name"], f.get("options", {}), f.get("out_dim", 256),
                                arch.get("head", {}), arch.get("missing", "embedding"))


def load_package(path: str | Path, root: str | Path | None = None, share_encoders: bool = True,
                 int8: bool | None = None) -> Package:
    """Load a package folder. Weights files must be safetensors whose sha256 matches config.json and
    lie inside ``root`` (default: the package's parent folder, where a suite keeps shared files).

    ``share_encoders``: frozen encoders with identical weights are one module per process (see
    ``encoder_fingerprint``); a loaded package is read-only, so sharing is safe. Pass False for a
    private copy (e.g. to fine-tune it)."""
    pkg = Path(path).resolve()
    if not pkg.is_dir():
        raise PackageError(f"{pkg}: no such model folder.")
    refuse_pickles(pkg)
    root = Path(root).resolve() if root else pkg.parent
    cfg = read_config(pkg)
    files = [(check_weights_file(pkg, cfg["weights"], root), "")]
    files += [(check_weights_file(pkg, e, root), e.get("prefix", "")) for e in cfg.get("shared_weights", [])]
    keys = {m: encoder_fingerprint(cfg, m) for m in cfg["architecture"].get("modalities", {})} if share_encoders else {}
    keys = {m: k for m, k in keys.items() if k is not None}
    reuse = pooled_encoders(keys)
    try:
        model = build_model(cfg["architecture"], reuse)
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{pkg / 'config.json'}: the architecture can't be built ({e}).") from None
    state = _read_weights(files)
    external = cfg.get("external_weights", [])
    expected = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in external)}
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
    add_to_pool(keys, model.encoders)
    package = Package(pkg, cfg, model)
    if int8 if int8 is not None else package.cfg.int8:
        package.use_int8()
    log.debug("loaded %s (%s, %d shared encoders)", pkg, package.variant, len(reuse))
    return package


def _read_weights(files: Sequence[tuple[Path, str]]) -> dict[str, torch.Tensor]:
    """Every (checked safetensors file, declared prefix) read into one state dict."""
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
    return state
