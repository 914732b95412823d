"""Known-answer tests of the cohort faithfulness measures (core/explain/cohort.py): hand-made maps whose
mass ratio, energy, pointing-game result and chance level are known exactly, so a broken measure fails;
the cohort summary on hand-made rows; the plumbing end to end with a CAM whose answer is known; and a
cross-check against Quantus's localisation metrics (skipped only when quantus is not installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from core import load_package, save_package
from core.data import CohortItem
from core.explain import cohort as C
from tiny import LABELS, make_model


def square(n=20, y0=0, y1=10, x0=0, x1=10):
    m = np.zeros((n, n), bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------------------ per-map measures

def test_mass_ratio_known_maps():
    region = square()                                     # 100 of 400 pixels: area share 0.25
    assert C.mass_ratio(region.astype(float), region) == pytest.approx(4.0)   # all mass inside: 1 / 0.25
    assert C.mass_ratio(np.ones((20, 20)), region) == pytest.approx(1.0)      # uniform map: chance
    assert C.mass_ratio((~region).astype(float), region) == pytest.approx(0.0)
    half = np.where(region, 3.0, 1.0)                     # inside 300, outside 300: half the mass
    assert C.mass_ratio(half, region) == pytest.approx(2.0)
    small = square(40, 0, 4, 0, 4)                        # area 16 / 1600 = 0.01
    assert C.mass_ratio(small.astype(float), small) == pytest.approx(100.0)
    # no baseline to beat: zero map, empty region, whole-image region
    assert math.isnan(C.mass_ratio(np.zeros((20, 20)), region))
    assert math.isnan(C.mass_ratio(np.ones((20, 20)), np.zeros((20, 20), bool)))
    assert math.isnan(C.mass_ratio(np.ones((20, 20)), np.ones((20, 20), bool)))
    with pytest.raises(ValueError, match="negative"):
        C.mass_ratio(-np.ones((20, 20)), region)


def test_mass_ratio_resizes_a_coarse_map():
    # a 4x4 CAM whose top-left quadrant is hot, against a 40x40 top-left quadrant: bilinear upsampling
    # spreads a little mass over the border, so the ratio is a bit under the exact 4
    cam = np.zeros((4, 4))
    cam[:2, :2] = 1
    r = C.mass_ratio(cam, square(40, 0, 20, 0, 20))
    assert 3.0 < r < 4.0


def test_energy_pointing_game_uses_the_bounding_box():
    # an L-shaped region: its bounding box (rows 0-9, cols 0-9) also holds pixels outside the region
    region = np.zeros((20, 20), bool)
    region[0:10, 0:2] = True
    region[8:10, 0:10] = True
    cam = np.zeros((20, 20))
    cam[4, 6] = 1.0                                       # inside the box, outside the region
    e = C.energy_pointing_game(cam, region)
    assert e == {"energy": pytest.approx(1.0), "chance": pytest.approx(0.25)}
    assert C.mass_ratio(cam, region) == 0.0              # ... which the mass ratio does not reward
    cam[15, 15] = 1.0                                     # half of the energy outside the box
    assert C.energy_pointing_game(cam, region)["energy"] == pytest.approx(0.5)
    assert C.energy_pointing_game(np.ones((20, 20)), region)["energy"] == pytest.approx(0.25)  # uniform = chance
    assert math.isnan(C.energy_pointing_game(np.zeros((20, 20)), region)["energy"])


def test_pointing_game_and_its_chance_level():
    region = square()
    cam = np.zeros((20, 20))
    cam[5, 5] = 1.0
    assert C.pointing_hit(cam, region) is True
    cam[15, 15] = 2.0
    assert C.pointing_hit(cam, region) is False
    assert C.pointing_hit(np.zeros((20, 20)), region) is None
    assert C.random_point_rate(region) == pytest.approx(0.25)
    # the chance level really is a random point's hit rate
    rng = np.random.default_rng(0)
    hits = [C.pointing_hit(np.where(np.arange(400).reshape(20, 20) == rng.integers(400), 1.0, 0.0), region)
            for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(0.25, abs=0.03)


def test_map_measures_one_case():
    lesion, context = square(20, 5, 10, 5, 10), square(20, 0, 15, 0, 15) & ~square(20, 5, 10, 5, 10)
    m = C.map_measures(context.astype(float), lesion, context)       # a map that points at the context
    assert m["lesion_ratio"] == 0 and m["lesion_hit"] is False and m["context_hit"] is True
    assert m["context_ratio"] == pytest.approx(400 / 200)
    assert m["lesion_hit_chance"] == pytest.approx(25 / 400) and m["context_hit_chance"] == pytest.approx(200 / 400)


def test_shapley_decisive_and_chance():
    v = {"image": 0.3, "note": 0.1, "metadata": -0.1}
    assert C.shapley_decisive(v, "image") == {"hit": True, "chance": pytest.approx(1 / 3), "top": "image"}
    assert C.shapley_decisive(v, "note")["hit"] is False
    assert C.shapley_decisive({"image": 0.2}, "note") == {"hit": False, "chance": 0.0, "top": "image"}  # model lacks it
    assert C.shapley_decisive({}, "note")["hit"] is None


def test_word_mass_share_and_top_feature():
    note = "Itchy. Mole present since childhood."
    words = [{"start": 0, "end": 5, "score": 0.5}, {"start": 7, "end": 11, "score": -1.0},
             {"start": 12, "end": 19, "score": 1.0}, {"start": 20, "end": 25, "score": 0.5},
             {"start": 26, "end": 36, "score": 0.0}]
    spans = [(note.index("Mole"), len(note))]
    w = C.word_mass_share(words, spans)
    assert w == {"share": pytest.approx(2.5 / 3.0), "chance": pytest.approx(4 / 5),  # |-1| counts as mass
                 "positive_share": pytest.approx(1.5 / 2.0)}                            # -1 does not
    # known answer: decisive words push the class up, decoys push both ways and cancel; the absolute share
    # counts the cancelling pushes as mass off the decisive words, the positive share does not
    w = C.word_mass_share([{"start": 0, "end": 5, "score": 2.0}, {"start": 7, "end": 11, "score": 1.0},
                           {"start": 12, "end": 19, "score": -1.0}], [(0, 5)])
    assert w["share"] == pytest.approx(0.5) and w["positive_share"] == pytest.approx(2 / 3)
    # every word against the class: nothing for it on the planted words -> 0, not a NaN the mean would drop
    assert C.word_mass_share([{"start": 0, "end": 5, "score": -1.0}], [(0, 5)])["positive_share"] == 0.0
    assert np.isnan(C.word_mass_share([{"start": 0, "end": 5, "score": 0.0}], [(0, 5)])["positive_share"])
    assert C.word_mass_share(words, [])["share"] == 0.0
    rows = [{"name": "age", "integrated_gradients": 0.2}, {"name": "sex", "integrated_gradients": -0.9},
            {"name": "site", "integrated_gradients": 0.5}]
    assert C.top_feature(rows) == "sex"
    assert C.top_feature([{"name": "age", "integrated_gradients": 0.0}]) is None


def test_decisive_spans_find_the_planted_sentences():
    from core.data.cohorts.dermatology import decisive_spans, draw_case

    note = "Pt reports the spot has become darker and changed shape recently. Patient would like it checked."
    spans = decisive_spans(note, "mel")
    assert [note[s:e] for s, e in spans] == ["Pt reports the spot has become darker and changed shape recently."]
    assert decisive_spans(note, "nv") == [] and decisive_spans(None, "mel") == []
    found = 0
    for i in range(40):                                   # every note-decided generated case has its spans
        c = draw_case(3, i, "bcc", 64)
        if c["evidence"] == "note":
            found += 1
            assert decisive_spans(c["note"], "bcc")
    assert found > 0


# ------------------------------------------------------------------------------------------------ cohort summary

def row(evidence, **kw):
    return {"evidence": evidence, "correct": True, "target": "predicted", **kw}


def test_summary_balances_the_decisive_modality_over_kinds():
    # a model that always names the image: right on all image-decided cases, wrong elsewhere.
    # The old "top = evidence on lesion/context cases only" scored it 1.0; balanced it is 1/3.
    rows = ([row("lesion", shapley_hit=True, shapley_chance=1 / 3)] * 4 + [row("context", shapley_hit=True, shapley_chance=1 / 3)] * 2
            + [row("note", shapley_hit=False, shapley_chance=1 / 3)] * 2 + [row("metadata", shapley_hit=False, shapley_chance=1 / 3)] * 3)
    s = C.summarise(rows)
    assert s["shapley_decisive_image"] == 1.0 and s["shapley_decisive_note"] == 0.0
    assert s["shapley_decisive_balanced"] == pytest.approx(1 / 3)
    assert s["shapley_decisive_pooled"] == pytest.approx(6 / 11)
    assert s["shapley_decisive_balanced_chance"] == pytest.approx(1 / 3)
    assert s["n_lesion_decided"] == 4 and s["n_metadata_decided"] == 3


def test_summary_pointing_game_counts_the_decisive_region():
    rows = [row("lesion", decisive_hit=True, decisive_hit_chance=0.1, lesion_ratio=5.0),
            row("lesion", decisive_hit=False, decisive_hit_chance=0.1, lesion_ratio=1.0),
            row("context", decisive_hit=True, decisive_hit_chance=0.3, context_ratio=2.0, lesion_ratio=0.5)]
    s = C.summarise(rows)
    assert s["pointing_game_decisive"] == pytest.approx(2 / 3)        # the context hit counts as a hit
    assert s["pointing_game_decisive_chance"] == pytest.approx(0.5 / 3)
    assert s["pointing_game_lesion_decided"] == 0.5 and s["pointing_game_context_decided"] == 1.0
    assert s["lesion_ratio_lesion_decided"] == 3.0 and s["context_ratio_context_decided"] == 2.0
    assert s["lesion_ratio_context_decided"] == 0.5
    assert math.isnan(s["note_decisive_mass"])


# ------------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return load_package(save_package(make_model("gated"), tmp_path_factory.mktemp("f") / "p", LABELS, name="t"))


def _items(tmp_path, evidences):
    items = []
    lesion = np.zeros((40, 40), np.uint8)
    lesion[15:25, 15:25] = 255                            # area share 100 / 1600
    context = np.zeros((40, 40), np.uint8)
    context[5:35, 5:35] = 255
    context[lesion > 0] = 0                               # 800 pixels: share 0.5
    Image.fromarray(lesion).save(tmp_path / "m.png")
    Image.fromarray(context).save(tmp_path / "c.png")
    for i, ev in enumerate(evidences):
        img = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        items.append(CohortItem(case_id=f"c{i}", label=LABELS[i % 3], split="test", image_path=tmp_path / f"{i}.png",
                                mask_path=tmp_path / "m.png", context_path=tmp_path / "c.png",
                                note="Itchy spot.", metadata={"age": 50.0}, evidence=ev))
    return items


def test_cohort_faithfulness_with_a_known_cam(pkg, tmp_path, monkeypatch):
    import core.explain.gradcam as G

    # a CAM that is exactly the lesion mask: lesion ratio 1600/100 = 16, it hits the lesion, misses the context
    monkeypatch.setattr(G, "image_cam", lambda ctx, method="gradcam", **k: np.pad(np.ones((10, 10)), 15))
    items = _items(tmp_path, ["lesion", "context", "note", "lesion", "metadata", "context"])
    out = C.cohort_faithfulness(pkg, items, parts=("image", "shapley"), keep_rows=True)
    assert out["n"] == 6
    for tag in ("predicted", "true"):
        a = out[tag]["all"]
        assert a["n"] == 6 and a["n_lesion_decided"] == 2 and a["n_context_decided"] == 2
        assert a["lesion_ratio_lesion_decided"] == pytest.approx(16.0)
        assert a["context_ratio_context_decided"] == 0.0
        assert a["pointing_game_lesion_decided"] == 1.0 and a["pointing_game_context_decided"] == 0.0
        assert a["pointing_game_decisive"] == pytest.approx(0.5)
        assert a["pointing_game_decisive_chance"] == pytest.approx((2 * 100 / 1600 + 2 * 0.5) / 4)
        assert a["energy_pg_lesion_decided"] == pytest.approx(1.0)
        assert a["energy_pg_lesion_decided_chance"] == pytest.approx(100 / 1600)
        assert a["shapley_decisive_balanced_chance"] == pytest.approx(1 / 3)
        assert out[tag]["correct"]["n"] + out[tag]["incorrect"]["n"] == 6
    rows = out["rows"]
    n_correct = sum(r["correct"] for r in rows if r["target"] == "predicted")
    assert out["accuracy"] == pytest.approx(n_correct / 6)
    # correct cases: the true class is the predicted one, so both explanations agree
    for r_p, r_t in zip([r for r in rows if r["target"] == "predicted"], [r for r in rows if r["target"] == "true"]):
        if r_p["correct"]:
            assert r_p["shapley_top"] == r_t["shapley_top"]


def test_cohort_faithfulness_draws_the_cam_asked_for(pkg, tmp_path, monkeypatch):
    """method and layer reach the CAM (the known-answer controls compare CAMs on the same cases) and are recorded."""
    import core.explain.gradcam as G

    seen = []
    monkeypatch.setattr(G, "image_cam", lambda ctx, method="gradcam", layer="last stage", **k:
                        seen.append((method, layer)) or np.ones((40, 40)))
    items = _items(tmp_path, ["lesion", "context"])
    out = C.cohort_faithfulness(pkg, items, parts=("image",), targets=("true",), method="layercam", layer="middle stage")
    assert seen and set(seen) == {("layercam", "middle stage")}
    assert (out["method"], out["layer"]) == ("layercam", "middle stage")
    C.cohort_faithfulness(pkg, items, parts=("image",), targets=("true",))
    assert seen[-1] == ("gradcam", "last stage")


def test_cohort_faithfulness_explains_the_true_class_of_wrong_cases(pkg, tmp_path, monkeypatch):
    import core.explain.gradcam as G

    seen = []
    monkeypatch.setattr(G, "image_cam", lambda ctx, method="gradcam", **k: seen.append(ctx.target) or np.ones((40, 40)))
    items = _items(tmp_path, ["lesion"] * 6)
    out = C.cohort_faithfulness(pkg, items, parts=("image",), keep_rows=True)
    preds = [pkg.predict(it.to_case()).label_index for it in items]
    trues = [LABELS.index(it.label) for it in items]
    expected = []
    for p, t in zip(preds, trues):
        expected += [p] if p == t else [p, t]
    assert seen == expected and any(p != t for p, t in zip(preds, trues))
    assert out["predicted"]["incorrect"]["n"] == sum(p != t for p, t in zip(preds, trues))
    # uniform map: every ratio is exactly chance
    assert out["true"]["all"]["lesion_ratio_lesion_decided"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ Quantus cross-check

def test_localisation_measures_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(0)
    n = 6
    s = np.zeros((n, 1, 16, 16))
    a = np.zeros((n, 1, 16, 16))
    for i in range(n):
        y, x = rng.integers(0, 10, 2)
        s[i, 0, y:y + 5, x:x + 4] = 1
        a[i, 0] = rng.random((16, 16)) ** 4               # non-negative, a unique maximum
    a[0, 0][s[0, 0] > 0] += 5                              # one map points into the region
    x_batch = rng.random((n, 3, 16, 16)).astype(np.float32)
    kw = dict(model=None, x_batch=x_batch, y_batch=np.zeros(n, int), a_batch=a, s_batch=s)
    opts = dict(disable_warnings=True, normalise=False, abs=False)
    pg = quantus.PointingGame(**opts)(**kw)
    rma = quantus.RelevanceMassAccuracy(**opts)(**kw)
    al = quantus.AttributionLocalisation(**opts)(**kw)
    for i in range(n):
        region = s[i, 0] > 0
        assert C.pointing_hit(a[i, 0], region) == bool(pg[i])
        share = C.mass_ratio(a[i, 0], region) * C.random_point_rate(region)   # ratio x area = mass share
        assert share == pytest.approx(rma[i], rel=1e-9) and share == pytest.approx(al[i], rel=1e-6)
    assert bool(pg[0])
