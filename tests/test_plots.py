"""core.plots: every figure builder on small explanation-shaped arrays (no model, no streamlit)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from core import plots

LABELS = ["benign", "malignant", "other"]
MODS = ["image", "note", "metadata"]


def types(fig: go.Figure) -> list[str]:
    return [t.type for t in fig.data]


def paths(fig: go.Figure) -> list[dict]:
    return [s for s in fig.layout.shapes if s.type == "path"]


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


@pytest.fixture
def mask():
    m = np.zeros((40, 48), bool)
    m[10:30, 12:36] = True
    return m


def test_probability_bars_mark_the_prediction_and_the_true_label():
    fig = plots.probability_bars(LABELS, [0.2, 0.7, 0.1], std=[0.05, 0.1, 0.02], true_label="benign")
    assert isinstance(fig, go.Figure) and types(fig) == ["bar"]
    bar = fig.data[0]
    assert list(bar.x) == LABELS and list(bar.error_y.array) == [0.05, 0.1, 0.02]
    assert "true label" in bar.text[0] and bar.marker.color[1] != bar.marker.color[0]


def _column(name: str, variant: str, p_malignant: float) -> dict:
    probs = {"benign": 1 - p_malignant - 0.05, "malignant": p_malignant, "other": 0.05}
    return {"name": name, "variant": variant, "label": max(probs, key=probs.get), "probability": max(probs.values()),
            "probabilities": probs, "normalised_entropy": 0.4, "refer": False}


def test_compared_packages_of_one_variant_type_get_their_own_bar_and_row():
    # HAM10000 gated and gated_kan are both fusion variant "gated": labelled by the type, plotly drew them as one
    # stacked bar (0.9 + 0.8 = 170%) and the report table had two rows both called "gated"
    cols = [_column("ham10000/concat", "concat", 0.7), _column("ham10000/gated", "gated", 0.9),
            _column("ham10000/gated_kan", "gated", 0.8)]
    fig = plots.variant_probabilities(cols, "malignant")
    assert types(fig) == ["bar"] and list(fig.data[0].y) == ["concat", "gated", "gated_kan (gated)"]
    assert list(fig.data[0].x) == [0.7, 0.9, 0.8] and max(fig.data[0].x) <= 1.0
    assert plots.prediction.package_labels(cols) == list(fig.data[0].y)

    from core.report.sections import comparison_rows

    rows = comparison_rows({"columns": cols})
    assert [r[0] for r in rows] == ["concat", "gated", "gated_kan (gated)"]
    # names that still collide (two cohorts' gated, the same package twice) stay distinct too
    same = [_column("ham10000/gated", "gated", 0.9), _column("dermatology/gated", "gated", 0.5),
            _column("dermatology/gated", "gated", 0.5)]
    labels = plots.prediction.package_labels(same)
    assert len(set(labels)) == 3 and labels[0] == "ham10000/gated"


def test_mc_distribution_has_one_box_per_class():
    samples = np.random.default_rng(0).dirichlet(np.ones(3), size=8)
    fig = plots.mc_distribution(LABELS, samples)
    assert types(fig) == ["box"] * 3
    assert [t.name for t in fig.data] == LABELS and len(fig.data[1].y) == 8


def test_referral_curve_and_the_case_position():
    curve = {"fractions": [0.0, 0.1, 0.2, 0.3], "accuracy": [0.6, 0.65, 0.7, 0.72], "thresholds": [1.0, 0.9, 0.8, 0.7]}
    assert plots.referral_position(curve, 0.85) == 0.2
    assert plots.referral_position(curve, 0.5) is None
    assert plots.referral_position({"fractions": [0.0, 0.1], "accuracy": [0.5, 0.6]}, 0.9) is None
    fig = plots.referral_curve(curve["fractions"], curve["accuracy"], operating_fraction=0.2, case_fraction=0.2,
                               case_referred=True)
    assert types(fig) == ["scatter", "scatter"]
    assert fig.data[1].name == "this case" and fig.data[1].y[0] == pytest.approx(0.7)
    assert any(s.type == "line" and s.x0 == 0.2 for s in fig.layout.shapes)


def test_modality_and_weight_bars():
    fig = plots.modality_bars(dict(zip(MODS, [0.5, 0.3, 0.2])), "weights", reference=1 / 3)
    assert types(fig) == ["bar"] and list(fig.data[0].x) == MODS
    assert len(fig.data[0].marker.color) == 3 and len(fig.layout.shapes) == 1
    fig = plots.weight_bars(plots.LEVEL_NAMES, np.array([0.2, 0.3, 0.5]), "levels")
    assert list(fig.data[0].x) == list(plots.LEVEL_NAMES)


def test_gate_heatmaps():
    g = np.random.default_rng(0).random((3, 32))
    fig = plots.gates_per_dim_heatmap(MODS, g)
    assert types(fig) == ["heatmap"] and np.asarray(fig.data[0].z).shape == (3, 32) and list(fig.data[0].y) == MODS
    fig = plots.level_gates_heatmap(MODS, np.full((3, 3), 1 / 3))
    assert list(fig.data[0].y) == list(plots.LEVEL_NAMES) and list(fig.data[0].x) == MODS


def test_key_labels_name_patches_word_pieces_features_and_missing_tokens():
    spans = {"image": (0, 16), "note": (16, 19), "metadata": (19, 22)}
    labels = plots.key_labels(spans, 22, ["[CLS]", "it", "##chy"], ["age", "sex", "site"])
    assert labels[0] == "image r0 c0" and labels[5] == "image r1 c1"
    assert labels[17] == "note 'it'" and labels[21] == "table site"
    assert plots.key_labels({"note": (0, 1), "image": (1, 2)}, 2, missing=("note",)) == ["note (missing)", "image r0 c0"]
    spec = plots.key_labels({"spectrum": (0, 2)}, 2, wavelengths=np.linspace(1000, 1100, 64))
    assert spec == ["spectrum 1000-1050", "spectrum 1050-1100"]
    assert plots.patch_grid(16) == (4, 4) and plots.patch_grid(6) == (1, 6)


def test_attention_heatmap_boxes_each_key_span():
    spans = {"note": (0, 15), "metadata": (15, 18)}
    a = np.random.default_rng(0).dirichlet(np.ones(18), size=16)
    keys = plots.key_labels(spans, 18, None, ["age", "sex", "site"])
    fig = plots.attention_heatmap(a, spans, keys, [f"q{i}" for i in range(16)], "attention")
    assert types(fig) == ["heatmap"] and np.asarray(fig.data[0].z).shape == (16, 18)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(-0.5, 14.5), (14.5, 17.5)]
    assert [r.name for r in rects] == ["note", "metadata"]
    assert {ann.text for ann in fig.layout.annotations} == {"<b>note</b>", "<b>metadata</b>"}
    assert list(fig.layout.xaxis.ticktext)[15] == "table age"


def test_patch_attention_overlay_draws_the_patch_grid(image):
    fig = plots.patch_attention_overlay(image, np.arange(16) / 16, opacity=0.4)
    assert types(fig) == ["image", "heatmap"]
    assert np.asarray(fig.data[1].z).shape == (4, 4) and fig.data[1].opacity == 0.4
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == 6  # 3 inner vertical + 3 horizontal lines


def test_modality_shapley_and_counterfactual_bars():
    rep = {"values": {"image": 0.01, "note": 0.2, "metadata": -0.05}, "full": 0.64, "none": 0.48,
           "without": {"image": 0.64, "note": 0.5, "metadata": 0.66}, "only": {"image": 0.5, "note": 0.62, "metadata": 0.45},
           "top_modality": "note"}
    fig = plots.shapley_bars(rep)
    assert types(fig) == ["bar"] and list(fig.data[0].text) == ["+0.010", "+0.200", "-0.050"]
    fig = plots.counterfactual_bars(rep)
    assert types(fig) == ["bar", "bar"] and [t.name for t in fig.data] == ["without this modality", "only this modality"]
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == 2


def test_cam_overlay_outlines_lesion_and_context(image, mask):
    cam = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    ring = np.zeros_like(mask)
    ring[5:35, 6:42] = True
    ring &= ~mask
    fig = plots.cam_overlay(image, cam, 0.3, mask, ring, "gradcam")
    assert types(fig) == ["image", "heatmap"]
    heat = fig.data[1]
    assert np.asarray(heat.z).shape == (40, 48) and heat.opacity == 0.3  # stretched to the image
    names = [s.name for s in paths(fig)]
    assert names.count("lesion outline") == 1 and names.count("context ring outline") >= 1
    assert len(plots.mask_outline_shapes(mask, (80, 96))) == 1
    assert plots.cam_overlay(image, cam).layout.shapes == ()


def test_large_images_are_downscaled_for_figures():
    big = Image.new("RGB", (1200, 600), (128, 60, 60))
    fig = plots.cam_overlay(big, np.ones((32, 32)) * 0.5)
    assert np.asarray(fig.data[0].z).shape[:2] == (192, 384)


def test_region_shares_and_confidence_check():
    shares = {"lesion": 0.6, "context": 0.3, "background": 0.1, "lesion_area": 0.25, "context_area": 0.35,
              "background_area": 0.4, "cam_mass": 12.0, "pointing_game": {"hit_lesion": True}}
    fig = plots.region_shares(shares)
    assert types(fig) == ["bar", "bar"] and list(fig.data[0].y) == [0.6, 0.3, 0.1] and list(fig.data[1].y) == [0.25, 0.35, 0.4]
    fig = plots.confidence_check({"full": 0.7, "lesion_only": 0.65, "context_only": 0.4, "neither": 0.35}, "malignant")
    assert list(fig.data[0].x) == ["full image", "lesion only", "context only", "neither (all blurred)"]


def test_lesion_context_maps_and_stability(mask):
    cam = np.random.default_rng(0).random((40, 48))
    fig = plots.heatmap_pair(np.where(mask, cam, 0), np.where(~mask, cam, 0))
    assert types(fig) == ["heatmap", "heatmap"] and fig.data[0].zmax == fig.data[1].zmax
    stab = {"mean": np.random.default_rng(1).random((32, 32)), "std": np.full((32, 32), 0.05),
            "mean_pairwise_correlation": 0.9, "samples": 8}
    fig = plots.stability_figure(stab)
    assert types(fig) == ["heatmap", "heatmap"] and [t.name for t in fig.data] == ["mean", "std"]


def test_cam_overlay_png(image, mask):
    png = plots.cam_overlay_png(image, np.random.default_rng(0).random((32, 32)), mask)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_note_html_escapes_user_text_and_highlights_words():
    note = "<script>alert(1)</script> itchy & bleeding"
    words = [{"start": 0, "end": 8, "score": 0.5, "text": "<script>"}, {"start": 26, "end": 31, "score": -0.2, "text": "itchy"}]
    out = plots.note_highlight_html(note, words)
    assert "<script" not in out and "&lt;script&gt;" in out and "&amp; bleeding" in out
    assert out.count("<span") == 2 and "rgba(214,39,40" in out and "rgba(31,119,180" in out
    plain = plots.note_highlight_html('"><img src=x onerror=alert(1)>')
    assert "<img" not in plain and "&lt;img" in plain


def test_table_attribution_bars_show_values_and_units():
    feats = [{"name": "age", "unit": "years", "value": 62.0, "baseline": 50, "integrated_gradients": 0.3, "shapley": 0.25},
             {"name": "site", "unit": "", "value": None, "baseline": "back", "integrated_gradients": -0.1, "shapley": -0.1}]
    fig = plots.table_attribution_bars(feats, "integrated_gradients")
    assert types(fig) == ["bar"] and fig.data[0].orientation == "h"
    assert list(fig.data[0].y) == ["age = 62 years", "site = missing"] and list(fig.data[0].x) == [0.3, -0.1]
    assert list(plots.table_attribution_bars(feats, "shapley").data[0].x) == [0.25, -0.1]


def test_spectrum_attribution_shades_the_strongest_band():
    w = np.linspace(1000, 1100, 64)
    smoothed = np.exp(-((w - 1040) / 5) ** 2)
    assert plots.attribution_bands(w, smoothed) == [pytest.approx((1036.5, 1042.8), abs=2)]
    fig = plots.spectrum_attribution(w, np.sin(w / 10), smoothed, raw=smoothed * 1.1)
    assert types(fig) == ["scatter"] * 3
    assert [t.name for t in fig.data] == ["spectrum", "attribution (raw)", "attribution (smoothed)"]
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) >= 1
    assert plots.attribution_bands(w, np.zeros_like(w)) == []
    assert types(plots.spectrum_preview(np.stack([w, np.cos(w)], 1))) == ["scatter"]
