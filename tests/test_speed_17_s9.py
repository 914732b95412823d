"""Issue 17, session 9: faster paths that must give the numbers of the paths they replace."""
from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from core.encoders import ModalityFeatures
from core.fusion import base as fusion_base
from core.fusion import hierarchical
from core.fusion.base import AttentionBlock, constant_rows, lean_attention
from core.package import prepare_batch

from tiny import make_case, make_model


@pytest.mark.parametrize("cross", [False, True])
def test_lean_attention_gives_torchs_multihead_attention_and_its_gradients(cross):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True).eval()
    q = torch.randn(3, 5, 16, requires_grad=True)
    kv = torch.randn(3, 7, 16, requires_grad=True) if cross else q
    pad = torch.zeros(3, kv.shape[1], dtype=torch.bool)
    pad[0, -2:] = True
    pad[2, 1] = True
    ref_out, ref_w = mha(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
    out, w = lean_attention(mha, q, kv if cross else None, pad)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)
    assert float(w[0, :, -2:].detach().abs().max()) == 0.0                      # padded keys get no weight
    ins = [q, kv] if cross else [q]
    g_ref = torch.autograd.grad((ref_out * torch.arange(16.0)).sum() + ref_w[:, 0].sum(), ins)
    g = torch.autograd.grad((out * torch.arange(16.0)).sum() + w[:, 0].sum(), ins)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_attention_block_keeps_torchs_call_in_training_and_with_hooks():
    blk = AttentionBlock(16, 4, dropout=0.1)
    blk.train()
    assert not blk._lean()                      # training: torch's own call, its dropout draws included
    blk.eval()
    assert blk._lean()
    h = blk.attn.register_forward_hook(lambda *a: None)
    assert not blk._lean()                      # a hook on the attention module still sees its call
    h.remove()
    assert blk._lean()
    x = torch.randn(2, 3, 16)
    with torch.no_grad():                       # a prediction's self-attention: torch's fused kernel is kept
        assert blk._torch_fast(x)
    assert not blk._torch_fast(x)               # trainable weights: torch would not take its fused kernel
    blk.requires_grad_(False)
    assert blk._torch_fast(x)                   # frozen weights, nothing needs a gradient
    assert not blk._torch_fast(x.requires_grad_())   # an IG step's: the lean path


def _mmtm_with_fixed_rows(n: int = 6):
    torch.manual_seed(0)
    model = make_model("mmtm", ("image", "note", "metadata")).eval()
    inputs, present, _ = prepare_batch(model, [make_case(0)])
    with torch.no_grad():
        feats = model.encode(inputs, present)
    rep = [f.repeat(n) for f in feats]
    # the note varies per row (as in its IG steps) and needs gradients; image and metadata are held fixed
    t = (rep[1].tokens + 0.1 * torch.randn_like(rep[1].tokens)).requires_grad_()
    p = (rep[1].pooled + 0.1 * torch.randn_like(rep[1].pooled)).requires_grad_()
    rep[1] = ModalityFeatures(p, rep[1].levels, t, rep[1].token_mask, rep[1].extras)
    return model, rep, present.expand(n, -1).clone(), (t, p)


def test_mmtm_computes_fixed_inputs_once_with_the_same_numbers_and_gradients(monkeypatch):
    model, feats, present, varied = _mmtm_with_fixed_rows()
    assert constant_rows(feats, False) == [True, False, True]
    assert constant_rows(feats, True) == [False, False, False]          # never in training mode
    assert constant_rows([f.index(torch.tensor([0])) for f in feats], False) == [False] * 3   # a batch of one

    def run():
        fused, diag = model.fusion(feats, present)
        logit = model.head(fused)[0][:, 1]
        return fused, diag, torch.autograd.grad(torch.unbind(logit), varied)

    calls = []
    real = hierarchical.constant_rows
    monkeypatch.setattr(hierarchical, "constant_rows", lambda f, tr: calls.append(real(f, tr)) or calls[-1])
    fused, diag, grads = run()
    assert calls == [[True, False, True]]
    monkeypatch.setattr(hierarchical, "constant_rows", lambda f, tr: [False] * len(f))
    fused0, diag0, grads0 = run()
    assert torch.allclose(fused, fused0, atol=1e-6)
    for k in ("modality_weights", "gates", "attention_mass"):
        assert torch.allclose(diag[k], diag0[k], atol=1e-6), k
    for q in diag0["attention"]:
        assert torch.allclose(diag["attention"][q], diag0["attention"][q], atol=1e-6)
    for a, b in zip(grads, grads0):
        assert torch.allclose(a, b, atol=1e-6) and float(b.abs().max()) > 0


