"""``PackageConfig``: the facts of a package's ``config.json``, parsed once into typed attributes, so
pages, the CLI and reports read ``pkg.cfg.head_type`` instead of ``.get()`` chains into the raw dict."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..encoders.tabular import TabularSchema


def _dict(v: Any) -> dict[str, Any]:
    return dict(v) if isinstance(v, Mapping) else {}


def _schema(meta: Mapping[str, Any] | None) -> TabularSchema | None:
    if not meta or meta.get("schema") is None:
        return None
    try:
        return TabularSchema(meta["schema"])
    except (KeyError, TypeError, ValueError):   # load_package reports a bad schema when it builds the encoder
        return None


@dataclass(frozen=True)
class PackageConfig:
    """What a package's config.json says, with the defaults older packages rely on. Dict-valued fields
    are plain dicts (JSON-ready); treat them as read-only."""

    name: str
    variant: str
    labels: tuple[str, ...]
    cohort: str | None = None
    label_descriptions: dict[str, str] = field(default_factory=dict)
    # calibration, MC dropout and the referral policy
    temperature: float = 1.0
    mc_samples: int = 30
    referral_threshold: float = 0.5
    referral_measure: str = "normalised_entropy"
    refer_fraction: float | None = None          # the share of validation cases the threshold refers
    # architecture
    modalities: tuple[str, ...] = ()
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_classes: int = 0
    fusion_name: str = ""
    fusion_options: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    missing_mode: str = "embedding"
    schema: TabularSchema | None = field(default=None, compare=False)
    spectrum_grid: tuple[float, ...] | None = None
    # weights and deployment
    sha256: str | None = None
    external_weights: tuple[str, ...] = ()
    shared_weights: tuple[dict[str, Any], ...] = ()
    int8: bool = False
    # provenance
    synthetic: bool = False
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    software_version: str | None = None

    @property
    def head_type(self) -> str:
        return str(self.head.get("type", "residual"))

    @property
    def temperature_mode(self) -> str:
        """The fusion's learned-temperature mode (the attention variants' ``temperature_mode`` option)."""
        return str(self.fusion_options.get("temperature_mode", "scale"))

    @property
    def training_description(self) -> str:
        return str(self.training_data.get("description", "") or "")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "PackageConfig":
        arch = _dict(raw.get("architecture"))
        encoders = {m: _dict(c) for m, c in _dict(arch.get("modalities")).items()}
        fusion = _dict(arch.get("fusion"))
        meta = encoders.get("metadata")
        schema = _schema(meta)
        spec = encoders.get("spectrum")
        grid = tuple(float(w) for w in spec["wavelengths"]) if spec and spec.get("wavelengths") is not None else None
        training = _dict(raw.get("training_data"))
        train_config = _dict(raw.get("train_config"))
        fraction = _dict(train_config.get("train")).get("refer_fraction")
        return cls(
            name=raw["name"], variant=raw.get("variant", fusion.get("name", "")), labels=tuple(raw["labels"]),
            cohort=raw.get("cohort"), label_descriptions=_dict(raw.get("label_descriptions")),
            temperature=float(_dict(raw.get("calibration")).get("temperature", 1.0)),
            mc_samples=int(raw.get("mc_samples", 30)),
            referral_threshold=float(_dict(raw.get("referral")).get("threshold", 0.5)),
            referral_measure=str(_dict(raw.get("referral")).get("measure", "normalised_entropy")),
            refer_fraction=None if fraction is None else float(fraction),
            modalities=tuple(encoders), encoders=encoders, n_classes=int(arch.get("n_classes", len(raw["labels"]))),
            fusion_name=str(fusion.get("name", "")), fusion_options=_dict(fusion.get("options")),
            head=_dict(arch.get("head")), missing_mode=str(arch.get("missing", "embedding")),
            schema=schema, spectrum_grid=grid,
            sha256=_dict(raw.get("weights")).get("sha256"),
            external_weights=tuple(raw.get("external_weights", [])),
            shared_weights=tuple(_dict(e) for e in raw.get("shared_weights", [])),
            int8=bool(_dict(raw.get("deployment")).get("int8", False)),
            synthetic=bool(training.get("synthetic", False)), training_data=training,
            metrics=_dict(raw.get("metrics")), train_config=train_config,
            software_version=raw.get("software_version"),
        )
