"""Known-answer controls (core/explain/controls.py): the single-source generator really carries the label in
one source only; the §2 criteria pass and fail on known summaries; a tiny metadata-only control, trained in
seconds, meets its criteria and its randomised-weights copy fails them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from core.data.cohorts.dermatology import CONTROL_SITE, LABELS, draw_case, generate_dermatology
from core.explain import controls as K


def _draw(source, n=70, seed=5):
    return [draw_case(seed, i, LABELS[i % 7], 64, source) for i in range(n)]


@pytest.mark.parametrize("source", ["lesion", "context", "note", "metadata"])
def test_single_source_cohorts_carry_the_label_in_one_source_only(source):
    cases = _draw(source)
    assert all(c["evidence"] == source and c["extras"]["single_source"] == source for c in cases)
    look = np.mean([c["extras"]["lesion_look"] == c["label"] for c in cases])
    cue = np.mean([c["extras"]["context_cue"] == c["label"] for c in cases])
    note = np.mean([c["extras"]["note_class"] == c["label"] and c["extras"]["note_kind"] != "missing" for c in cases])
    site = np.mean([c["metadata"]["localization"] == CONTROL_SITE[c["label"]] for c in cases])
    rates = {"lesion": look, "context": cue, "note": note, "metadata": site}
    assert rates[source] == 1.0
    for other, r in rates.items():
        if other != source:   # decoys: the label's own hallmarks only by chance (about 1/7 or less)
            assert r < 0.3, (other, r)
    if source == "note":
        from core.data.cohorts.dermatology import decisive_spans
        assert all(decisive_spans(c["note"], c["label"]) for c in cases)
    if source == "metadata":   # the site must not leak into the note: no "lesion on the <site>" sentence
        assert not any("esion on the" in (c["note"] or "") or "not recorded" in (c["note"] or "") for c in cases)


def test_control_cohort_is_balanced_and_cached_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLENS_CACHE", str(tmp_path))
    c = generate_dermatology(n=28, seed=1, image_size=64, single_source="context", workers=1)
    assert sorted(it.label for it in c.items) == sorted(LABELS * 4)
    assert c.info["single_source"] == "context" and "only-context" in str(c.items[0].image_path)
    plain = generate_dermatology(n=28, seed=1, image_size=64, workers=1)
    assert "single_source" not in plain.info and "only" not in str(plain.items[0].image_path)
    with pytest.raises(ValueError, match="single_source"):
        generate_dermatology(n=28, seed=1, image_size=64, single_source="spectrum", workers=1)


def test_criteria_pass_and_fail_on_known_summaries():
    good = {"lesion_ratio_lesion_decided": 3.5, "pointing_game_lesion_decided": 0.95, "pointing_game_lesion_decided_chance": 0.1}
    assert [c["passed"] for c in K.check(good, "lesion")] == [True, True]
    assert [c["passed"] for c in K.check({**good, "lesion_ratio_lesion_decided": 2.9}, "lesion")] == [False, True]
    assert K.check(good, "lesion")[1]["chance"] == 0.1 and K.check(good, "lesion")[0]["chance"] == 1.0
    ctx = {"context_ratio_context_decided": 1.6, "lesion_ratio_context_decided": 1.2}
    assert [c["passed"] for c in K.check(ctx, "context")] == [True, False]            # "<= 1" on the lesion
    assert [c["passed"] for c in K.check({}, "note")] == [False, False]                # not measured = not met
    meta = {"shapley_decisive_metadata": 0.95, "table_top_is_planted": float("nan")}
    assert [c["passed"] for c in K.check(meta, "metadata")] == [True, False]


def test_note_only_notes_hide_the_planted_words_among_decoys():
    """The note criterion must be a test: planted words are a minority of a note-only control's words, so a
    uniform attribution (the chance level) stays far below 0.6; the planted sentences are those the
    generator drew before the decoys (inserted, never edited), and the decoys carry no label."""
    import re

    from core.data.cohorts.dermatology import draw_case
    from core.data.cohorts.dermatology.notes import (NOTE_DECOY_SHARE, _note, _single_source_metadata,
                                                    _without_label_weak, planted_word_share)
    from core.data.cohorts.dermatology.plan import _single_source_plan

    shares = []
    for i in range(35):
        c = draw_case(7, i, LABELS[i % 7], 64, "note")
        share = planted_word_share(c["note"], c["label"])
        assert 0 < share <= NOTE_DECOY_SHARE[1] + 1e-9, c["note"]
        shares.append(share)
        # the same note without decoys: its sentences appear, in order, in the decoyed note
        plan_ss, meta_ss, note_ss, _ = np.random.SeedSequence([7, i]).spawn(4)
        plan, decoy = _single_source_plan(np.random.default_rng(plan_ss), c["label"], "note")
        md = _single_source_metadata(np.random.default_rng(meta_ss), c["label"], "note", decoy)
        # (the label's own weak phrases taken out first: test_note_only_notes_carry_no_weak_phrase_of_the_label)
        plain = re.split(r"(?<=[.!?])\s+", _without_label_weak(_note(np.random.default_rng(note_ss), plan, md), c["label"]))
        it = iter(re.split(r"(?<=[.!?])\s+", c["note"]))
        assert all(any(s == t for t in it) for s in plain)
        assert len(c["note"].split()) > len(" ".join(plain).split())
    assert np.mean(shares) < 0.45


def test_note_only_notes_carry_no_weak_phrase_of_the_label():
    """The generator adds one of the label's weak phrases to 30% of decisive notes; in a note-only control they
    would carry the label outside the planted sentences (the known answer), so they are taken out before the
    decoys go in (decoys: weak phrases of random classes)."""
    import re

    from core.data.cohorts.dermatology import draw_case
    from core.data.cohorts.dermatology.notes import _WEAK, _without_label_weak

    own = {lab: {t for t, g in _WEAK if lab in g} for lab in LABELS}
    note = "Itchy at times. Bleeds occasionally. Sore that bleeds, crusts over and never fully heals."
    assert _without_label_weak(note, "df") == "Bleeds occasionally. Sore that bleeds, crusts over and never fully heals."
    assert _without_label_weak(note, "mel") == "Itchy at times. Sore that bleeds, crusts over and never fully heals."
    assert _without_label_weak("Itchy at times.", "df") == "Itchy at times."   # never emptied
    assert _without_label_weak(None, "df") is None
    from core.data.cohorts.dermatology.notes import _note, _single_source_metadata
    from core.data.cohorts.dermatology.plan import _single_source_plan

    drawn_own, still_there = 0, 0
    for i in range(140):
        c = draw_case(3, i, LABELS[i % 7], 32, "note")
        plan_ss, meta_ss, note_ss, _ = np.random.SeedSequence([3, i]).spawn(4)
        plan, decoy = _single_source_plan(np.random.default_rng(plan_ss), c["label"], "note")
        md = _single_source_metadata(np.random.default_rng(meta_ss), c["label"], "note", decoy)
        drawn = re.split(r"(?<=[.!?])\s+", _note(np.random.default_rng(note_ss), plan, md))
        final = set(re.split(r"(?<=[.!?])\s+", c["note"]))
        for sent in drawn:
            if sent in own[c["label"]]:
                drawn_own += 1
                still_there += sent in final   # only where a random-class decoy drew the same phrase again
    assert drawn_own >= 10                     # the generator does plant them (~30% of decisive notes) ...
    assert still_there / drawn_own < 0.5       # ... and they are gone (kept as drawn, this would be 1.0)


def test_note_criterion_fails_a_uniform_attribution_and_passes_a_faithful_one():
    """On note-only notes the criterion separates: a uniform word attribution (and so a randomised model's,
    which is about uniform) gets the planted-word share, below 0.6; one that puts most mass on the planted
    words passes."""
    import re

    from core.data.cohorts.dermatology import decisive_spans, draw_case
    from core.explain.cohort import word_mass_share

    uniform, faithful = [], []
    for i in range(21):
        c = draw_case(11, i, LABELS[i % 7], 64, "note")
        spans = decisive_spans(c["note"], c["label"])
        words = [{"start": m.start(), "end": m.end()} for m in re.finditer(r"\S+", c["note"])]
        inside = [any(s <= w["start"] and w["end"] <= e for s, e in spans) for w in words]
        uniform.append(word_mass_share([{**w, "score": 1.0} for w in words], spans))
        faithful.append(word_mass_share([{**w, "score": 1.0 if x else 0.2} for w, x in zip(words, inside)], spans))
    summary = lambda rows: {"note_decisive_mass": np.mean([r["share"] for r in rows]),  # noqa: E731
                            "note_decisive_mass_chance": np.mean([r["chance"] for r in rows])}
    u, f = summary(uniform), summary(faithful)
    assert u["note_decisive_mass"] == pytest.approx(u["note_decisive_mass_chance"]) and u["note_decisive_mass"] < 0.45
    assert not K.check(u, "note")[1]["passed"] and K.check(f, "note")[1]["passed"]


def test_finetune_cut_and_augment_options():
    """core.training.finetune's cut / augment parameters (defaults = the HAM10000 stage 1): the frozen part and
    the trained part at any cut compose to the encoder's last map, and fine-tuning after block 12 leaves
    blocks 0..12 untouched."""
    from core.encoders.image import ImageEncoder
    from core.training.finetune import CUT, frozen_part, full_features, finetune_top, trained_part

    torch.manual_seed(0)
    enc = ImageEncoder("efficientnet_lite0", False, [64, 48]).eval()
    x = torch.randn(6, 3, 48, 64)
    with torch.no_grad():
        last = enc._stages(x)[-1]
        for cut in (CUT, 12):
            m, _, _ = frozen_part(enc, x, cut)
            assert torch.allclose(trained_part(enc, m, cut), last, atol=1e-5)
        m, l0, l1 = frozen_part(enc, x, 12)
        assert torch.allclose(l1, enc._stages(x)[1].mean(dim=(2, 3)), atol=1e-5)   # level 1: the middle stage
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    data = {"map": m.half(), "l0": l0, "l1": l1}
    y = torch.arange(6) % 3
    info = finetune_top(enc, data, y, data, y, 3, epochs=1, samples_per_epoch=8, batch_size=4, threads=1,
                        log=lambda m: None, cut=12, augment=False)
    after = enc.state_dict()
    assert info["cut_after_block"] == 12
    assert torch.equal(before["backbone._blocks.12._project_conv.weight"], after["backbone._blocks.12._project_conv.weight"])
    assert not torch.equal(before["backbone._blocks.13._project_conv.weight"], after["backbone._blocks.13._project_conv.weight"])
    assert full_features(enc, data, cut=12)["pooled"].shape == (6, enc.out_dim)
    assert K.trained_image_prefixes(12)[0] == "encoders.image.backbone._blocks.13."


def test_randomised_copy_redraws_trained_weights_only():
    from tiny import LABELS as TL, make_model
    from core import load_package, save_package
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        model = make_model("concat", modalities=("image", "metadata"))
        model.encoders["image"].freeze()
        pkg = load_package(save_package(model, f"{d}/p", TL, name="t"))
        rnd = K.randomised_copy(pkg)
        a, b = dict(pkg.model.named_parameters()), dict(rnd.model.named_parameters())
        for name in a:
            same = torch.equal(a[name], b[name])
            assert same == name.startswith("encoders.image."), name
        assert rnd.model is not pkg.model and rnd.labels == pkg.labels
        # a fine-tuned image encoder: the part it trained is re-drawn too, the rest of it kept
        last = [n for n in a if n.startswith("encoders.image.")][-1]
        tuned = last.rsplit(".", 1)[0] + "."
        (pkg.path / K.FINETUNE_FILE).write_text(json.dumps({"trained_prefixes": [tuned]}))
        b = dict(K.randomised_copy(pkg).model.named_parameters())
        for name in a:
            same = torch.equal(a[name], b[name])
            assert same == (name.startswith("encoders.image.") and not name.startswith(tuned)), name


@pytest.fixture(scope="module")
def tiny_metadata_control(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("controls")
    old = os.environ.get("FUSIONLENS_CACHE")
    os.environ["FUSIONLENS_CACHE"] = str(root / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: one thread is several times faster than contended two
    torch.manual_seed(0)       # the tiny random-init encoders are drawn from the global generator
    try:
        rows = K.run_controls(["metadata"], n=210, n_eval=28, image_size=64, epochs=40, tiny=True, root=root,
                              log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("FUSIONLENS_CACHE", None)
        else:
            os.environ["FUSIONLENS_CACHE"] = old
    return rows[0]


def test_tiny_metadata_control_meets_its_criteria_and_its_randomised_copy_fails(tiny_metadata_control):
    r = tiny_metadata_control
    t, z = r["trained"], r["randomised"]
    assert t["accuracy"] >= 0.8 and z["accuracy"] < 0.5          # it learned the site; the random copy did not
    assert all(c["passed"] for c in t["checks"]), t["checks"]
    assert not any(c["passed"] for c in z["checks"]), z["checks"]
    # chance: 1/3 per case with all three modalities, 1/2 where the note is missing; 1/3 of the features
    assert 1 / 3 <= t["checks"][0]["chance"] <= 1 / 2 and t["checks"][1]["chance"] == pytest.approx(1 / 3)
    table = K.controls_table([r])
    assert table.count("| metadata-only") == 2 and "| yes |" in table
    assert not math.isnan(t["summary"]["table_top_is_planted"])
    # explained on the model's own softmax (a fitted temperature may sit at its bound and saturate Shapley)
    assert t["temperature"]["explained_at"] == 1.0 and t["temperature"]["fitted"] > 0


def test_cli_faithfulness_controls_table_and_usage_errors(monkeypatch, capsys):
    from core.cli import main

    checks = lambda v: [{"measure": "m", "key": "k", "value": v, "chance": 0.1, "criterion": ">= 0.9", "passed": v >= 0.9}]  # noqa: E731
    rows = [{"source": "lesion", "trained": {"accuracy": 0.9, "checks": checks(0.95)},
             "randomised": {"accuracy": 0.1, "checks": checks(0.2)}}]
    seen = {}
    monkeypatch.setattr(K, "run_controls", lambda sources, **kw: seen.update(sources=sources, **kw) or rows)
    assert main(["faithfulness", "--controls", "--sources", "lesion", "--n", "350"]) == 0
    out = capsys.readouterr().out
    assert "| lesion-only | 0.90 / 0.10 | m | >= 0.9 | 0.95 (0.10) | yes | 0.20 | yes |" in out
    assert seen["sources"] == ["lesion"] and seen["n"] == 350
    assert main(["faithfulness", "--controls", "--sources", "note"]) == 0
    assert seen["n"] is None   # no --n: each control's own size (K.CONTROL_N: the note-only control's 2100)
    assert seen["alternatives"] is False   # the alternative explainers (~4x the time) only when asked
    assert main(["faithfulness", "--controls", "--sources", "note", "--alternatives"]) == 0
    assert seen["alternatives"] is True
    assert main(["faithfulness", "--controls", "--sources", "lesion", "--alternatives", "feature occlusion, pixel IG"]) == 0
    assert seen["alternatives"] == ["feature occlusion", "pixel IG"]
    capsys.readouterr()
    assert main(["faithfulness", "--controls", "--alternatives", "feature occlusions"]) != 0   # a typo: one sentence
    err = capsys.readouterr().err
    assert "unknown alternative explainer 'feature occlusions'" in err and "feature occlusion" in err
    assert "Traceback" not in err
    assert main(["faithfulness", "--alternatives"]) != 0            # without --controls it would do nothing: say so
    assert "add --controls" in capsys.readouterr().err
    assert main(["faithfulness"]) != 0
    assert "give model package folders" in capsys.readouterr().err
    assert main(["faithfulness", "some/package", "--seed", "0"]) != 0
    assert "training cohort's seed" in capsys.readouterr().err


def test_controls_table_lists_the_alternative_explainers_after_the_product_ones():
    c = lambda m, v, ok: {"measure": m, "key": "k", "value": v, "chance": 0.3, "criterion": ">= 0.6", "passed": ok}  # noqa: E731
    alt = lambda v, ok: [{"explainer": "ig_unk", "checks": [c("note IG, [UNK] baseline mass on the planted words", v, ok)]}]  # noqa: E731
    rows = [{"source": "note", "trained": {"accuracy": 0.9, "checks": [c("note IG mass", 0.5, False)], "alternatives": alt(0.7, True)},
             "randomised": {"accuracy": 0.2, "checks": [c("note IG mass", 0.3, False)], "alternatives": alt(0.35, False)}}]
    lines = K.controls_table(rows).splitlines()
    assert lines[2].startswith("| note-only | 0.90 / 0.20 | note IG mass |") and "| 0.50 (0.30) | no | 0.30 | yes |" in lines[2]
    assert lines[3] == "| note-only |  | note IG, [UNK] baseline mass on the planted words | >= 0.6 | 0.70 (0.30) | yes | 0.35 | yes |"
    # every image / note control is measured with an alternative explainer too, answering only its own criteria
    assert set(K.ALTERNATIVES) == {"lesion", "context", "note"}
    assert all(k in K.ALTERNATIVE_KEYS["image"] for s in ("lesion", "context") for k, *_ in K.CRITERIA[s])


def test_controls_are_never_measured_on_their_training_seed():
    assert K.EVAL_SEED != K.TRAIN_SEED and K.CONTROL_N["note"] > 700
    with pytest.raises(ValueError, match="training seed"):
        K.run_controls(["metadata"], eval_seed=K.TRAIN_SEED, tiny=True, log=lambda *_: None)


def test_second_definition_is_reported_beside_the_criterion_never_instead():
    """The note criterion's positive-mass reading (relevance mass accuracy) is an extra, marked row after the
    criteria; the criteria themselves are unchanged."""
    s = {"shapley_decisive_note": 1.0, "shapley_decisive_note_chance": 1 / 3, "note_decisive_mass": 0.5,
         "note_decisive_mass_chance": 0.33, "note_decisive_mass_positive": 0.64}
    assert [c["key"] for c in K.check(s, "note")] == ["shapley_decisive_note", "note_decisive_mass"]
    rows = K.check(s, "note", second_definitions=True)
    assert [c["passed"] for c in rows] == [True, False, True]
    assert rows[2]["second_definition"] and rows[2]["chance"] == 0.33 and "second_definition" not in rows[1]
    assert len(K.check(s, "lesion", second_definitions=True)) == 2   # no second definition there
    table = K.controls_table([{"source": "note", "trained": {"accuracy": 0.9, "checks": rows},
                               "randomised": {"accuracy": 0.2, "checks": K.check(dict(s, note_decisive_mass_positive=0.3),
                                                                                 "note", second_definitions=True)}}])
    marked = [ln for ln in table.splitlines() if "second definition" in ln]
    assert len(marked) == 1 and "positive" in marked[0]   # a reader counting met rows can tell it apart


def test_evaluate_control_measures_only_the_alternatives_asked_for(monkeypatch):
    from types import SimpleNamespace

    seen = []
    summary = {"lesion_ratio_lesion_decided": 4.0, "pointing_game_lesion_decided": 0.95, "pointing_game_lesion_decided_chance": 0.1}

    def fake(pkg, items, **kw):
        seen.append(kw.get("method"))
        return {"accuracy": 1.0, "n": 1, "true": {"all": summary}}
    monkeypatch.setattr(K, "cohort_faithfulness", fake)
    pkg = SimpleNamespace(temperature=0.5, sha256="x")
    out = K.evaluate_control(pkg, "lesion", [], alternatives=["feature occlusion"])
    assert seen == ["gradcam", "feature_occlusion"] and [a["explainer"] for a in out["alternatives"]] == ["feature occlusion"]
    assert [c["measure"] for c in out["alternatives"][0]["checks"]] == [
        "lesion mass ratio [feature occlusion]", "pointing game in the lesion [feature occlusion]"]
    seen.clear()
    K.evaluate_control(pkg, "lesion", [], alternatives=True)
    assert seen == ["gradcam", "pixel_ig", "feature_occlusion", "median_ig"]
    seen.clear()
    K.evaluate_control(pkg, "lesion", [])
    assert seen == ["gradcam"]


def test_note_control_tunes_minilms_last_layer_stores_it_and_loads_it_back(tmp_path, monkeypatch):
    """The note-only control's stage 1 (``finetune_note``, ``TextEncoder(tuned_layers=1)``) on a tiny cohort with the
    real MiniLM: the last layer's weights move away from MiniLM's, the package stores them (and only them: the
    layers below stay referenced), and they come back on load; the randomised copy re-draws them."""
    from safetensors.torch import load_file

    from core.encoders.text import TextEncoder
    from core.package import load_package

    monkeypatch.setenv("FUSIONLENS_CACHE", str(tmp_path / "cache"))
    tiny = K.tiny_encoders()
    monkeypatch.setattr(K, "tiny_encoders", lambda: {**tiny, "note": {"type": "text", "source": "minilm", "max_length": 48,
                                                                      "frozen": True}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        path = K.train_control("note", n=84, root=tmp_path, image_size=64, epochs=2, tiny=True, finetune=True,
                               finetune_opts={"layers": 1, "epochs": 2, "layer_lr": 1e-3}, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    ref = TextEncoder("minilm", max_length=48).model.state_dict()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architecture"]["modalities"]["note"]["tuned_layers"] == 1
    ext = cfg["external_weights"]
    assert "encoders.note.model.embeddings." in ext and "encoders.note.model.encoder.layer.4." in ext
    assert not any(e.startswith("encoders.note.model.encoder.layer.5") for e in ext)
    stored = load_file(str(path / "model.safetensors"))
    mine = {k[len("encoders.note.model."):]: v for k, v in stored.items() if k.startswith("encoders.note.")}
    assert mine and all(k.startswith("encoder.layer.5.") for k in mine)   # only the tuned layer is stored
    assert len(mine) == sum(k.startswith("encoder.layer.5.") for k in ref)
    assert any(not torch.equal(v, ref[k]) for k, v in mine.items())      # it was trained
    record = json.loads((path / K.NOTE_FINETUNE_FILE).read_text())
    assert record["trained_prefixes"] == ["encoders.note.model.encoder.layer.5."]
    pkg = load_package(path)
    got = pkg.model.encoders["note"].model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in mine.items())           # loaded back
    assert torch.equal(got["encoder.layer.4.output.dense.weight"], ref["encoder.layer.4.output.dense.weight"])
    assert pkg.model.encoders["note"].frozen
    rnd = K.randomised_copy(pkg).model.encoders["note"].model.state_dict()
    for k in got:
        if k.endswith("position_ids"):
            continue
        assert torch.equal(rnd[k], got[k]) != k.startswith("encoder.layer.5."), k


def test_text_encoder_default_config_is_unchanged():
    """tuned_layers=0 (the default) leaves the encoder's config, and so every package and cache key, as before."""
    from core.encoders.text import TextEncoder

    enc = TextEncoder("minilm", max_length=32)
    assert "tuned_layers" not in enc.config() and enc.external_weights
    assert not any(p.requires_grad for p in TextEncoder("minilm", max_length=32, tuned_layers=1).model.embeddings.parameters())
    with pytest.raises(ValueError, match="tuned_layers"):
        TextEncoder("minilm", max_length=32, tuned_layers=7)


