"""IG from the median features (core.explain.image_maps.median_ig, session 10): integrated gradients on the middle
stage from the image's own per-channel median features. Completeness, a known-answer function where only some cells
matter, the map's shape and range, and that it is registered and selectable wherever feature occlusion is. Tiny
models (tests/tiny.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import core.explain.controls as K
import core.explain.gradcam as G
import core.explain.image_ig as II
import core.explain.image_maps as IM
from core import load_package, save_package
from core.explain import cohort as C
from core.explain.context import ExplainContext
from tiny import LABELS, make_case, make_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return load_package(save_package(make_model("mmtm", modalities=("image", "note", "metadata")),
                                     tmp_path_factory.mktemp("mig") / "p", LABELS, name="t"))


def _ctx(pkg, i=1, target=1):
    return ExplainContext(pkg, make_case(i), target=target)


def test_median_features_is_the_per_channel_median_over_cells():
    a = torch.arange(2 * 3 * 3, dtype=torch.float).view(1, 2, 3, 3)
    a[0, 1, 0, 0] = 100.0                                   # an outlier cell does not move the median
    m = IM.median_features(a)
    assert m.shape == a.shape
    assert torch.all(m[0, 0] == 4.0) and torch.all(m[0, 1] == 14.0)   # 10..17 and 100


def test_known_answer_function_only_the_cells_it_reads_get_attribution():
    """f reads two cells (one linearly, one quadratically) and ignores the rest: IG from the median baseline gives
    exactly w * (a - median) and a^2 - median^2 there, zero in every other cell, and adds up to f(a) - f(median)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 2, 6, 6, generator=g)
    a[0, 0, 2, 3], a[0, 1, 4, 4] = 3.0, 2.0
    base = IM.median_features(a)
    f = lambda act: 5 * act[:, 0, 2, 3] + act[:, 1, 4, 4] ** 2  # noqa: E731
    cells, delta, gap = IM.median_ig_cells(f, a, n_steps=8)
    want = torch.zeros(6, 6)
    want[2, 3] = 5 * (3.0 - base[0, 0, 0, 0])
    want[4, 4] = 2.0 ** 2 - base[0, 1, 0, 0] ** 2            # Gauss-Legendre is exact for this polynomial path
    assert torch.allclose(cells, want, atol=1e-5)
    assert gap == pytest.approx(float(f(a) - f(base)), abs=1e-5) and abs(delta) < 1e-5
    assert float(cells.sum()) == pytest.approx(gap, abs=1e-5)


def test_completeness_on_a_tiny_package(pkg):
    """On a real (tiny) model the cells' signed attributions sum to f(case) - f(all-median) up to the convergence
    delta, which shrinks with more steps; f(case) is the prediction's own target logit."""
    ctx = _ctx(pkg)
    f, a = IM.middle_stage_function(ctx)
    assert float(f(a)[0]) == pytest.approx(float(ctx.target_logit()), abs=1e-4)
    want = float(f(a)[0] - f(IM.median_features(a))[0])
    assert abs(want) > 1e-3                                   # a non-trivial output difference to attribute
    for steps, tol in ((8, 0.10), (32, 0.01)):   # this case: 6.7% at 8 steps, 0.3% at 32 (ReLU6 kinks)
        out = IM.median_ig(ctx, n_steps=steps)
        assert out["output_difference"] == pytest.approx(want, abs=1e-4)
        assert float(out["cells"].sum()) == pytest.approx(want, abs=tol * abs(want))
        assert out["relative_delta"] <= tol
        assert out["baseline"] == "median features" and out["n_steps"] == steps

