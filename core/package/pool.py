"""The process-wide pool of frozen encoders.

Frozen encoders whose weights are identical in several packages (a pip-shipped pretrained encoder, or
a suite's shared safetensors file with the same sha256) are built once per process and the one
module is used by every such package: a suite of 13 packages holds one MiniLM, not 13. Entries go
away with the last package that uses them.
"""
from __future__ import annotations

import json
import threading
import weakref
from typing import Any, Mapping

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


def pooled_encoders(keys: Mapping[str, str]) -> dict[str, Any]:
    """modality -> the pooled encoder for each fingerprint already in the pool."""
    with _POOL_LOCK:
        return {m: enc for m, k in keys.items() if (enc := _ENCODER_POOL.get(k)) is not None}


def add_to_pool(keys: Mapping[str, str], encoders: Mapping[str, Any]) -> None:
    """Offer a loaded package's frozen encoders to the pool (the first one for a key stays)."""
    with _POOL_LOCK:
        for m, k in keys.items():
            _ENCODER_POOL.setdefault(k, encoders[m])
