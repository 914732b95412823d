"""Issue #15 §4: the shipped suite measured through another image map than Grad-CAM (the map the known-answer
controls validated, middle-stage feature occlusion), stored beside the Grad-CAM results, and offered on the Image
explanations page. Tiny models (tests/tiny.py); the suite's cohort generator is replaced by a few hand-made cases."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import core.explain.gradcam as G
import core.explain.image_maps as IM
from core import load_package
from core.explain import ExplainContext
from test_faithfulness_metrics import _items
from tiny import make_case, save_suite

ROOT = Path(__file__).resolve().parents[1]
LESION = np.pad(np.ones((10, 10)), 15)          # exactly the lesion of ``_items`` (40 x 40, lesion 100 px): ratio 16


def _script():
    spec = importlib.util.spec_from_file_location("faithfulness_table", ROOT / "scripts" / "faithfulness_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    save_suite(root, ("gated", "mmtm"))
    return root / "dermatology"


def test_image_cam_draws_the_map_method_and_not_a_cam(suite):
    pkg = load_package(suite / "mmtm")
    ctx = ExplainContext(pkg, make_case(1))
    m = G.image_cam(ctx, "feature_occlusion", "last stage")
    np.testing.assert_allclose(m, IM.image_map(ctx, "feature_occlusion"), atol=1e-6)
    assert m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1 + 1e-6
    assert not np.allclose(m, G.image_cam(ctx, "gradcam", "last stage"), atol=1e-3)   # the method reached the map
    with pytest.raises(ValueError, match="test-time augmentation"):
        G.image_cam(ctx, "feature_occlusion", tta=True)
    with pytest.raises(ValueError, match="MC-dropout"):
        G.cam_stability(ctx, "feature_occlusion")
    assert G.describe_cam("feature_occlusion", "last stage") == "Feature occlusion (middle stage)"
    assert G.method_cost("feature_occlusion").startswith("slow") and G.method_cost("gradcam") == "fast"
    # the registry the page lists: the CAMs, then the maps a plain encoder can draw; the default is unchanged
    assert G.heatmap_methods(pkg) == [*G.CAM_METHODS, "feature_occlusion"]
    assert G.default_cam(pkg) == ("gradcam", "last stage")


def test_dual_experts_are_not_offered_the_middle_stage_map():
    from test_dual_expert import dual_model

    dual = SimpleNamespace(model=dual_model(), cfg=SimpleNamespace(cohort="dermatology"))
    assert "feature_occlusion" not in G.heatmap_methods(dual) and G.validated_map(dual) is None
    assert _script().map_unavailable(dual, "feature_occlusion").startswith("dual-expert")


def test_validated_map_is_the_suites_and_defaults_stay(monkeypatch):
    from core.encoders.image import ImageEncoder

    enc = ImageEncoder("efficientnet_lite0", pretrained=False, image_size=224)
    derm = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="dermatology"))
    ham = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="ham10000"))
    assert G.validated_map(derm) == "feature_occlusion" and G.validated_map(ham) is None
    # HAM10000's measured default and everyone else's Grad-CAM are not changed by the new method
    assert G.default_cam(ham) == ("gradcam++", "last × early stage") and G.default_cam(derm) == ("gradcam", "last stage")


def test_measure_map_scores_the_map_of_the_method_asked_for(suite, tmp_path, monkeypatch):
    """A known map per method: feature occlusion = the lesion mask (ratio 16, always hits the lesion), the CAM =
    uniform (ratio 1). If the method were ignored (the CAM drawn instead) the ratio would be 1."""
    mod = _script()
    pkg = load_package(suite / "gated")
    seen = []
    monkeypatch.setattr(IM, "image_map", lambda ctx, method: seen.append(method) or LESION)
    monkeypatch.setattr(G, "image_cam", lambda ctx, method="gradcam", layer="last stage", **k: np.ones((40, 40)))
    items = _items(tmp_path, ["lesion", "context", "lesion"])
    f = mod.measure_map(pkg, items, "feature_occlusion")
    assert set(seen) == {"feature_occlusion"} and len(seen) == f["n_maps"] >= 3
    a = f["predicted"]["all"]
    assert a["lesion_ratio_lesion_decided"] == pytest.approx(16.0)
    assert a["pointing_game_lesion_decided"] == 1.0 and a["pointing_game_context_decided"] == 0.0
    assert a["pointing_game_decisive_chance"] == pytest.approx((2 * 100 / 1600 + 0.5) / 3)
    assert np.isnan(a["shapley_decisive_balanced"])            # image measures only: Shapley stays with Grad-CAM's run
    assert f["method"] == "feature_occlusion" and f["seconds_per_map"] >= 0
    g = mod.measure_map(pkg, items, "gradcam")
    assert g["predicted"]["all"]["lesion_ratio_lesion_decided"] == pytest.approx(1.0)


def test_script_stores_the_map_beside_the_gradcam_results(suite, tmp_path, monkeypatch):
    """--method feature_occlusion: faithfulness_maps[method] in each metrics.json, Grad-CAM's 'faithfulness' untouched,
    the table in faithfulness_feature_occlusion.md with the fusion variants' best / median."""
    import shutil

    import core.data.cohorts.dermatology as D

    models = tmp_path / "dermatology"
    shutil.copytree(suite, models)
    for name in ("gated", "mmtm"):
        m = json.loads((models / name / "metrics.json").read_text()) if (models / name / "metrics.json").is_file() else {}
        m["faithfulness"] = {"method": "gradcam", "sentinel": name}
        (models / name / "metrics.json").write_text(json.dumps(m))
    items = _items(tmp_path, ["lesion", "note", "context", "metadata", "lesion"])
    seen = []
    monkeypatch.setattr(D, "generate_dermatology", lambda **k: SimpleNamespace(items=items))
    monkeypatch.setattr(IM, "image_map", lambda ctx, method: seen.append(method) or LESION)
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--seed", "12345", "--per-kind", "2", "--models",
                                      str(models), "--method", "feature_occlusion"])
    _script().main()
    assert set(seen) == {"feature_occlusion"}
    for name in ("gated", "mmtm"):
        m = json.loads((models / name / "metrics.json").read_text())
        assert m["faithfulness"] == {"method": "gradcam", "sentinel": name}
        f = m["faithfulness_maps"]["feature_occlusion"]
        assert f["generator_seed"] == 12345 and f["predicted"]["all"]["n"] == 3   # lesion + context cases only
        assert f["predicted"]["all"]["lesion_ratio_lesion_decided"] == pytest.approx(16.0)
    md = (models / "faithfulness_feature_occlusion.md").read_text()
    assert "Feature occlusion" in md and "`mmtm`" in md and "median 16.00" in md
    assert not (models / "faithfulness.md").exists()
    # --store-json: results of side-by-side --json runs go into the packages the same way
    look = tmp_path / "look.json"
    f = json.loads((models / "mmtm" / "metrics.json").read_text())["faithfulness_maps"]["feature_occlusion"]
    look.write_text(json.dumps({"mmtm": {**f, "generator_seed": 777}}))
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--models", str(models), "--store-json", str(look)])
    _script().main()
    m = json.loads((models / "mmtm" / "metrics.json").read_text())
    assert m["faithfulness_maps"]["feature_occlusion"]["generator_seed"] == 777
    assert m["faithfulness"] == {"method": "gradcam", "sentinel": "mmtm"}
    assert "seed 777, 12345" in (models / "faithfulness_feature_occlusion.md").read_text()


def test_the_page_offers_the_validated_map_and_says_so(suite, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from test_dual_expert import masked_case

    monkeypatch.setitem(G.VALIDATED_MAPS, ("dermatology", "tiny"), "feature_occlusion")
    monkeypatch.setenv("FUSIONLENS_MODELS", str(suite.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    at.session_state["fl_case"] = masked_case(2)
    at.session_state["stability_samples"] = 4
    at.switch_page("pages/4_Image_explanations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="cam_method")
    assert box.value == "gradcam" and "feature_occlusion (slow)" in box.options   # listed, marked slow
    assert any("validated **Feature occlusion**" in c.value for c in at.caption)
    box.set_value("feature_occlusion").run()
    at.button(key="cam_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert any(t.startswith("Feature occlusion (middle stage)") for t in titles), titles
    assert any("removal" in c.value for c in at.caption)
