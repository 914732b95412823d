"""FusionLens core: multimodal clinical classifiers, fusion variants, uncertainty, explanations.

Research use only, not a medical device.
"""
__version__ = "0.1.0"

from .case import Case, CaseError
from .fusion import FUSIONS
from .model import MultimodalClassifier
from .package import (RESEARCH_NOTICE, Package, PackageError, Prediction, build_model,
                      discover_packages, load_package, read_package_summary, save_package)

__all__ = ["Case", "CaseError", "FUSIONS", "MultimodalClassifier", "Package", "PackageError", "Prediction",
           "RESEARCH_NOTICE", "build_model", "discover_packages", "load_package", "read_package_summary",
           "save_package", "__version__"]