def test_constant_rows_looks_at_the_values_and_at_gradients():
    _, feats, _, _ = _mmtm_with_fixed_rows()
    img = feats[0]
    other = img.tokens.clone()
    other[-1, 0, 0] += 1e-3                                      # one value in the last row differs
    assert constant_rows([ModalityFeatures(img.pooled, img.levels, other, img.token_mask)], False) == [False]
    mask = img.token_mask.clone()
    mask[2, -1] = ~mask[2, -1]
    assert constant_rows([ModalityFeatures(img.pooled, img.levels, img.tokens, mask)], False) == [False]
    pooled = img.pooled.clone()
    pooled[3] += 1
    assert constant_rows([ModalityFeatures(pooled, img.levels, img.tokens, img.token_mask)], False) == [False]
    needs_grad = img.tokens.clone().requires_grad_()            # each row would need its own gradient
    assert constant_rows([ModalityFeatures(img.pooled, img.levels, needs_grad, img.token_mask)], False) == [False]


def test_relu6_inside_onednns_product_is_the_clamp_after_it():
    from core.encoders.onednn import FrozenLinear, FrozenLinearReLU6, relu6_fusable

    if not relu6_fusable():
        pytest.skip("this torch build's oneDNN linear has no hardtanh post-op")
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 3, 8) * 4).requires_grad_()
    w, b = torch.randn(12, 8), torch.randn(12)
    y = FrozenLinearReLU6.apply(x, w, b)
    ref = F.hardtanh(FrozenLinear.apply(x, w, b), 0.0, 6.0)
    assert torch.equal(y, ref) and bool((y == 0).any()) and bool((y == 6).any())   # both ends of the clamp hit
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def _flat(x, out, key=""):
    import numpy as np

    if isinstance(x, dict):
        for k, v in x.items():
            _flat(v, out, f"{key}/{k}")
    elif isinstance(x, (list, tuple)) and x and isinstance(x[0], dict):
        for i, v in enumerate(x):
            _flat(v, out, f"{key}/{i}")
    elif isinstance(x, (float, int, list, np.ndarray)) and not isinstance(x, bool):
        try:
            out[key] = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return out


