"""Image preprocessing shared by the encoders and the explanations (numpy / scipy / OpenCV, no torch):
automatic lesion segmentation, the lesion / context-ring / background regions and region-only images.

Dependencies point one way: ``core.encoders`` and ``core.explain`` import from here, never the reverse.
"""
from .arrays import as_mask, disk, to_uint8
from .regions import REGIONS, context_ring, keep_region, region_masks
from .segmentation import FALLBACK_AREA, auto_lesion_mask, fallback_mask, segmentation_quality

__all__ = ["as_mask", "disk", "to_uint8", "REGIONS", "context_ring", "keep_region", "region_masks",
           "FALLBACK_AREA", "auto_lesion_mask", "fallback_mask", "segmentation_quality"]