def test_map_finds_the_cell_the_model_reads_and_has_the_maps_shape_and_range(pkg, monkeypatch):
    """With the rest of the network replaced by a function of one middle-stage cell, the map's maximum and mass lie
    in that cell's pixels; a function that only lowers the logit gives an all-zero map (its positive part)."""
    ctx = _ctx(pkg)
    f0, _, a, a0, x = II._ig_functions(ctx)
    h, w = a.shape[-2:]
    i, j = h // 2, w // 3
    s = x.shape[-1]
    cell = np.zeros((s, s), bool)
    cell[i * s // h:(i + 1) * s // h, j * s // w:(j + 1) * s // w] = True
    base = IM.median_features(a)
    k = int((a[0, :, i, j] - base[0, :, 0, 0]).abs().argmax())
    sign = float(torch.sign(a[0, k, i, j] - base[0, k, 0, 0]))
    for direction, hits in ((sign, True), (-sign, False)):
        f = (lambda d: (lambda act: d * act[:, k, i, j]))(direction)
        monkeypatch.setattr(II, "_ig_functions", lambda c, f=f: (f, None, a, a0, x))
        monkeypatch.setattr(ctx, "target_logit", lambda f=f: f(a)[0].detach())
        m = IM.median_ig_map(ctx)
        assert m.shape == (s, s) and m.dtype == np.float32 and m.min() >= 0
        if hits:
            assert m.max() == pytest.approx(1.0)
            assert C.pointing_hit(m, cell) and C.mass_ratio(m, cell) > 0.5 / float(cell.mean())
        else:
            assert m.max() == 0.0
    monkeypatch.undo()
    real = IM.image_map(_ctx(pkg), "median_ig")
    assert real.shape == (s, s) and real.min() >= 0 and real.max() == pytest.approx(1.0)


def test_registered_and_selectable_wherever_feature_occlusion_is(pkg):
    from core.cli.case import heatmap_arguments

    assert IM.PIXEL_MAPS["median_ig"] == {"n_steps": 8}
    assert "median_ig" in G.MAP_METHODS and G.MAP_METHODS["median_ig"][0] == "middle stage"
    assert G.describe_cam("median_ig", "last stage") == "IG from the median features (middle stage)"
    assert "median_ig" in G.heatmap_methods(pkg) and "median_ig" in G.heatmap_methods()
    ctx = _ctx(pkg)
    np.testing.assert_allclose(G.image_cam(ctx, "median_ig", "last stage"), IM.image_map(ctx, "median_ig"), atol=1e-6)
    assert not np.allclose(G.image_cam(ctx, "median_ig"), G.image_cam(ctx, "gradcam", "last stage"), atol=1e-3)
    with pytest.raises(ValueError, match="test-time augmentation"):
        G.image_cam(ctx, "median_ig", tta=True)
    # the CLI's --cam
    assert heatmap_arguments(["median_ig"], ("cam", "stability"), False, False) == (["median_ig"], ("cam",))
    # the controls' alternatives for the image controls
    for source in ("lesion", "context"):
        kw = dict(K.ALTERNATIVES[source])["median IG"]
        assert kw == {"parts": ("image",), "method": "median_ig"}
    # faithfulness_table --method median_ig
    spec = importlib.util.spec_from_file_location("faithfulness_table", ROOT / "scripts" / "faithfulness_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.map_unavailable(pkg, "median_ig") is None


def test_dual_experts_cannot_draw_it():
    from test_dual_expert import dual_model

    dual = SimpleNamespace(model=dual_model(), cfg=SimpleNamespace(cohort="dermatology"))
    assert "median_ig" not in G.heatmap_methods(dual)
    spec = importlib.util.spec_from_file_location("faithfulness_table", ROOT / "scripts" / "faithfulness_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.map_unavailable(dual, "median_ig").startswith("dual-expert")


def test_evaluate_control_measures_median_ig_when_asked(monkeypatch):
    seen = []
    summary = {"lesion_ratio_lesion_decided": 4.0, "pointing_game_lesion_decided": 0.95,
               "pointing_game_lesion_decided_chance": 0.1}

    def fake(pkg, items, **kw):
        seen.append(kw.get("method"))
        return {"accuracy": 1.0, "n": 1, "true": {"all": summary}}
    monkeypatch.setattr(K, "cohort_faithfulness", fake)
    out = K.evaluate_control(SimpleNamespace(temperature=0.5, sha256="x"), "lesion", [], alternatives=["median IG"])
    assert seen == ["gradcam", "median_ig"] and [a["explainer"] for a in out["alternatives"]] == ["median IG"]
    assert [c["measure"] for c in out["alternatives"][0]["checks"]] == [
        "lesion mass ratio [median IG]", "pointing game in the lesion [median IG]"]


def test_dermatology_default_is_median_ig_elsewhere_unchanged():
    """The rule in assets/models/dermatology/median_ig_choice.md was met (session 10): the dermatology suite's plain
    EfficientNet-Lite0 packages default to IG from the median features; HAM10000, other suites and dual experts keep
    their defaults."""
    from core.encoders.image import ImageEncoder
    from test_dual_expert import dual_model

    enc = ImageEncoder("efficientnet_lite0", pretrained=False, image_size=224)
    derm = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="dermatology"))
    ham = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="ham10000"))
    other = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="custom"))
    dual = SimpleNamespace(model=dual_model(), cfg=SimpleNamespace(cohort="dermatology"))
    assert G.default_cam(derm) == ("median_ig", "last stage") and G.validated_map(derm) == "median_ig"
    assert G.resolve_cam(derm, ("auto",), "auto") == (("median_ig",), "last stage")
    assert G.default_cam(ham) == ("gradcam++", "last × early stage")
    assert G.default_cam(other) == G.default_cam(dual) == G.DEFAULT_CAM == ("gradcam", "last stage")
    assert G.method_cost("median_ig") == "fast"          # measured 0.13 s per case: no click needed on the page
    # the stability part reads a CAM: the first one asked for, else last-stage Grad-CAM's
    assert G.stability_cam(("median_ig",)) == "gradcam"
    assert G.stability_cam(("median_ig", "gradcam++")) == "gradcam++" and G.stability_cam(()) == "gradcam"