def test_explanation_and_prediction_equal_the_paths_they_replace(tmp_path, monkeypatch):
    """A whole explanation of an mmtm package (every part, Shapley sampling on) and its prediction with the fixed
    inputs computed once and the lean attention, against both turned off: the same numbers; the note's IG rows
    did run with the image and metadata held fixed."""
    import numpy as np

    from core import save_package
    from core.bench import FULL_PARTS
    from core.explain import explain_case
    from core.package import load_package

    from tiny import LABELS

    pkg = load_package(save_package(make_model("mmtm", ("image", "note", "metadata")), tmp_path / "m", LABELS, name="tiny-mmtm"))
    case = make_case(1)
    seen = []
    real = hierarchical.constant_rows
    monkeypatch.setattr(hierarchical, "constant_rows", lambda f, tr: seen.append(real(f, tr)) or seen[-1])
    new = explain_case(pkg, case, parts=FULL_PARTS + ("stability",), shapley_samples=8, ig_steps=6)
    new_pred = pkg.predict(case, mc_samples=8)
    assert [True, False, True] in seen and [False, True, True] in seen and [True, True, False] in seen
    monkeypatch.setattr(hierarchical, "constant_rows", lambda f, tr: [False] * len(f))
    monkeypatch.setattr(fusion_base.AttentionBlock, "_lean", lambda self: False)
    old = explain_case(pkg, case, parts=FULL_PARTS + ("stability",), shapley_samples=8, ig_steps=6)
    old_pred = pkg.predict(case, mc_samples=8)
    a, b = (_flat({k: v for k, v in e.to_dict().items() if k != "timings"}, {}) for e in (new, old))
    assert set(a) == set(b) and len(a) > 20
    for k in b:
        assert a[k].shape == b[k].shape, k
        assert np.allclose(a[k], b[k], rtol=1e-5, atol=1e-5, equal_nan=True), (k, np.abs(a[k] - b[k]).max())
    pa, pb = _flat(new_pred.to_dict(), {}), _flat(old_pred.to_dict(), {})
    for k in pb:
        assert np.allclose(pa[k], pb[k], rtol=1e-5, atol=1e-6, equal_nan=True), k


def test_note_baseline_pass_is_kept_per_length_and_follows_the_weights(tmp_path, monkeypatch):
    """The note baseline's text-encoder output is computed once per (encoder weights, baseline) and reused:
    the same token scores and delta as computing it each time; a changed weight computes it again."""
    import numpy as np

    from core import save_package
    from core.explain import attributions
    from core.explain.context import ExplainContext
    from core.package import load_package

    from tiny import LABELS

    pkg = load_package(save_package(make_model("mmtm", ("image", "note", "metadata")), tmp_path / "m", LABELS, name="tiny-mmtm"))
    enc = pkg.model.encoders["note"].freeze()
    attributions._NOTE_BASELINE.clear()
    rows = []
    real = type(enc).forward

    def counting(self, *a, **k):
        x = k.get("inputs_embeds")
        rows.append(None if x is None else x.shape[0])
        return real(self, *a, **k)

    monkeypatch.setattr(type(enc), "forward", counting)
    case = make_case(1)
    first = attributions.note_attributions(ExplainContext(pkg, case))
    assert rows.count(1) == 1                                   # the baseline's row, computed once ...
    again = attributions.note_attributions(ExplainContext(pkg, case))
    assert rows.count(1) == 1                                   # ... and then taken from the cache
    assert first["token_scores"] == again["token_scores"] and first["convergence_delta"] == again["convergence_delta"]
    monkeypatch.setattr(attributions, "baseline_note_features",
                        lambda e, ids, emb, mask: real(e, inputs_embeds=emb, attention_mask=mask))
    plain = attributions.note_attributions(ExplainContext(pkg, case))
    assert np.allclose(first["token_scores"], plain["token_scores"], atol=1e-7) and np.abs(plain["token_scores"]).max() > 0
    monkeypatch.undo()
    with torch.no_grad():                                        # a weight changed in place: recomputed
        next(p for n, p in enc.named_parameters() if "encoder.layer" in n and n.endswith("weight")).mul_(1.5)
    changed = attributions.note_attributions(ExplainContext(pkg, case))
    monkeypatch.setattr(attributions, "baseline_note_features",
                        lambda e, ids, emb, mask: real(e, inputs_embeds=emb, attention_mask=mask))
    fresh = attributions.note_attributions(ExplainContext(pkg, case))
    assert np.allclose(changed["token_scores"], fresh["token_scores"], atol=1e-7)
    assert not np.allclose(changed["token_scores"], first["token_scores"], atol=1e-7)


