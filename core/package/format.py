"""The package folder on disk: ``config.json`` + ``model.safetensors`` (never a pickle), sha256 checks,
writing a package, and reading its config without loading weights.

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
from pathlib import Path
from typing import Any, Mapping, Sequence

from safetensors.torch import save_file

from .. import __version__
from ..encoders import encoder_config
from ..errors import FusionLensError
from ..fusion import FUSIONS
from ..model import MultimodalClassifier
from .config import PackageConfig

FORMAT = "fusionlens-package/1"
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".sav")
RESEARCH_NOTICE = "Research use only, not a medical device: never use it to diagnose or treat a patient."


class PackageError(FusionLensError):
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


def external_prefixes(model: MultimodalClassifier) -> list[str]:
    """State-dict prefixes whose weights a package references instead of storing."""
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
    skip = external_prefixes(model)
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


def check_weights_file(pkg: Path, entry: Mapping[str, Any], root: Path) -> Path:
    """The weights file a config entry names, after checking it lies under ``root``, is safetensors
    and matches its sha256 (PackageError otherwise)."""
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


def refuse_pickles(pkg: Path) -> None:
    pickles = sorted(p.name for p in pkg.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PackageError(f"{pkg}: refused because it contains pickle-based files ({', '.join(pickles)}); "
                           "FusionLens loads safetensors only.")


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


read_config = _read_config


def discover_packages(root: str | Path) -> list[Path]:
    """Model package folders (those with a config.json) below ``root``, sorted; shared-weight
    folders (names starting with '_') are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("config.json") if not any(part.startswith("_") for part in p.relative_to(root).parts))


def read_package_summary(path: str | Path) -> dict[str, Any]:
    """The config facts a model list shows, without loading weights (PackageError if unreadable)."""
    raw = _read_config(Path(path))
    cfg = PackageConfig.from_dict(raw)
    return {"path": str(path), "name": cfg.name, "cohort": cfg.cohort, "variant": cfg.variant,
            "labels": raw["labels"], "modalities": list(cfg.modalities), "synthetic": cfg.synthetic,
            "training_data": cfg.training_description, "metrics": cfg.metrics,
            "calibration_temperature": raw.get("calibration", {}).get("temperature"), "sha256": cfg.sha256}
