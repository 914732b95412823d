"""Explanations of fused models: Grad-CAM lesion vs context, Captum attributions per modality,
modality Shapley values, explanation stability and faithfulness metrics. Arrays and numbers only."""
from .context import ExplainContext
from .engine import Explanation, ExplainCancelled, explain_case
from .gradcam import CAM_METHODS
from .parts import DEFAULT_PARTS, EXPLAIN_PARTS, PARTS, Part, default_parts

__all__ = ["CAM_METHODS", "DEFAULT_PARTS", "EXPLAIN_PARTS", "PARTS", "ExplainCancelled", "ExplainContext", "Explanation",
           "Part", "default_parts", "explain_case"]