@pytest.mark.parametrize("q_fixed", [False, True])
def test_attention_block_with_fixed_parts_projected_once_equals_its_forward(q_fixed):
    torch.manual_seed(1)
    blk = AttentionBlock(16, 4).eval()
    B = 5
    fixed_part = torch.randn(1, 3, 16).expand(B, -1, -1)
    varied = torch.randn(B, 4, 16, requires_grad=True)
    q = torch.randn(1, 6, 16).expand(B, -1, -1) if q_fixed else torch.randn(B, 6, 16)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[:, 5] = False
    ref_y, ref_w = blk(q, torch.cat([fixed_part, varied], 1), mask)
    y, w = blk.forward_fixed(q, q_fixed, [(fixed_part, True), (varied, False)], mask)
    assert torch.allclose(y, ref_y, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)
    g = torch.autograd.grad(y.sum(), varied)[0]
    assert torch.allclose(g, torch.autograd.grad(ref_y.sum(), varied)[0], atol=1e-5) and float(g.abs().max()) > 0


def test_mmtm_fixed_rows_fall_back_to_the_ordinary_forward_under_hooks(monkeypatch):
    """A hook on any submodule of the fusion (Captum / Grad-CAM style) sees the whole batch: the fixed-rows fast path
    (which runs a fixed input's projections on one row) is not taken. Without hooks it is taken again, and both
    paths' outputs are equal within float rounding (largest difference printed)."""
    model, feats, present, _ = _mmtm_with_fixed_rows()
    fusion, B = model.fusion, present.shape[0]
    fixed_calls = []
    real = AttentionBlock.forward_fixed
    monkeypatch.setattr(AttentionBlock, "forward_fixed", lambda self, *a: fixed_calls.append(1) or real(self, *a))
    with torch.no_grad():
        fast, _ = fusion(feats, present)
    assert len(fixed_calls) == 3                                           # no hooks: the fast path, per query input
    seen: dict[str, list[int]] = {"tokens": [], "nkv": [], "nq": []}
    hooks = [fusion.tokens.proj[0].register_forward_hook(lambda m, i, o: seen["tokens"].append(o.shape[0])),
             fusion.cross_attn[1].nkv.register_forward_pre_hook(lambda m, i: seen["nkv"].append(i[0].shape[0])),
             fusion.cross_attn[0].nq.register_forward_hook(lambda m, i, o: seen["nq"].append(o.shape[0]))]
    try:
        with torch.no_grad():
            hooked, _ = fusion(feats, present)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"tokens": [B], "nkv": [B], "nq": [B]}, seen             # every hook saw the whole batch, once
    assert len(fixed_calls) == 3                                           # the ordinary forward
    diff = float((fast - hooked).abs().max())
    print("mmtm fixed-rows path vs ordinary forward: largest |diff|", diff)
    assert diff <= 1e-6
    with torch.no_grad():
        fusion(feats, present)
    assert len(fixed_calls) == 6                                           # hooks removed: the fast path again


def test_forward_fixed_falls_back_when_a_submodule_is_hooked():
    torch.manual_seed(0)
    blk = AttentionBlock(16, 4, dropout=0.1).eval()
    B = 4
    q = torch.randn(1, 3, 16).expand(B, -1, -1)
    fixed_kv, varied_kv = torch.randn(1, 5, 16).expand(B, -1, -1), torch.randn(B, 2, 16)
    mask = torch.ones(B, 7, dtype=torch.bool)
    parts = [(fixed_kv, True), (varied_kv, False)]
    with torch.no_grad():
        ref = blk(q, torch.cat([fixed_kv, varied_kv], 1), mask)[0]
        fast = blk.forward_fixed(q, True, parts, mask)[0]
        seen = []
        h = blk.nkv.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[0]))
        hooked = blk.forward_fixed(q, True, parts, mask)[0]
        h.remove()
    assert seen == [B]                            # the ordinary forward: one call on the whole key / value batch
    assert torch.equal(hooked, ref) and torch.allclose(fast, ref, atol=1e-6)
    assert fusion_base.has_hooks(blk) is False and not fusion_base.has_hooks(nn.Sequential(blk), skip_self=True)