def test_a_suite_defaulting_to_median_ig_explains_every_default_part(tmp_path, monkeypatch):
    """With the map as the suite's default, the default explanation (what the dashboard's background job and the CLI
    compute) draws it and still gets a stability part (Grad-CAM's): before stability_cam, cam_stability raised on it."""
    from core.explain.engine import explain_case
    from tiny import save_suite

    save_suite(tmp_path, ("mmtm",))
    p = load_package(tmp_path / "dermatology" / "mmtm")
    monkeypatch.setitem(G.SUITE_DEFAULTS, ("dermatology", "tiny"), ("median_ig", "last stage"))
    assert G.default_cam(p) == ("median_ig", "last stage")
    ex = explain_case(p, make_case(1), parts=("cam", "stability"), stability_samples=2)
    assert list(ex.cams) == ["median_ig"]
    np.testing.assert_allclose(ex.cams["median_ig"], IM.image_map(ExplainContext(p, make_case(1), target=ex.target),
                                                                     "median_ig"), atol=1e-5)
    assert ex.stability and ex.stability["samples"] == 2


def test_the_page_opens_on_the_default_map_and_says_it_was_validated(tmp_path, monkeypatch):
    """Image explanations page, a suite whose default is IG from the median features: the method box starts on it
    (not marked slow, no click needed), the overlay is drawn with it, the caption says it is the validated default and
    what red means, and the MC-dropout section points to a CAM instead of failing."""
    import json

    from test_dual_expert import masked_case
    from tiny import open_image_page, save_suite

    save_suite(tmp_path, ("mmtm",))
    monkeypatch.setitem(G.SUITE_DEFAULTS, ("dermatology", "tiny"), ("median_ig", "last stage"))
    monkeypatch.setitem(G.VALIDATED_MAPS, ("dermatology", "tiny"), "median_ig")
    at = open_image_page(tmp_path, masked_case(2), monkeypatch)
    box = at.selectbox(key="cam_method")
    assert box.value == "median_ig" and "median_ig" in box.options and "median_ig (slow)" not in box.options
    assert any("default heatmap here is **IG from the median features**" in c.value for c in at.caption)
    assert any("peak lies in the lesion for 99% of 70 fresh cases (last-stage Grad-CAM 51%" in c.value for c in at.caption)
    assert any("integrated gradients from the image's median features" in c.value for c in at.caption)
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert any(t.startswith("IG from the median features (middle stage)") for t in titles), titles
    assert any("reads the model without MC dropout" in c.value for c in at.caption)
