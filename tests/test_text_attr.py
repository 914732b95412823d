"""Word-removal note attributions and pixel image maps (#15 §2), on known-answer functions and a tiny package."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import load_package, save_package
from core.explain import cohort as C
from core.explain import image_maps as IM
from core.explain import text_attr as TA
from core.explain.context import ExplainContext
from tiny import LABELS, make_case, make_model


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return load_package(save_package(make_model("concat", modalities=("image", "note", "metadata")),
                                     tmp_path_factory.mktemp("ta") / "p", LABELS, name="t"))


def _ctx(pkg, i=0):
    return ExplainContext(pkg, make_case(i), target=1)


def _additive_note(ctx, weights):
    """Replace the model by an additive game over the note's tokens: target logit = sum of w_t over the tokens
    present in the attention mask. Each word's exact Shapley value (and leave-one-out drop) is the sum of its
    pieces' weights."""
    w = torch.tensor(weights, dtype=torch.float)

    def logits(vary, inputs, *a, **k):
        m = inputs["attention_mask"].float()
        out = torch.zeros(m.shape[0], len(LABELS))
        out[:, ctx.target] = (m * w).sum(1)
        return out
    ctx.calibrated_logits = logits


def test_word_removal_methods_recover_an_additive_game(pkg):
    ctx = _ctx(pkg, 0)     # "Itchy lesion on the back, growing for three months."
    enc = ctx.model.encoders["note"]
    ids, group, words = TA.note_words(enc, ctx.case.note)
    assert [w["text"] for w in words][:3] == ["Itchy", "lesion", "on"] and words[-1]["text"] == "."
    assert (group[0], group[-1]) == (-1, -1)     # [CLS] / [SEP] are no word: always present
    rng = np.random.default_rng(0)
    weights = rng.normal(size=ids.shape[1])
    _additive_note(ctx, weights)
    exact = np.array([sum(weights[t] for t in range(len(group)) if group[t] == k) for k in range(len(words))])
    occ = TA.note_word_occlusion(ctx)
    assert occ["n_forward"] == len(words) + 1
    np.testing.assert_allclose([w["score"] for w in occ["words"]], exact, atol=1e-5)
    for n in (2, 5):
        sh = TA.note_word_shapley(ctx, n_samples=n, seed=3)
        assert sh["n_samples"] == n + n % 2                 # antithetic pairs
        np.testing.assert_allclose([w["score"] for w in sh["words"]], exact, atol=1e-5)
        assert sh["total"] == pytest.approx(float(exact.sum()), abs=1e-5)


def test_word_shapley_on_the_real_model_adds_up_and_starts_from_the_case(pkg):
    ctx = _ctx(pkg, 2)
    enc = ctx.model.encoders["note"]
    ids, group, words = TA.note_words(enc, ctx.case.note)
    f = TA.presence_fn(ctx, ids, group)
    full = f(torch.ones(1, len(words), dtype=torch.bool))
    assert float(full[0]) == pytest.approx(float(ctx.target_logit()), abs=1e-5)   # all words present = the case
    sh = TA.note_word_shapley(ctx, n_samples=4)
    empty = float(f(torch.zeros(1, len(words), dtype=torch.bool))[0])
    assert sum(w["score"] for w in sh["words"]) == pytest.approx(float(full[0]) - empty, abs=1e-4)
    assert sh["total"] == pytest.approx(float(full[0]) - empty, abs=1e-4)
    # another seed draws other permutations: the estimates differ, their sum does not
    other = TA.note_word_shapley(ctx, n_samples=4, seed=1)
    assert [w["score"] for w in other["words"]] != [w["score"] for w in sh["words"]]


