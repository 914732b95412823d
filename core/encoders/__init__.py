"""Modality encoders and the registry that builds them from a package's config."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Encoder, ModalityFeatures, ModalitySpec, masked_mean
from .spectrum import SpectrumEncoder
from .tabular import Feature, TabularEncoder, TabularSchema

ENCODERS: Registry[type[Encoder]] = Registry("encoder type")
ENCODERS.register("tabular")(TabularEncoder)
ENCODERS.register("spectrum")(SpectrumEncoder)

#: the four input channels a Case has, and the encoder type each uses by default
MODALITIES = ("image", "note", "metadata", "spectrum")
DEFAULT_TYPE = {"image": "image", "note": "text", "metadata": "tabular", "spectrum": "spectrum"}


def _register_heavy() -> None:
    # image / text pull in torchvision and transformers; registered here all the same
    from .dual import DualExpertEncoder
    from .image import ImageEncoder
    from .text import TextEncoder

    ENCODERS.register("image")(ImageEncoder)
    ENCODERS.register("text")(TextEncoder)
    ENCODERS.register("dual_expert")(DualExpertEncoder)


_register_heavy()


def build_encoder(modality: str, cfg: dict[str, Any]) -> Encoder:
    """``{"type": ..., "frozen": bool, **kwargs}`` -> an encoder for ``modality``."""
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality '{modality}'; use one of: {', '.join(MODALITIES)}.")
    cfg = dict(cfg)
    kind = cfg.pop("type", DEFAULT_TYPE[modality])
    frozen = cfg.pop("frozen", False)
    enc = ENCODERS.get(kind)(**cfg)
    enc.modality = modality
    return enc.freeze() if frozen else enc


def encoder_config(enc: Encoder) -> dict[str, Any]:
    kind = next(n for n in ENCODERS.names() if type(enc) is ENCODERS.get(n))
    return {"type": kind, "frozen": enc.frozen, **enc.config()}


__all__ = ["Encoder", "ModalityFeatures", "ModalitySpec", "masked_mean", "ENCODERS", "MODALITIES",
           "build_encoder", "encoder_config", "Feature", "TabularSchema", "TabularEncoder", "SpectrumEncoder"]
