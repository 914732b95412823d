"""Explainers on tiny models: shapes, finite values, hooks released, determinism, completeness,
Shapley efficiency, and concurrent explanations equal to sequential ones."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from core import load_package, save_package
from core.explain import CAM_METHODS, ExplainContext, explain_case
from core.explain.gradcam import image_cam
from core.explain.modality import modality_shapley
from tiny import LABELS, make_case, make_model


@pytest.fixture(scope="module", params=["mmtm", "gated"])
def pkg(request, tmp_path_factory):
    return load_package(save_package(make_model(request.param), tmp_path_factory.mktemp("x") / "p", LABELS, name="t"))


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_cam_methods_through_the_fused_model(pkg, method):
    # hooks go on a private copy of the encoder: the shared model never carries any
    ctx = ExplainContext(pkg, make_case(0))  # (transformers adds its own hooks on the first text forward)
    before = hook_count(pkg.model)
    cam = image_cam(ctx, method)
    assert cam.shape == (32, 32) and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert hook_count(pkg.model) == before


def test_hooks_are_released_when_the_forward_fails(pkg, monkeypatch):
    ctx = ExplainContext(pkg, make_case(0))
    before = hook_count(pkg.model)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ctx, "calibrated_logits", boom)
    with pytest.raises(RuntimeError, match="boom"):
        image_cam(ctx, "gradcam")
    assert hook_count(pkg.model) == before


def test_cam_depends_on_the_target_class(pkg):
    cams = [image_cam(ExplainContext(pkg, make_case(2), target=k), "gradcam") for k in range(3)]
    assert any(not np.allclose(cams[0], c) for c in cams[1:])


def test_explain_case_is_complete_and_deterministic(pkg):
    case = make_case(3)
    kw = {"cam_methods": ("gradcam", "eigencam"), "ig_steps": 8, "shapley_samples": 6}
    a = explain_case(pkg, case, **kw)
    b = explain_case(pkg, case, **kw)
    assert a.target == a.prediction.label_index and a.target_label == a.prediction.label
    for x, y in ((a.cams["gradcam"], b.cams["gradcam"]), (a.stability["mean"], b.stability["mean"])):
        assert np.allclose(x, y, atol=1e-6)
    assert [w["score"] for w in a.note["words"]] == pytest.approx([w["score"] for w in b.note["words"]], abs=1e-6)
    assert a.table["features"] == b.table["features"]
    # lesion / context / background shares partition the CAM mass
    for s in a.lesion_context["shares"].values():
        if s["cam_mass"] > 0:
            assert s["lesion"] + s["context"] + s["background"] == pytest.approx(1.0, abs=1e-6)
        else:  # an all-zero CAM explains nothing: NaN shares, not a fake even spread
            assert np.isnan(s["lesion"]) and s["pointing_game"]["hit_lesion"] is None
    assert set(a.lesion_context["confidence"]) == {"full", "lesion_only", "context_only", "neither"}
    assert a.stability["std"].shape == (32, 32)
    d = a.to_dict()
    assert d["prediction"]["label"] == a.prediction.label and "gradcam" in d["cams"]
    assert d["timings"]["total"] > 0


def test_attribution_completeness(pkg):
    ex = explain_case(pkg, make_case(1), parts=("note", "table", "spectrum"), ig_steps=48, shapley_samples=6)
    # integrated gradients: attributions add up to f(x) - f(baseline); Captum's delta measures the gap
    assert ex.note["convergence_delta"] < 1e-3 and ex.table["convergence_delta"] < 1e-3
    assert ex.spectrum["convergence_delta"] < 5e-3
    note = make_case(1).note
    for w in ex.note["words"]:
        assert w["text"] == note[w["start"]:w["end"]] and w["text"].strip()
    assert [f["name"] for f in ex.table["features"]] == ["age", "sex", "site"]
    assert ex.table["features"][0]["unit"] == "years"
    assert len(ex.spectrum["attributions"]) == len(ex.spectrum["wavelengths"]) == 64


def test_shapley_values_are_efficient_and_without_x_matches(pkg):
    ctx = ExplainContext(pkg, make_case(0, missing=("spectrum",)))
    sh = modality_shapley(ctx)
    assert set(sh["values"]) == {"image", "note", "metadata"}  # absent modalities are not players
    assert sum(sh["values"].values()) == pytest.approx(sh["full"] - sh["none"], abs=1e-6)
    # v(all) equals the calibrated probability of the prediction itself
    pred = pkg.predict(make_case(0, missing=("spectrum",)))
    assert sh["full"] == pytest.approx(float(pred.calibrated[ctx.target]), abs=1e-5)
    # "without note" equals predicting the case with its note removed
    no_note = pkg.predict(make_case(0, missing=("spectrum", "note")))
    assert sh["without"]["note"] == pytest.approx(float(no_note.calibrated[ctx.target]), abs=1e-5)


def test_missing_parts_are_reported_not_crashed(pkg):
    ex = explain_case(pkg, make_case(0, missing=("image", "note")), ig_steps=8, shapley_samples=6)
    assert ex.cams == {} and ex.note is None
    assert ex.skipped["cam"] == "the case has no image" and ex.skipped["note"] == "the case has no note"
    with pytest.raises(ValueError, match="unknown explanation part"):
        explain_case(pkg, make_case(0), parts=("telepathy",))


def test_concurrent_explanations_equal_sequential(pkg):
    cases = [make_case(i) for i in range(4)]
    parts = ("cam", "note", "table", "modality")
    kw = {"parts": parts, "ig_steps": 8, "shapley_samples": 6}
    sequential = [explain_case(pkg, c, **kw) for c in cases]
    results: list = [None] * len(cases)
    errors: list = []

    def work(i):
        try:
            results[i] = explain_case(pkg, cases[i], **kw)
        except Exception as e:  # noqa: BLE001  # pragma: no cover - any failure in a thread is reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s, r in zip(sequential, results):
        assert np.allclose(s.cams["gradcam"], r.cams["gradcam"], atol=1e-5)
        assert [w["score"] for w in s.note["words"]] == pytest.approx([w["score"] for w in r.note["words"]], abs=1e-5)
        assert s.modality["values"] == pytest.approx(r.modality["values"], abs=1e-6)


def test_faithfulness_metrics(pkg):
    ex = explain_case(pkg, make_case(2), ig_steps=8, shapley_samples=6,
                      parts=("cam", "note", "table", "spectrum", "faithfulness"))
    f = ex.faithfulness
    assert {"cam:gradcam", "cam_randomisation", "note", "table", "spectrum"} <= set(f)
    pred_p = float(ex.prediction.calibrated[ex.target])
    for key in ("cam:gradcam", "note", "table", "spectrum"):
        c = f[key]
        assert len(c["deletion"]) == len(c["insertion"]) == 11
        assert c["deletion"][0] == pytest.approx(pred_p, abs=1e-4)  # nothing deleted: the prediction itself
        assert c["insertion"][-1] == pytest.approx(pred_p, abs=1e-4)  # everything inserted: the case again
        assert 0 <= c["deletion_auc"] <= 1 and 0 <= c["insertion_auc"] <= 1
    assert f["table"]["infidelity"] >= 0 and f["spectrum"]["max_sensitivity"] >= 0
    assert -1 <= f["cam_randomisation"]["spearman"] <= 1


def test_randomisation_check_separates_a_model_explanation_from_an_input_only_one(pkg):
    from core.explain.metrics import randomisation_check
    from core.explain.attributions import table_attributions

    ctx = ExplainContext(pkg, make_case(1))
    # an "explanation" that ignores the model (the input itself) survives randomisation: the check must fail it
    static = randomisation_check(ctx, lambda c: c.inputs["metadata"]["values"].numpy())
    assert static["spearman"] == pytest.approx(1.0) and not static["passed"]
    real = randomisation_check(ctx, lambda c: np.array([f["integrated_gradients"] for f in table_attributions(c, 8, 4)["features"]]))
    assert real["spearman"] < 1.0


def test_cohort_faithfulness_summary(pkg, tmp_path):
    from PIL import Image

    from core.data import CohortItem
    from core.explain.cohort import cohort_faithfulness

    items = []
    for i, evidence in enumerate(["lesion", "context", "note", "lesion"]):
        img = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        mask = np.zeros((40, 40), dtype=np.uint8)
        mask[12:28, 12:28] = 255
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / f"{i}_m.png")
        items.append(CohortItem(case_id=f"c{i}", label=LABELS[i % 3], split="test", image_path=tmp_path / f"{i}.png",
                                mask_path=tmp_path / f"{i}_m.png", note="itchy spot", metadata={"age": 50.0},
                                evidence=evidence))
    out = cohort_faithfulness(pkg, items)
    # (known-answer checks of every measure: tests/test_faithfulness_metrics.py)
    a = out["predicted"]["all"]
    assert out["n"] == 4 and a["n_lesion_decided"] == 2 and a["n_context_decided"] == 1 and a["n_note_decided"] == 1
    assert a["shapley_decisive_kinds"] == ["image", "note"] and a["shapley_decisive_balanced_chance"] == pytest.approx(1 / 3)
    assert out["predicted"]["correct"]["n"] + out["predicted"]["incorrect"]["n"] == 4


def test_parts_registry_gives_the_default_lists_and_the_run_order():
    from core.explain import DEFAULT_PARTS, EXPLAIN_PARTS, PARTS, default_parts
    from core.explain.parts import run_order

    assert PARTS == tuple(EXPLAIN_PARTS.names()) and DEFAULT_PARTS == default_parts("explain")
    assert default_parts("report") == (*DEFAULT_PARTS, "faithfulness")
    assert default_parts("compare") == tuple(p for p in DEFAULT_PARTS if p != "stability")
    assert run_order(["faithfulness", "lesion_context", "note", "cam"]) == ["note", "cam", "lesion_context", "faithfulness"]
    assert EXPLAIN_PARTS.get("table").needs == ("metadata",) and EXPLAIN_PARTS.get("modality").needs == ()
    with pytest.raises(ValueError):
        default_parts("poster")
