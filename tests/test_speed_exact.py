"""Issue 17, third round: each faster path gives the numbers of the way it replaces (to float rounding)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, ShapleyValueSampling

from core import load_package, save_package
from core.compare import compare_variants
from core.encoders import ModalityFeatures, ModalitySpec
from core.explain import ExplainContext, explain_case
from core.explain.attributions import integrated_gradients, note_ig_inputs, shapley_sampling
from core.explain.modality import modality_disagreement
from core.model import MissingEmbedding
from core.uncertainty import mean_pairwise_symmetric_kl
from tiny import LABELS, make_case, make_model


def _shapley_sampling(f, seed: int) -> ShapleyValueSampling:
    """The reference: Captum's ShapleyValueSampling with its permutations drawn from a private generator seeded
    ``seed`` (Captum asks ``permutation_generator(num_features, n_samples)`` for them)."""
    gen = torch.Generator().manual_seed(seed)

    def permutations(num_features: int, num_samples: int):
        for _ in range(num_samples):
            yield torch.randperm(num_features, generator=gen).tolist()

    sampler = ShapleyValueSampling(f)
    sampler.permutation_generator = permutations
    return sampler


def _pkg(tmp_path, variant="mmtm", **kw):
    return load_package(save_package(make_model(variant, **kw), tmp_path / variant, LABELS, name=f"tiny-{variant}"))


def _captum_ig(f, x, base, n_steps=24):
    with torch.enable_grad():
        return IntegratedGradients(f).attribute(x, baselines=base, n_steps=n_steps, method="gausslegendre",
                                                internal_batch_size=n_steps, return_convergence_delta=True)


def test_one_pass_integrated_gradients_equal_captums_on_every_modality(tmp_path):
    pkg = _pkg(tmp_path)
    ctx = ExplainContext(pkg, make_case(0))
    enc = ctx.model.encoders["note"]
    _, _, mask, emb, base_emb = note_ig_inputs(enc, ctx.case.note)
    x_meta = ctx.inputs["metadata"]["values"]
    x_spec = ctx.inputs["spectrum"]["spectrum"]
    cases = [(ctx.target_fn("note", "inputs_embeds", attention_mask=mask), emb, base_emb),
             (ctx.target_fn("metadata", "values"), x_meta,
              torch.tensor([ctx.model.encoders["metadata"].schema.baseline_row()], dtype=x_meta.dtype)),
             (ctx.target_fn("spectrum", "spectrum"), x_spec, ctx.model.encoders["spectrum"].mean.unsqueeze(0))]
    for f, x, base in cases:
        ref, ref_delta = _captum_ig(f, x, base)
        got, delta = integrated_gradients(f, x, base, 24, ctx.target_logit())
        assert got.shape == ref.shape and float(ref.abs().max()) > 0
        assert torch.allclose(got, ref, atol=1e-6, rtol=0)
        assert delta.shape == ref_delta.shape and torch.allclose(delta, ref_delta, atol=2e-6, rtol=0)
    # the context's value of the case is the forward function's value at the input
    with torch.no_grad():
        assert torch.allclose(cases[1][0](x_meta)[0], ctx.target_logit(), atol=1e-6)


def test_explained_parts_keep_captums_numbers(tmp_path):
    pkg = _pkg(tmp_path)
    case = make_case(1)
    ex = explain_case(pkg, case, parts=("note", "table", "spectrum"), shapley_samples=0)
    ctx = ExplainContext(pkg, case)
    x = ctx.inputs["metadata"]["values"]
    ref, delta = _captum_ig(ctx.target_fn("metadata", "values"), x,
                            torch.tensor([ctx.model.encoders["metadata"].schema.baseline_row()], dtype=x.dtype))
    schema = ctx.model.encoders["metadata"].schema
    assert np.allclose([r["integrated_gradients"] for r in ex.table["features"]], [float(ref[0, s].sum()) for s in schema.slices],
                       atol=1e-6)
    assert abs(ex.table["convergence_delta"] - float(delta.abs().max())) < 2e-6
    x = ctx.inputs["spectrum"]["spectrum"]
    ref, _ = _captum_ig(ctx.target_fn("spectrum", "spectrum"), x, ctx.model.encoders["spectrum"].mean.unsqueeze(0))
    assert np.allclose(ex.spectrum["attributions"], ref[0].numpy(), atol=1e-6)
    enc = ctx.model.encoders["note"]
    _, _, mask, emb, base_emb = note_ig_inputs(enc, case.note)
    ref, _ = _captum_ig(ctx.target_fn("note", "inputs_embeds", attention_mask=mask), emb, base_emb)
    assert np.allclose(ex.note["token_scores"], ref.sum(-1)[0].numpy(), atol=1e-6)


def test_note_ig_lean_encoder_and_baseline_apart_keep_captums_numbers(tmp_path, monkeypatch):
    """Session 8: with a frozen text encoder (every shipped package) the note's IG runs the lean BERT forward
    (oneDNN linears) and the baseline note (default [UNK]) through the encoder apart, without a graph: token scores and
    convergence delta equal Captum's IG through transformers' own forward (three passes, baseline in the batch)."""
    import core.encoders.text as text

    pkg = _pkg(tmp_path)
    enc = pkg.model.encoders["note"].freeze()
    if text._LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    assert text.lean_bert_supported(enc.model)
    for i in (1, 2):
        case = make_case(i)
        ex = explain_case(pkg, case, parts=("note",))
        ctx = ExplainContext(pkg, case)
        _, _, mask, emb, base_emb = note_ig_inputs(enc, case.note)
        with monkeypatch.context() as m:                       # the reference: transformers' forward, Captum
            m.setattr(text, "lean_bert_supported", lambda model: False)
            ref, ref_delta = _captum_ig(ctx.target_fn("note", "inputs_embeds", attention_mask=mask), emb, base_emb)
        scores = ref.sum(-1)[0].numpy()
        assert np.abs(scores).max() > 0 and ex.note["n_tokens"] == len(scores)
        assert np.allclose(ex.note["token_scores"], scores, atol=1e-5 * np.abs(scores).max() + 1e-7)
        assert abs(ex.note["convergence_delta"] - float(ref_delta.abs().max())) < 1e-5


def test_image_ig_fast_tail_keeps_the_shipped_cnns_numbers(monkeypatch):
    """Session 8: on the shipped dermatology package (EfficientNet-Lite0, frozen) middle-stage IG runs the CNN's tail
    with the batch norms folded and the 1x1 convolutions as oneDNN products (channels-last): the tail's maps equal
    ``stage_split``'s, and the IG map / convergence delta / output difference equal those through the original tail
    (a handful of ReLU6 units sit within float rounding of a kink, so gradients there may flip: map within 2e-4 of
    its [0, 1] scale). A hook on the tail, training mode or a trainable tail keeps the original."""
    from pathlib import Path

    from core.bench import demo_cases
    from core.explain import image_ig as ig
    from core.explain.engine import _context

    root = Path(__file__).resolve().parents[1]
    pkg = load_package(root / "assets" / "models" / "dermatology" / "mmtm")
    enc = pkg.model.encoders["image"]
    fast = ig.fast_tail(enc)
    if fast is None:
        pytest.skip("this torch build has no oneDNN linear")
    assert ig.fast_tail(enc) is fast                            # kept per encoder
    _, tail = enc.stage_split()
    for case in demo_cases("dermatology", 3)[::2]:
        ctx = _context(pkg, case, None, None, True)
        _, a, a0, _ = ig._ig_function(ctx)
        acts = torch.cat([a0 + t * (a - a0) for t in (0.1, 0.5, 0.9)])
        with torch.no_grad():
            ref = tail(acts)
            assert torch.allclose(fast(acts), ref, atol=1e-4, rtol=1e-5) and float(ref.abs().max()) > 1
        ig._BLACK.clear()                       # each path computes its own black-image row (else both share one)
        new = ig.middle_stage_ig(ctx)
        ig._BLACK.clear()
        with monkeypatch.context() as m:
            m.setattr(ig, "fast_tail", lambda e: None)
            old = ig.middle_stage_ig(ctx)
        assert float(old["map"].std()) > 0.01
        # a few ReLU6 units sit within rounding of a kink: 2e-4 with one thread, 3.5e-4 seen with two (map scale [0, 1])
        assert float(np.abs(new["map"] - old["map"]).max()) < 1e-3
        assert abs(new["convergence_delta"] - old["convergence_delta"]) < 1e-3 * max(1.0, old["convergence_delta"])
        assert abs(new["output_difference"] - old["output_difference"]) < 1e-4
    handle = enc.backbone._blocks[-1].register_forward_hook(lambda *a: None)
    assert ig.fast_tail(enc) is None                            # a hooked tail runs as it is
    handle.remove()
    enc.backbone._conv_head.train()
    assert ig.fast_tail(enc) is None
    enc.backbone._conv_head.eval()
    assert ig.fast_tail(enc) is fast
    with torch.no_grad():                                       # weights edited through .data keep their _version:
        w = enc.backbone._conv_head.weight
        w.data = w.data * 2                                     # the storage changed, so the cached tail is rebuilt
    assert ig.fast_tail(enc) is not fast
    import copy

    assert ig.fast_tail(copy.deepcopy(enc).to("meta")) is None   # off the CPU: the original tail


def test_batched_shapley_sampling_equals_captums_permutation_by_permutation(tmp_path):
    pkg = _pkg(tmp_path)
    for i in (0, 2):
        ctx = ExplainContext(pkg, make_case(i))
        x = ctx.inputs["metadata"]["values"]
        schema = ctx.model.encoders["metadata"].schema
        base = torch.tensor([schema.baseline_row()], dtype=x.dtype)
        group = torch.zeros_like(x, dtype=torch.long)
        for k, s in enumerate(schema.slices):
            group[0, s] = k
        f = ctx.target_fn("metadata", "values")
        with torch.no_grad():
            ref = _shapley_sampling(f, 3).attribute(x, baselines=base, feature_mask=group, n_samples=12, perturbations_per_eval=2)
        got = shapley_sampling(f, x, base, group, 12, 3, chunk=7)
        assert got.shape == ref.shape and float(ref.abs().max()) > 0
        assert torch.allclose(got, ref, atol=1e-6, rtol=0)
        ex = explain_case(pkg, make_case(i), parts=("table",), shapley_samples=12)
        assert np.allclose([r["shapley"] for r in ex.table["features"]],
                           [float(_shapley_sampling(f, 0).attribute(x, baselines=base, feature_mask=group, n_samples=12,
                                                                    perturbations_per_eval=16)[0, s][0]) for s in schema.slices],
                           atol=1e-6)


def _old_fill(me: MissingEmbedding, feats: ModalityFeatures, present: torch.Tensor) -> ModalityFeatures:
    """MissingEmbedding.fill as it was: zeros, index_copy, where."""
    B = present.shape[0]
    idx = present.nonzero().squeeze(1)
    absent = (~present).unsqueeze(-1)

    def scatter(x, miss):
        base = torch.zeros(B, *x.shape[1:], dtype=x.dtype).index_copy(0, idx, x)
        return torch.where(absent.view(B, *([1] * (x.dim() - 1))), miss.expand(B, *miss.shape), base)

    n = feats.tokens.shape[1]
    tok_miss = torch.cat([me.token.unsqueeze(0), torch.zeros(n - 1, me.token.shape[0])], 0)
    mask_miss = torch.zeros(n, dtype=torch.bool)
    mask_miss[0] = True
    mask = torch.where(absent, mask_miss.expand(B, n), torch.zeros(B, n, dtype=torch.bool).index_copy(0, idx, feats.token_mask))
    return ModalityFeatures(scatter(feats.pooled, me.pooled), tuple(scatter(x, lv) for x, lv in zip(feats.levels, me.levels)),
                            scatter(feats.tokens, tok_miss), mask)


def test_missing_embedding_fill_is_the_old_scatter():
    me = MissingEmbedding(ModalitySpec("x", 6, (3, 4, 5), 7))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in me.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    for present in ([True, False, True, True], [True], [False, True, False], [True, True]):
        pr = torch.tensor(present)
        r = int(pr.sum())
        f = ModalityFeatures(torch.randn(r, 6, generator=g), tuple(torch.randn(r, d, generator=g) for d in (3, 4, 5)),
                             torch.randn(r, 5, 7, generator=g), torch.rand(r, 5, generator=g) > 0.3)
        got, ref = me.fill(f, pr), _old_fill(me, f, pr)
        assert torch.equal(got.pooled, ref.pooled) and torch.equal(got.tokens, ref.tokens)
        assert torch.equal(got.token_mask, ref.token_mask)
        assert all(torch.equal(a, b) for a, b in zip(got.levels, ref.levels))
        assert not bool(pr.all()) or torch.equal(got.pooled, f.pooled)


def test_pairwise_kl_in_one_expression_equals_the_pair_loop():
    g = torch.Generator().manual_seed(1)
    for k in (2, 3, 4):
        logp = torch.log_softmax(3 * torch.randn(k, 5, generator=g), -1)
        p = logp.exp()
        pairs = [((p[a] * (logp[a] - logp[b])).sum() + (p[b] * (logp[b] - logp[a])).sum()) / 2
                 for a in range(k) for b in range(a + 1, k)]
        ref = torch.stack(pairs).mean()
        assert float(ref) > 0 and torch.allclose(mean_pairwise_symmetric_kl(logp), ref, atol=1e-6, rtol=0)


def test_single_modality_rows_for_mixed_presence_match_the_two_pass_way(tmp_path):
    pkg = _pkg(tmp_path)
    cases = [make_case(0, missing=("note",)), make_case(1, missing=("image", "note", "metadata")), make_case(2),
             make_case(3, missing=("spectrum", "image"))]
    for batch in (cases, cases[:1], cases[2:]):
        det, mc, present, _ = pkg.run(batch, 4)
        with torch.inference_mode():
            inputs, present2, _ = pkg.prepare(batch)
            plain = pkg.model(inputs, present2)
            two_pass = modality_disagreement(pkg, plain, present2)
        assert torch.equal(present, present2)
        assert torch.allclose(det.logits, plain.logits, atol=1e-5)
        got = det.diagnostics["modality_disagreement"]
        assert torch.equal(torch.isnan(got), torch.isnan(two_pass))
        ok = ~torch.isnan(got)
        assert torch.allclose(got[ok], two_pass[ok], atol=1e-6) and bool(ok.any())
        assert mc.logits.shape == (4, len(batch), len(LABELS))


def test_comparison_prepares_only_the_modality_it_encodes(tmp_path, monkeypatch):
    from test_dual_expert import dual_model, masked_case

    plain_model, dual = make_model("gated", modalities=("image", "note", "metadata")), dual_model()
    dual.encoders["note"].load_state_dict(plain_model.encoders["note"].state_dict())
    shared = {"encoders.note.": "../_shared/note_encoder.safetensors"}
    pkgs = []
    for name, model in (("d", dual), ("g", plain_model)):
        model.encoders["note"].freeze()
        pkgs.append(load_package(save_package(model, tmp_path / "suite" / name, LABELS, name=name, shared=shared)))
    assert pkgs[0].encoder_fingerprint("note") == pkgs[1].encoder_fingerprint("note") is not None
    case = masked_case(1)
    enc = pkgs[0].model.encoders["image"]
    cuts = []
    real = type(enc).prepare
    monkeypatch.setattr(type(enc), "prepare", lambda self, values: cuts.append(1) or real(self, values))
    calls = []
    for p in pkgs:
        orig = p.prepare
        monkeypatch.setattr(p, "prepare", lambda cases, skip=frozenset(), orig=orig: calls.append(set(skip)) or orig(cases, skip))
    cmp = compare_variants(pkgs, case, explain=False)
    assert calls == [{"image", "metadata"}]    # the shared note encoder's input only, prepared once
    assert len(cuts) == 1                      # the dual expert's image is cut by its own prediction only
    assert cmp.encoder_passes["note"] == 1
    for col in cmp.columns:
        alone = col.package.predict(case)
        assert np.allclose(col.prediction.calibrated, alone.calibrated, atol=1e-6)
        assert np.allclose(col.prediction.mc_samples, alone.mc_samples, atol=1e-6)


def test_report_sections_are_built_once_for_pdf_and_html(tmp_path, monkeypatch):
    from pypdf import PdfReader

    import core.report.render as render
    from core.report import make_report

    pkg = _pkg(tmp_path, "gated")
    case = make_case(0)
    ex = explain_case(pkg, case, parts=("cam", "lesion_context", "note", "table", "spectrum", "modality"), shapley_samples=0)
    built = []
    real = render.build_sections
    monkeypatch.setattr(render, "build_sections", lambda rep: built.append(1) or real(rep))
    rep = make_report(pkg, case, ex)
    pdf, html = rep.pdf(), rep.html()
    assert len(built) == 1
    assert "Plotly.newPlot" in html and "data:image/png;base64" in html
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert rep.data["summary"]["label"] in text and len(PdfReader(io.BytesIO(pdf)).pages[0].images) >= 1


def test_one_pass_middle_stage_ig_equals_captums_with_its_delta_passes(tmp_path):
    from test_dual_expert import dual_model, masked_case

    from core.explain.image_ig import _ig_function, middle_stage_ig

    dual = load_package(save_package(dual_model(), tmp_path / "dual", LABELS, name="dual"))
    for pkg, case in ((_pkg(tmp_path, "gated"), make_case(0)), (_pkg(tmp_path), make_case(2)), (dual, masked_case(1))):
        ctx = ExplainContext(pkg, case)
        f, a, a0, _ = _ig_function(ctx)
        ref, ref_delta = _captum_ig(f, a, a0, n_steps=8)
        info = middle_stage_ig(ctx)                                # the one-pass default
        old = middle_stage_ig(ctx, internal_batch_size=4)          # Captum's path, two step batches + the delta passes
        assert float(ref.abs().max()) > 0
        m = ref[0].abs().sum(0)[None, None]
        m = torch.nn.functional.interpolate(m, size=info["map"].shape, mode="bilinear", align_corners=False)[0, 0]
        assert np.allclose(info["map"], (m / m.max()).numpy(), atol=1e-6)
        assert abs(info["convergence_delta"] - float(ref_delta.abs().max())) < 2e-6
        assert abs(info["output_difference"] - old["output_difference"]) < 2e-6
        assert np.allclose(info["map"], old["map"], atol=1e-5)


def test_stacked_heads_and_one_preparation_give_each_package_alone(tmp_path, monkeypatch):
    from core.package import stacked
    from core.package.predictor import input_key

    def own_metadata(model, seed):  # tiny models share their first-built encoders' weights and untrained (zero)
        g = torch.Generator().manual_seed(seed)   # missing-modality stand-ins: make each package's its own
        with torch.no_grad():
            for q in [*model.encoders["metadata"].parameters(), *model.missing.parameters()]:
                q.add_(0.3 * torch.randn(q.shape, generator=g))
        return model

    models = [(v, make_model(v)) for v in ("concat", "gated", "add", "mmtm", "irene")]
    models += [("two", make_model("gated", modalities=("image", "metadata"))), ("uni", make_model("unimodal", modalities=("metadata",))),
               ("kan", MultimodalClassifier_with_head("kan"))]     # a kan head takes the package's own path
    pkgs = [load_package(save_package(own_metadata(m, i), tmp_path / name, LABELS, name=name)) for i, (name, m) in enumerate(models)]
    pkgs.append(load_package(pkgs[1].path, int8=True))
    for i, p in enumerate(pkgs):           # each its own calibration temperature (the posteriors are computed together)
        p.temperature = 0.6 + 0.25 * i
    groups = []
    real = stacked.stacked_residual_heads
    monkeypatch.setattr(stacked, "stacked_residual_heads", lambda heads, *a: groups.append(len(heads)) or real(heads, *a))
    tables = []
    real_tab = stacked.stacked_tabular
    monkeypatch.setattr(stacked, "stacked_tabular", lambda encs, *a: tables.append(len(encs)) or real_tab(encs, *a))
    fills = []
    real_fill = stacked._stacked_fill
    monkeypatch.setattr(stacked, "_stacked_fill", lambda ms, raws, col: fills.append(len(ms)) or real_fill(ms, raws, col))
    prepared = []
    for p in pkgs:
        enc = p.model.encoders["metadata"]
        orig = enc.prepare
        monkeypatch.setattr(enc, "prepare", lambda v, orig=orig: prepared.append(1) or orig(v))
    for case in (make_case(0), make_case(1, missing=("note",)), make_case(2, missing=("image", "note", "spectrum"))):
        groups.clear()
        prepared.clear()
        tables.clear()
        fills.clear()
        cmp = compare_variants(pkgs, case, explain=False)
        assert sorted(groups, reverse=True)[0] >= 4                  # concat, gated, add, mmtm, irene share a head shape
        assert tables == [8]                                          # every metadata encoder but the int8 copy's
        assert fills and max(fills) >= 5                              # the five four-modality packages filled together
        assert len(prepared) == len({input_key(p.model.encoders["metadata"]) for p in pkgs})
        for col in cmp.columns:
            alone = col.package.predict(case)
            got = col.prediction
            assert got.label == alone.label and got.refer == alone.refer
            for a, b in ((got.calibrated, alone.calibrated), (got.probabilities, alone.probabilities),
                         (got.mc_samples, alone.mc_samples), (got.mc_mean, alone.mc_mean)):
                assert np.allclose(a, b, atol=1e-6, rtol=0)
            for k, v in alone.uncertainty.items():
                assert abs(got.uncertainty[k] - v) < 1e-6, k
            da, db = got.diagnostics.get("modality_disagreement"), alone.diagnostics.get("modality_disagreement")
            assert (da is None) == (db is None)
            if da is not None:
                assert torch.isnan(da) == torch.isnan(db) and (bool(torch.isnan(db)) or abs(float(da) - float(db)) < 1e-6)
        assert cmp.columns[0].prediction.mc_samples.std(0).max() > 0   # MC dropout really sampled


def MultimodalClassifier_with_head(kind: str):
    from core.model import MultimodalClassifier

    m = make_model("gated")
    return MultimodalClassifier(dict(m.encoders), len(LABELS), "gated", {"dim": 32}, fused_dim=32,
                                head_options={"type": kind, "hidden": 8, "dropout": 0.2}).eval()


def test_stacked_missing_modality_fill_is_each_packages_own(tmp_path, monkeypatch):
    from core.package.predictor import select_rows
    from core.package.stacked import stacked_encode

    pkgs = []
    for i, v in enumerate(("concat", "gated", "add", "mmtm")):
        model = make_model(v)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for q in model.missing.parameters():   # untrained stand-ins are zeros: give each package its own
                q.add_(torch.randn(q.shape, generator=g))
        pkgs.append(load_package(save_package(model, tmp_path / v, LABELS, name=v)))
    for case in (make_case(0), make_case(1, missing=("note", "spectrum")), make_case(2, missing=("image", "note", "metadata"))):
        items = []
        with torch.inference_mode():
            for p in pkgs:
                inputs, present, _ = p.prepare([case])
                items.append((p.model, select_rows(p.model, p.modalities, inputs, present)))
            own = []
            real = MissingEmbedding.fill
            monkeypatch.setattr(MissingEmbedding, "fill", lambda self, *a, own=own, real=real: own.append(1) or real(self, *a))
            got = stacked_encode(items)
            assert not own                           # every modality took the stacked copies, none its own module
            monkeypatch.setattr(MissingEmbedding, "fill", real)
            ref = [model.encode(rows.joined, rows.present) for model, rows in items]
        for a, b in zip(got, ref):
            for fa, fb in zip(a, b):
                assert torch.equal(fa.pooled, fb.pooled) and torch.equal(fa.tokens, fb.tokens)
                assert torch.equal(fa.token_mask, fb.token_mask) and all(torch.equal(x, y) for x, y in zip(fa.levels, fb.levels))
                assert (fa.extras is None) == (fb.extras is None)
        assert not torch.equal(got[0][1].tokens, got[1][1].tokens)      # the packages' own stand-ins, not one's


def test_stacked_weights_follow_an_in_place_change():
    from core.heads import ResidualHead
    from core.package.stacked import _cached_stack, _head_weights

    heads = [ResidualHead(8, 3, hidden=4, blocks=1) for _ in range(2)]
    first = _cached_stack(heads, _head_weights)
    assert _cached_stack(heads, _head_weights) is first                  # kept while the weights are unchanged
    with torch.no_grad():
        heads[1].blocks[0].l2.bias.add_(1.0)
    again = _cached_stack(heads, _head_weights)
    assert again is not first and torch.equal(again["0.l2.b"][1, 0], heads[1].blocks[0].l2.bias)


def test_explanation_runs_the_cnn_once_and_keeps_every_image_part(tmp_path, monkeypatch):
    """Session 7: ``explain_case`` encodes the image as its stage maps and keeps them for middle-stage IG and the
    last-stage CAMs (stability included), which then skip the CNN's front: the same maps as the old paths
    (each part running the image encoder again), and the CNN's stages run once instead of once per part."""
    from core.encoders.image import ImageEncoder
    from core.explain import engine
    from core.explain import image_ig as ig

    pkg = _pkg(tmp_path)
    calls = []
    stages = ImageEncoder._stages
    monkeypatch.setattr(ImageEncoder, "_stages", lambda self, x: calls.append(len(x)) or stages(self, x))
    split = ImageEncoder.stage_split

    def counted_split(self):                                   # middle-stage IG's run of the CNN's front
        head, tail = split(self)
        return (lambda x: calls.append(len(x)) or head(x)), tail
    monkeypatch.setattr(ImageEncoder, "stage_split", counted_split)
    explain_case(pkg, make_case(0), parts=("image_ig",))       # the black image's front (kept), outside the counts
    assert ig._BLACK.get(pkg.model.encoders["image"])
    parts = ("cam", "stability", "image_ig", "modality")
    drawn = set()
    for layer, methods in (("last stage", ("gradcam", "gradcam++", "eigencam")), ("last × early stage", ("layercam",))):
        for case in (make_case(0), make_case(3)):
            calls.clear()
            new = explain_case(pkg, case, parts=parts, cam_methods=methods, cam_layer=layer, stability_samples=4)
            n_new = len(calls)
            with monkeypatch.context() as m:                     # the old paths: no stage maps kept
                m.setattr(engine, "encode_image_stages", lambda *a: None)
                calls.clear()
                old = explain_case(pkg, case, parts=parts, cam_methods=methods, cam_layer=layer, stability_samples=4)
            n_old = len(calls)
            assert set(new.cams) == set(old.cams) == set(methods)
            for k in methods:
                assert np.allclose(new.cams[k], old.cams[k], atol=1e-5), k
                drawn |= {k} if float(old.cams[k].max()) > 0.5 else set()
            for k in ("mean", "std"):
                assert np.allclose(new.stability[k], old.stability[k], atol=1e-5)
            ig_new, ig_old = new.image_attributions["integrated_gradients"], old.image_attributions["integrated_gradients"]
            assert np.allclose(ig_new, ig_old, atol=1e-6)
            assert abs(new.image_attribution_info["integrated_gradients"]["convergence_delta"]
                       - old.image_attribution_info["integrated_gradients"]["convergence_delta"]) < 1e-6
            assert np.allclose(new.prediction.calibrated, old.prediction.calibrated, atol=1e-7)
            # old: the context, each CAM and stability ran the CNN; new: the context only (the product's
            # early-stage LayerCAM, in the map and in stability, still runs the encoder up to its early stage)
            assert (n_old, n_new) == ((6, 1) if layer == "last stage" else (6, 3))
    assert len(drawn) >= 3                                         # maps that are not all zero were compared