def test_ig_token_baseline_is_complete_and_differs_from_pad(pkg):
    ctx = _ctx(pkg, 0)
    unk = TA.note_ig_token_baseline(ctx, "unk", n_steps=32)
    pad = TA.note_ig_token_baseline(ctx, "pad", n_steps=32)
    assert unk["relative_delta"] < 0.05 and pad["relative_delta"] < 0.05
    assert [w["text"] for w in unk["words"]] == [w["text"] for w in pad["words"]]
    assert not np.allclose([w["score"] for w in unk["words"]], [w["score"] for w in pad["words"]])
    # each variant is the product's note IG from the same baseline (its setting; the default is [UNK])
    from core.explain.attributions import note_attributions

    for variant, name in ((pad, "pad"), (unk, "unk")):
        prod = note_attributions(ctx, n_steps=32, internal_batch_size=32, baseline=name)["words"]
        np.testing.assert_allclose([w["score"] for w in variant["words"]], [w["score"] for w in prod], atol=1e-5)
    with pytest.raises(ValueError, match="unknown note method"):
        TA.note_words_attribution(ctx, "nope")


def test_pixel_ig_map_finds_the_only_pixels_the_function_reads(pkg):
    """A target function that reads one 8 x 8 square of pixels: the map's mass and maximum lie there."""
    ctx = _ctx(pkg, 1)
    x = ctx.inputs["image"]["pixels"]
    s = x.shape[-1]
    sq = torch.zeros(s, s, dtype=torch.bool)
    sq[4:12, 18:26] = True
    f = lambda p: (p[:, :, sq] ** 2).sum((1, 2))  # noqa: E731
    ctx.target_fn = lambda vary, key, **k: f
    ctx.target_logit = lambda: f(x)[0]
    for kind in ("black", "skin", "blur"):
        raw, rel = IM.pixel_ig(ctx, kind, n_steps=16)
        assert raw.shape == (s, s) and rel < 0.05
        assert raw[~sq.numpy()].max() == 0 and raw[sq.numpy()].sum() > 0
    m = IM.pixel_ig_map(ctx, "black", n_steps=16, smooth=1.0)
    assert m.max() == pytest.approx(1.0) and m.min() >= 0
    assert C.mass_ratio(m, sq.numpy()) > 3 and C.pointing_hit(m, sq.numpy())
    with pytest.raises(ValueError, match="unknown pixel map"):
        IM.image_map(ctx, "nope")


def test_cohort_routes_pixel_maps_and_note_methods(pkg, monkeypatch, tmp_path):
    from test_faithfulness_metrics import _items

    seen = []
    monkeypatch.setattr(IM, "image_map", lambda ctx, method: seen.append(method) or np.pad(np.ones((10, 10)), 15))
    items = _items(tmp_path, ["lesion", "context"])
    out = C.cohort_faithfulness(pkg, items, parts=("image",), targets=("true",), method="pixel_ig")
    assert seen == ["pixel_ig", "pixel_ig"] and out["method"] == "pixel_ig"
    assert out["true"]["all"]["lesion_ratio_lesion_decided"] == pytest.approx(16.0)
    import core.data.cohorts.dermatology as D

    monkeypatch.setattr(D, "decisive_spans", lambda note, label: [(0, 5)])   # "Itchy" is the planted word
    words = [{"start": 0, "end": 5, "score": 3.0}, {"start": 6, "end": 11, "score": -1.0}]
    monkeypatch.setitem(TA.NOTE_METHODS, "word_occlusion", lambda ctx, steps: seen.append("occ") or words)
    out = C.cohort_faithfulness(pkg, _items(tmp_path, ["note"]), parts=("note",), targets=("true",), note_method="word_occlusion")
    assert seen[-1] == "occ" and out["note_method"] == "word_occlusion"
    assert out["true"]["all"]["note_decisive_mass"] == pytest.approx(0.75)
    assert out["true"]["all"]["note_decisive_mass_chance"] == pytest.approx(0.5)


