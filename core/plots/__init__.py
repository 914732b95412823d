"""Figures from prediction and explanation arrays: plotly for the dashboard, matplotlib for PNGs.

Computing is separate from drawing: ``core.explain`` returns arrays and numbers, this package turns
them into figures, the dashboard only shows them. Nothing here imports streamlit or touches a
model. User text that ends up in HTML (:func:`note_highlight_html`) is always escaped.

Modules: ``base`` (colours, template, layout, image helpers), ``prediction`` (probabilities, referral,
variant / cohort comparison), ``fusion`` (fusion internals, attention, Shapley), ``images`` (heatmaps on
the image, lesion / context checks) and ``attributions`` (note, table, spectrum). Import from
``core.plots``; the split is an implementation detail.
"""
from __future__ import annotations

from .attributions import attribution_bands, note_highlight_html, spectrum_attribution, spectrum_preview, table_attribution_bars
from .base import DISPLAY_SIDE, LEVEL_NAMES, MODALITY_COLOURS, REGION_COLOURS, SCALE_NAMES
from .fusion import (attention_heatmap, counterfactual_bars, gates_per_dim_heatmap, key_labels, level_gates_heatmap,
                     modality_bars, patch_attention_overlay, patch_grid, shapley_bars, weight_bars)
from .images import (CONFIDENCE_NAMES, cam_overlay, cam_overlay_png, confidence_check, heatmap_pair, mask_outline_shapes,
                     region_shares, stability_figure)
from .prediction import (cohort_metric_bars, mc_distribution, probability_bars, referral_curve, referral_position,
                         variant_probabilities)

__all__ = [
    "CONFIDENCE_NAMES", "DISPLAY_SIDE", "LEVEL_NAMES", "MODALITY_COLOURS", "REGION_COLOURS", "SCALE_NAMES",
    "attention_heatmap", "attribution_bands", "cam_overlay", "cam_overlay_png", "cohort_metric_bars", "confidence_check",
    "counterfactual_bars", "gates_per_dim_heatmap", "heatmap_pair", "key_labels", "level_gates_heatmap", "mask_outline_shapes",
    "mc_distribution", "modality_bars", "note_highlight_html", "patch_attention_overlay", "patch_grid", "probability_bars",
    "referral_curve", "referral_position", "region_shares", "shapley_bars", "spectrum_attribution", "spectrum_preview",
    "stability_figure", "table_attribution_bars", "variant_probabilities", "weight_bars",
]