def test_lesion_context_takes_the_image_as_it_is_from_the_case(tmp_path, monkeypatch):
    """Session 7: the lesion / context check's "full" confidence (the image unaltered) is the case's own calibrated
    probability, so only the three altered images run through the CNN: the same four numbers as running all four."""
    from core.encoders.image import ImageEncoder
    from core.explain import parts as P

    pkg = _pkg(tmp_path)
    rows = []
    stages = ImageEncoder._stages
    monkeypatch.setattr(ImageEncoder, "_stages", lambda self, x: rows.append(len(x)) or stages(self, x))
    for i in (0, 2):
        ctx = ExplainContext(pkg, make_case(i))
        cams = {"gradcam": np.random.default_rng(i).random((32, 32)).astype(np.float32)}
        rows.clear()
        new = P.lesion_context_report(ctx, cams)
        assert rows == [3]
        with monkeypatch.context() as m:
            m.setattr(P, "plain_image_encoder", lambda enc: False)
            rows.clear()
            old = P.lesion_context_report(ctx, cams)
            assert rows == [4]
        assert list(new["confidence"]) == list(old["confidence"]) == ["full", "lesion_only", "context_only", "neither"]
        for k in old["confidence"]:
            assert abs(new["confidence"][k] - old["confidence"][k]) < 1e-6, k
        assert len(set(round(v, 4) for v in old["confidence"].values())) > 1   # the four images do differ


