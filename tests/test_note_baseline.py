"""The note IG's baseline setting (#15 §2/§4, assets/models/dermatology/note_baseline_choice.md): [UNK] at every
non-special position by default, [PAD] kept as a setting; both complete and equal to Captum's IG from the same
baseline; the baseline encoder pass kept per baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from core import load_package, save_package
from core.explain import attributions as A
from core.explain import text_attr as TA
from core.explain.context import ExplainContext
from tiny import LABELS, make_case, make_model


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return load_package(save_package(make_model("mmtm", modalities=("image", "note", "metadata")),
                                     tmp_path_factory.mktemp("nb") / "p", LABELS, name="tiny-mmtm"))


def test_default_baseline_is_unk_with_special_tokens_kept(pkg):
    assert A.NOTE_BASELINE == "unk" and set(A.NOTE_BASELINES) == {"pad", "unk"}
    enc = pkg.model.encoders["note"]
    case = make_case(0)
    tok, ids, mask, emb, base_emb = A.note_ig_inputs(enc, case.note)
    special = tok["special_tokens_mask"][0].bool()
    assert int(special.sum()) == 2 and int((~special).sum()) > 3            # [CLS] ... [SEP]
    base_ids = A.note_baseline_ids(enc, ids, tok["special_tokens_mask"])
    unk = enc.tokenizer.unk_token_id
    assert unk != enc.pad_token_id
    assert (base_ids[0][special] == ids[0][special]).all()                    # special tokens kept
    assert (base_ids[0][~special] == unk).all()                              # [UNK] everywhere else
    with torch.no_grad():
        assert torch.equal(base_emb, enc.embedding_layer(base_ids))
    pad_ids = A.note_baseline_ids(enc, ids, tok["special_tokens_mask"], "pad")
    assert (pad_ids[0][~special] == enc.pad_token_id).all() and (pad_ids[0][special] == ids[0][special]).all()
    with pytest.raises(ValueError, match="unknown note baseline"):
        A.note_baseline_ids(enc, ids, tok["special_tokens_mask"], "mask")


@pytest.mark.parametrize("baseline", [None, "pad"])
def test_note_ig_is_complete_and_equals_captums_from_the_same_baseline(pkg, baseline):
    A._NOTE_BASELINE.clear()
    case = make_case(1)
    ctx = ExplainContext(pkg, case)
    out = A.note_attributions(ctx, baseline=baseline)
    assert out["baseline"] == (baseline or "unk")
    enc = ctx.model.encoders["note"]
    _, _, mask, emb, base_emb = A.note_ig_inputs(enc, case.note, baseline)
    f = ctx.target_fn("note", "inputs_embeds", attention_mask=mask)
    with torch.enable_grad():
        ref, ref_delta = IntegratedGradients(f).attribute(emb, baselines=base_emb, n_steps=24, method="gausslegendre",
                                                          internal_batch_size=24, return_convergence_delta=True)
    scores = ref.sum(-1)[0].numpy()
    assert np.abs(scores).max() > 0
    assert np.allclose(out["token_scores"], scores, atol=1e-5 * np.abs(scores).max() + 1e-7)
    # completeness: the scores add up to f(note) - f(baseline note), up to the reported convergence delta
    with torch.no_grad():
        gap = float(ctx.target_logit()) - float(f(base_emb)[0])
    assert abs(sum(out["token_scores"]) - gap) == pytest.approx(out["convergence_delta"], abs=1e-5)
    assert out["relative_delta"] < 0.05
    assert abs(out["convergence_delta"] - float(ref_delta.abs().max())) < 1e-5


def test_unk_and_pad_differ_and_the_default_is_what_the_cohort_measures_as_ig(pkg):
    ctx = ExplainContext(pkg, make_case(2), target=1)
    unk = A.note_attributions(ctx, baseline="unk")["token_scores"]
    pad = A.note_attributions(ctx, baseline="pad")["token_scores"]
    assert not np.allclose(unk, pad, atol=1e-6)
    assert A.note_attributions(ctx)["token_scores"] == unk
    words = lambda m: [w["score"] for w in TA.note_words_attribution(ctx, m)]  # noqa: E731
    assert np.allclose(words("ig"), words("ig_unk"), atol=1e-5)               # text_attr's own [UNK] IG
    assert not np.allclose(words("ig"), words("ig_pad"), atol=1e-6)


def test_baseline_pass_is_kept_per_baseline(pkg):
    """The cached baseline encoder pass is keyed by the baseline's tokens: a [PAD] call after an [UNK] call on the
    same note (same length and mask) computes its own, and each equals the uncached computation."""
    A._NOTE_BASELINE.clear()
    enc = pkg.model.encoders["note"]
    case = make_case(3)
    ctx = ExplainContext(pkg, case)
    got = {b: A.note_attributions(ctx, baseline=b)["token_scores"] for b in ("unk", "pad")}
    assert len(A._NOTE_BASELINE.get(enc, {})) == 2
    again = {b: A.note_attributions(ctx, baseline=b)["token_scores"] for b in ("pad", "unk")}
    assert len(A._NOTE_BASELINE.get(enc, {})) == 2 and got == again
    plain = A.baseline_note_features
    try:
        A.baseline_note_features = lambda e, ids, emb, mask: e(inputs_embeds=emb, attention_mask=mask)
        fresh = {b: A.note_attributions(ctx, baseline=b)["token_scores"] for b in ("unk", "pad")}
    finally:
        A.baseline_note_features = plain
    for b in got:
        assert np.allclose(got[b], fresh[b], atol=1e-7)


def test_explain_case_note_part_uses_the_default_baseline(pkg):
    from core.explain import explain_case

    case = make_case(4)
    ex = explain_case(pkg, case, parts=("note",))
    assert ex.note["baseline"] == "unk"
    ctx = ExplainContext(pkg, case)
    assert np.allclose(ex.note["token_scores"], A.note_attributions(ctx, baseline="unk")["token_scores"], atol=1e-6)
    assert not np.allclose(ex.note["token_scores"], A.note_attributions(ctx, baseline="pad")["token_scores"], atol=1e-6)
