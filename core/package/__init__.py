"""Model packages: a folder with ``config.json`` + ``model.safetensors``; never a pickle.

- ``format``: the disk format, sha256 checks, ``save_package``, ``discover_packages``, summaries
- ``config``: ``PackageConfig``, the typed facts of config.json
- ``pool``: the process-wide pool of frozen encoders shared by packages
- ``package``: ``Package`` (a loaded package) and ``load_package``
- ``predictor``: cases -> tensors, MC dropout, the posterior, TTA and the referral policy
- ``quant``: the int8 deployment option
"""
from __future__ import annotations

from ..utils import to_jsonable
from .config import PackageConfig
from .format import (FORMAT, PICKLE_SUFFIXES, RESEARCH_NOTICE, WEIGHTS, PackageError, _read_config, architecture,
                     discover_packages, read_package_summary, save_package, sha256_file)
from .package import Package, build_model, load_package
from .pool import _ENCODER_POOL, _POOL_LOCK, encoder_fingerprint
from .predictor import (Posterior, Prediction, make_prediction, posterior, prepare_batch, referral,
                        referral_advice)
from .quant import quantize_int8

__all__ = ["FORMAT", "PICKLE_SUFFIXES", "RESEARCH_NOTICE", "WEIGHTS", "Package", "PackageConfig", "PackageError",
           "Posterior", "Prediction", "architecture", "build_model", "discover_packages", "encoder_fingerprint",
           "load_package", "make_prediction", "posterior", "prepare_batch", "quantize_int8", "read_package_summary",
           "referral", "referral_advice", "save_package", "sha256_file", "to_jsonable",
           "_ENCODER_POOL", "_POOL_LOCK", "_read_config"]
