"""Explanations of fused models: Grad-CAM lesion vs context, Captum attributions per modality,
modality Shapley values, explanation stability and faithfulness metrics. Arrays and numbers only."""
from .context import ExplainContext
from .engine import DEFAULT_PARTS, PARTS, Explanation, explain_case
from .gradcam import CAM_METHODS

__all__ = ["CAM_METHODS", "DEFAULT_PARTS", "PARTS", "ExplainContext", "Explanation", "explain_case"]