def test_comparison_explanations_keep_the_shared_image_stage_maps(tmp_path, monkeypatch):
    """Session 7: a comparison encodes a shared plain image encoder as its stage maps and hands them to each
    column's explanation: the columns' heatmaps and lesion / context numbers equal each package explained alone,
    and the CNN runs once for all columns (plus the lesion check's three altered images per column)."""
    from core.encoders.image import ImageEncoder

    models = {v: make_model(v, modalities=("image", "note", "metadata"), seed=i) for i, v in enumerate(("gated", "mmtm"))}
    models["mmtm"].encoders["image"].load_state_dict(models["gated"].encoders["image"].state_dict())
    pkgs = []
    for name, model in models.items():
        model.encoders["image"].freeze()
        pkgs.append(load_package(save_package(model, tmp_path / "suite" / name, LABELS, name=name,
                                              shared={"encoders.image.": "../_shared/image_encoder.safetensors"})))
    assert pkgs[0].encoder_fingerprint("image") == pkgs[1].encoder_fingerprint("image") is not None
    case = make_case(2)
    rows = []
    stages = ImageEncoder._stages
    monkeypatch.setattr(ImageEncoder, "_stages", lambda self, x: rows.append(len(x)) or stages(self, x))
    opts = {"parts": ("cam", "lesion_context", "modality"), "cam_methods": ("gradcam", "gradcam++"), "cam_layer": "last stage"}
    cmp = compare_variants(pkgs, case, **opts)
    assert rows == [1, 3, 3]
    for col in cmp.columns:
        rows.clear()
        alone = explain_case(col.package, case, target=cmp.target, **opts)
        assert rows == [1, 3]
        for k in ("gradcam", "gradcam++"):
            assert np.allclose(col.explanation.cams[k], alone.cams[k], atol=1e-5)
        for k, v in alone.lesion_context["confidence"].items():
            assert abs(col.explanation.lesion_context["confidence"][k] - v) < 1e-6
    assert not np.allclose(cmp.columns[0].explanation.cams["gradcam++"], cmp.columns[1].explanation.cams["gradcam++"],
                           atol=1e-3)                                     # each column's own fusion and head