def test_lesion_swapped_maps_replace_exactly_the_lesion_cells_with_plain_skin_cells(tmp_path):
    """The context-only control's fine-tuning option (``lesion_swap``): copy 0 is the map as it is; copy 1 has every
    cell touching the lesion replaced by one of the same map's plain-skin cells (touching neither the lesion nor
    the context ring); copy 2 a part of them; context-ring and skin cells never change."""
    from PIL import Image

    from core.data.base import CohortItem

    size, h = 64, 8                                  # 8 x 8 cells of 8 px
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - 28, xx - 28)
    lesion, ring = d < 9, (d >= 9) & (d < 18)
    Image.fromarray((lesion * 255).astype(np.uint8)).save(tmp_path / "m.png")
    Image.fromarray((ring * 255).astype(np.uint8)).save(tmp_path / "c.png")
    item = CohortItem("c0", "nv", "train", mask_path=tmp_path / "m.png", context_path=tmp_path / "c.png")
    maps = torch.arange(2 * h * h, dtype=torch.float32).view(1, 2, h, h)   # every cell distinct
    out = K.lesion_swapped_maps(maps, [item], 3)
    assert out.shape == (3, 2, h, h) and torch.equal(out[0], maps[0])
    cell = lambda r: torch.from_numpy(r.reshape(h, 8, h, 8).any(axis=(1, 3)))  # noqa: E731
    les, rng_c = cell(lesion), cell(ring)
    skin = ~les & ~rng_c
    skin_vecs = {tuple(v) for v in maps[0][:, skin].T.tolist()}
    changed = (out[1] != maps[0]).any(0)
    assert torch.equal(changed, les)                                       # all lesion cells, nothing else
    assert all(tuple(v) in skin_vecs for v in out[1][:, les].T.tolist())  # each now a plain-skin cell
    part = (out[2] != maps[0]).any(0)
    assert not (part & ~les).any() and 0 < int(part.sum()) < int(les.sum())
