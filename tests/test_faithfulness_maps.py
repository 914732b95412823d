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
    # the registry the page lists: the CAMs, then the maps a plain encoder can draw; a package without a suite's
    # validated map keeps Grad-CAM as its default
    assert G.heatmap_methods(pkg) == [*G.CAM_METHODS, *G.MAP_METHODS]
    assert "feature_occlusion" in G.MAP_METHODS and "median_ig" in G.MAP_METHODS
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
    assert G.validated_map(derm) == "median_ig" and G.validated_map(ham) is None
    # the dermatology suite's default is its validated map (median_ig met its rule, session 10); HAM10000's measured
    # default is not changed by it
    assert G.default_cam(ham) == ("gradcam++", "last × early stage") and G.default_cam(derm) == ("median_ig", "last stage")


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
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--models", str(models), "--store-json", str(look),
                                      "--seed", "777"])
    _script().main()
    m = json.loads((models / "mmtm" / "metrics.json").read_text())
    assert m["faithfulness_maps"]["feature_occlusion"]["generator_seed"] == 777
    assert m["faithfulness"] == {"method": "gradcam", "sentinel": "mmtm"}
    assert "seed 777, 12345" in (models / "faithfulness_feature_occlusion.md").read_text()


def _fake_models(root: Path, names=("gated", "mmtm")) -> Path:
    models = root / "dermatology"
    for name in names:
        (models / name).mkdir(parents=True)
        (models / name / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "name": name}))
    return models


def _look(path: Path, seed, names=("gated",)) -> str:
    path.write_text(json.dumps({n: {"method": "feature_occlusion", "generator_seed": seed, "predicted": {}}
                                for n in names}))
    return str(path)


@pytest.mark.parametrize("files,seed,needle", [
    ([], None, "--store-json needs at least one results file"),           # not a silent fall-through to measuring
    (["empty"], "9931", "no results in"),
    (["9931"], None, "measured on generator seed 9931, not --seed 9201"),  # --seed defaults to 9201
    (["9931"], "9930", "not --seed 9930"),
    (["9932"], "9932", "seed 9932 is a choice seed"),
    (["9931", "777"], "9931", "measured on generator seed 777"),          # one bad file: the good one is not stored either
    (["nopkg"], "9931", "nopkg has no metrics.json"),
])
def test_store_json_refuses_and_writes_nothing(tmp_path, monkeypatch, files, seed, needle):
    """--store-json: exits with one sentence (a non-zero exit: SystemExit with a message) and writes nothing when no
    results are given, when a result was measured on another seed than --seed, when --seed is the choice seed 9932,
    or when a result names no package; an empty --store-json never falls through to measuring."""
    import core.data.cohorts.dermatology as D

    models = _fake_models(tmp_path)
    before = {n: (models / n / "metrics.json").read_text() for n in ("gated", "mmtm")}
    paths = []
    for f in files:
        p = tmp_path / f"{f}.json"
        if f == "empty":
            p.write_text("{}")
        elif f == "nopkg":
            p.write_text(json.dumps({"nopkg": {"method": "feature_occlusion", "generator_seed": 9931}}))
        else:
            _look(p, int(f), ("mmtm",) if f == "777" else ("gated",))
        paths.append(str(p))

    def measured(**k):
        raise AssertionError("--store-json measured a cohort")

    monkeypatch.setattr(D, "generate_dermatology", measured)
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--models", str(models), "--store-json", *paths,
                                      *(["--seed", seed] if seed else [])])
    with pytest.raises(SystemExit) as e:
        _script().main()
    msg = e.value.code
    assert isinstance(msg, str) and needle in msg, msg                     # a message: Python exits with status 1
    assert msg.endswith(".") and msg.count(". ") == 0 and "\n" not in msg  # one sentence
    assert {n: (models / n / "metrics.json").read_text() for n in ("gated", "mmtm")} == before
    assert not list(models.glob("*.md"))


def test_store_json_stores_results_of_the_seed_asked_for(tmp_path, monkeypatch):
    models = _fake_models(tmp_path)
    look = _look(tmp_path / "a.json", 9931, ("gated", "mmtm"))
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--models", str(models), "--store-json", look,
                                      "--seed", "9931"])
    _script().main()
    for n in ("gated", "mmtm"):
        m = json.loads((models / n / "metrics.json").read_text())
        assert m["faithfulness_maps"]["feature_occlusion"]["generator_seed"] == 9931 and m["name"] == n
    assert (models / "faithfulness_feature_occlusion.md").is_file()


def test_a_choice_seed_is_never_measured_into_the_packages(tmp_path, monkeypatch):
    """Measuring on the choice seed without --json (which would store into the packages) is refused before
    anything runs; 9932 is one of the script's CHOICE_SEEDS."""
    import core.data.cohorts.dermatology as D

    mod = _script()
    assert 9932 in mod.CHOICE_SEEDS
    models = _fake_models(tmp_path)
    monkeypatch.setattr(D, "generate_dermatology", lambda **k: (_ for _ in ()).throw(AssertionError("measured")))
    monkeypatch.setattr(sys, "argv", ["faithfulness_table.py", "--models", str(models), "--seed", "9932", "--method",
                                      "feature_occlusion"])
    with pytest.raises(SystemExit, match="seed 9932 is a choice seed"):
        mod.main()


def test_feature_occlusion_channels_last_batches_equal_the_plain_layout(suite):
    """occlusion_drops runs its batches channels-last: the target logits equal those of the plain layout within
    float rounding (the tiny package: largest difference printed; the bound is what image_maps.py states)."""
    import torch

    pkg = load_package(suite / "mmtm")
    ctx = ExplainContext(pkg, make_case(1))
    f, a = IM.middle_stage_function(ctx)
    torch.manual_seed(0)
    batch = a.repeat(8, 1, 1, 1) + 0.5 * torch.randn(8, *a.shape[1:])
    with torch.no_grad():
        plain, last = f(batch.contiguous()), f(batch.contiguous(memory_format=torch.channels_last))
    diff = float((plain - last).abs().max())
    print("channels-last largest logit difference", diff)
    assert diff <= 1e-5 and float(plain.abs().max()) > 0


def test_the_page_offers_the_validated_map_and_says_so(suite, monkeypatch):
    from test_dual_expert import masked_case
    from tiny import open_image_page

    monkeypatch.setitem(G.VALIDATED_MAPS, ("dermatology", "tiny"), "feature_occlusion")
    at = open_image_page(suite.parent, masked_case(2), monkeypatch)
    box = at.selectbox(key="cam_method")
    assert box.value == "gradcam" and "feature_occlusion (slow)" in box.options   # listed, marked slow
    assert any("validated **Feature occlusion**" in c.value for c in at.caption)
    assert any("(peak in the lesion 33% vs 100% of 70 cases" in c.value and "is slow here" in c.value for c in at.caption)
    box.set_value("feature_occlusion").run()
    at.button(key="cam_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert any(t.startswith("Feature occlusion (middle stage)") for t in titles), titles
    assert any("removal" in c.value for c in at.caption)