def test_segment_occlusion_map_finds_the_painted_square_the_function_reads(pkg):
    """Skin-coloured image with a dark square; the target function reads only the square's darkness. Segments
    follow the square; painting them over with the skin colour drops the logit, painting anything else does not."""
    ctx = _ctx(pkg, 1)
    enc = ctx.pixel_encoder
    s = ctx.inputs["image"]["pixels"].shape[-1]
    rgb = torch.tensor([0.8, 0.6, 0.5]).view(1, 3, 1, 1).expand(1, 3, s, s).clone()
    sq = torch.zeros(s, s, dtype=torch.bool)
    sq[8:16, 10:20] = True
    rgb[:, :, sq] = torch.tensor([0.2, 0.1, 0.1]).view(1, 3, 1)
    x = (rgb - enc._mean.cpu()) / enc._std.cpu()
    ctx.inputs = {**ctx.inputs, "image": {**ctx.inputs["image"], "pixels": x}}
    f = lambda p: -p[:, :, sq].mean((1, 2))  # noqa: E731  (darker square -> larger logit)
    ctx.target_fn = lambda vary, key, **k: f
    seg = IM.segments(rgb[0].permute(1, 2, 0).numpy(), n=16)
    inside = {int(k) for k in np.unique(seg[sq.numpy()])}
    assert all(not (seg == k)[~sq.numpy()].any() for k in inside)      # the square's segments stay inside it
    m = IM.segment_occlusion_map(ctx, n_segments=16)
    assert m.max() == pytest.approx(1.0) and m[~sq.numpy()].max() == 0
    assert C.pointing_hit(m, sq.numpy()) and C.mass_ratio(m, sq.numpy()) == pytest.approx(1 / float(sq.float().mean()))


def test_occlusion_drops_on_a_known_layer_function():
    """f reads two cells of a [1, 2, 6, 6] feature map: occluding a cell costs exactly its share of f; every
    other cell costs nothing; raising f (a cell below the fill) counts as 0; a 2 x 2 window averages."""
    a = torch.zeros(1, 2, 6, 6)
    a[0, 0, 2, 3], a[0, 1, 4, 4], a[0, 0, 0, 0] = 3.0, 2.0, -1.0
    f = lambda act: 5 * act[:, 0, 2, 3] + act[:, 1, 4, 4] + act[:, 0, 0, 0]  # noqa: E731
    m = IM.occlusion_drops(f, a, torch.zeros(1, 2, 1, 1), window=1, chunk=7)
    want = torch.zeros(6, 6)
    want[2, 3], want[4, 4] = 15.0, 2.0          # cell (0, 0) raises f when occluded: clipped to 0
    assert torch.allclose(m, want)
    m2 = IM.occlusion_drops(f, a, torch.zeros(1, 2, 1, 1), window=2)
    assert m2[2, 3] == pytest.approx(15.0) and m2[0, 5] == 0 and m2.argmax() == 2 * 6 + 3
    assert m2[1, 2] == pytest.approx(15.0 / 4)   # 4 windows cover (1, 2); only the one starting there holds (2, 3)


def test_feature_occlusion_map_reproduces_the_model_and_finds_the_cell_it_reads(pkg, monkeypatch):
    """The middle-stage function run on the case's own map gives the prediction's target logit; with the rest of
    the network replaced by a function of one middle-stage cell, the map's maximum and mass lie in that cell's
    pixels, and the median fill is the image's own."""
    ctx = _ctx(pkg, 1)
    f, a = IM.middle_stage_function(ctx)
    assert float(f(a)[0]) == pytest.approx(float(ctx.target_logit()), abs=1e-4)
    h, w = a.shape[-2:]
    i, j = h // 2, w // 3
    x = ctx.inputs["image"]["pixels"]
    s = x.shape[-1]
    cell = np.zeros((s, s), bool)
    cell[i * s // h:(i + 1) * s // h, j * s // w:(j + 1) * s // w] = True
    fill = a.flatten(2).median(2).values[..., None, None]
    k = int((a[0, :, i, j] - fill[0, :, 0, 0]).abs().argmax())
    sign = float(torch.sign(a[0, k, i, j] - fill[0, k, 0, 0]))
    monkeypatch.setattr(IM, "middle_stage_function", lambda c: ((lambda act: sign * act[:, k, i, j]), a))
    m = IM.feature_occlusion_map(ctx)
    assert m.shape == (s, s) and m.max() == pytest.approx(1.0) and m.min() >= 0
    assert C.pointing_hit(m, cell) and C.mass_ratio(m, cell) > 0.5 / float(cell.mean())
    assert IM.image_map.__name__ and IM.PIXEL_MAPS["feature_occlusion"] == {"window": 1}
