"""Registry-driven: every fusion variant x {2, 3, 4} modalities gets the same checks."""
from __future__ import annotations

import itertools

import pytest
import torch

from core.fusion import COMMON_DIAGNOSTICS, FUSIONS
from core.package import prepare_batch
from core.registry import Registry, RegistryError

from tiny import ORDER, make_case, make_model

SUBSETS = {2: ("image", "note"), 3: ("image", "note", "metadata"), 4: ORDER}
VARIANTS = [n for n in FUSIONS.names() if not FUSIONS.get(n).unimodal]


def test_registry_lists_every_seed_variant():
    expected = {"concat", "add", "multiply", "gated", "cross_attention", "co_attention", "bilinear",
                "hierarchical", "mmtm", "irene"}
    assert expected <= set(VARIANTS)


def test_registry_rejects_unknown_and_duplicate_names():
    reg: Registry[type] = Registry("thing")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(RegistryError, match="Unknown thing 'zzz'; choose one of: a"):
        reg.get("zzz")
    with pytest.raises(RegistryError, match="Unknown fusion variant"):
        make_model("no_such_variant")


def _check_diagnostics(variant: str, diag: dict, B: int, M: int) -> None:
    cls = FUSIONS.get(variant)
    assert set(diag) <= cls.documented_keys(), f"undocumented keys {set(diag) - cls.documented_keys()}"
    assert set(COMMON_DIAGNOSTICS) <= set(diag)
    w = diag["modality_weights"]
    assert w.shape == (B, M)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(B), atol=1e-5)
    if "gates" in diag:
        g = diag["gates"]
        hi = float(diag["temperature"]) if "temperature" in diag and variant == "mmtm" else 1.0
        assert g.shape == (B, M) and (g >= 0).all() and (g <= hi + 1e-6).all()
        if variant == "gated":
            assert torch.allclose(diag["gates_per_dim"].sum(1), torch.ones_like(diag["gates_per_dim"][:, 0]), atol=1e-5)
    if "temperature" in diag:
        assert float(diag["temperature"]) > 0
    for key in ("scale_weights", "rank_weights"):
        if key in diag:
            assert torch.isclose(diag[key].sum(), torch.tensor(1.0), atol=1e-5)
    if "level_weights" in diag:
        lw = diag["level_weights"]
        assert lw.shape == (3,) and ((lw > 0) & (lw < 1)).all()
    if "attention" in diag:
        for q, a in diag["attention"].items():
            spans = diag["attention_key_spans"][q]
            assert a.shape[0] == B and a.shape[-1] == max(e for _, e in spans.values())
            assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-4)  # softmax rows
        mass = diag["attention_mass"]
        assert mass.shape == (B, M, M)


@pytest.mark.parametrize("variant,k", list(itertools.product(VARIANTS, (2, 3, 4))))
def test_variant_forward_backward(variant, k):
    mods = SUBSETS[k]
    model = make_model(variant, mods)
    model.train()
    cases = [make_case(i) for i in range(3)]
    inputs, present, _ = prepare_batch(model, cases)
    out = model(inputs, present)
    assert out.logits.shape == (3, 3) and out.log_var.shape == (3,)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.log_var).all()
    (out.logits.logsumexp(-1).mean() + out.log_var.mean()).backward()
    for m in mods:
        grads = [p.grad for p in model.encoders[m].parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reached the {m} encoder"
    model.eval()
    with torch.no_grad():
        _check_diagnostics(variant, model(inputs, present).diagnostics, 3, k)


@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_modalities_are_accepted(variant):
    model = make_model(variant).eval()
    cases = [make_case(0, missing=("note",)), make_case(1, missing=("image", "spectrum")),
             make_case(2, missing=("image", "note", "spectrum")), make_case(3)]
    inputs, present, _ = prepare_batch(model, cases)
    assert present.tolist() == [[1, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 1]]
    with torch.no_grad():
        out = model(inputs, present)
        alone = model(*prepare_batch(model, cases[1:2])[:2])
    assert torch.isfinite(out.logits).all()
    _check_diagnostics(variant, out.diagnostics, 4, 4)
    # a case's prediction does not depend on what else is in the batch (missing rows are filled per row)
    assert torch.allclose(out.logits[1], alone.logits[0], atol=1e-5)


def test_missing_modality_uses_learned_embedding():
    model = make_model("concat").eval()
    with torch.no_grad():
        model.missing["note"].pooled.fill_(3.0)
        inputs, present, _ = prepare_batch(model, [make_case(0, missing=("note",))])
        feats = model.encode(inputs, present)
    assert torch.all(feats[1].pooled == 3.0)
    assert feats[1].token_mask.tolist() == [[True]]


def test_frozen_encoder_gets_no_gradient_but_others_do():
    model = make_model("gated", ("image", "metadata"))
    model.encoders["image"].freeze()
    inputs, present, _ = prepare_batch(model, [make_case(0), make_case(1)])
    model(inputs, present).logits.sum().backward()
    assert all(p.grad is None for p in model.encoders["image"].parameters())
    assert any(p.grad is not None for p in model.encoders["metadata"].parameters())


def test_mmtm_temperature_is_learnable_and_changes_gates():
    model = make_model("mmtm", ("spectrum", "metadata")).eval()
    inputs, present, _ = prepare_batch(model, [make_case(0)])
    with torch.no_grad():
        g1 = model(inputs, present).diagnostics["gates"].clone()
        model.fusion.log_tau.fill_(torch.log(torch.tensor(2.0)))
        d2 = model(inputs, present).diagnostics
    assert model.fusion.log_tau.requires_grad
    assert torch.isclose(d2["temperature"], torch.tensor(2.0))
    assert torch.allclose(d2["gates"], 2 * g1, atol=1e-5)  # seed 000: gate = sigmoid(.) * tau


def test_mmtm_sharpness_mode_polarises_with_low_temperature():
    model = make_model("mmtm", ("spectrum", "metadata"), temperature_mode="sharpness").eval()
    inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(4)])
    spread = []
    for tau in (4.0, 0.05):
        with torch.no_grad():
            model.fusion.log_tau.fill_(float(torch.log(torch.tensor(tau))))
            g = model(inputs, present).diagnostics["gates_per_dim"]
        spread.append(float((g - 0.5).abs().mean()))
    assert spread[1] > spread[0]  # low temperature pushes gates towards 0 / 1


def test_cross_attention_query_and_spans():
    model = make_model("cross_attention", ("image", "note", "metadata")).eval()
    inputs, present, _ = prepare_batch(model, [make_case(0)])
    with torch.no_grad():
        d = model(inputs, present).diagnostics
    assert list(d["attention"]) == ["note"]
    spans = d["attention_key_spans"]["note"]
    assert list(spans) == ["image", "metadata"]
    assert spans["metadata"][1] - spans["metadata"][0] == 3  # one token per schema feature
    assert d["attention_mass"][0, 1, 1] == 0  # the note does not attend to itself


def test_hierarchical_softmax_level_weights_sum_to_one():
    model = make_model("hierarchical", ("image", "note"), level_weighting="softmax").eval()
    inputs, present, _ = prepare_batch(model, [make_case(0)])
    with torch.no_grad():
        lw = model(inputs, present).diagnostics["level_weights"]
    assert torch.isclose(lw.sum(), torch.tensor(1.0))


def test_unimodal_baseline_takes_one_modality():
    model = make_model("unimodal", ("metadata",)).eval()
    inputs, present, _ = prepare_batch(model, [make_case(0), make_case(1)])
    with torch.no_grad():
        out = model(inputs, present)
    assert out.logits.shape == (2, 3) and torch.equal(out.diagnostics["modality_weights"], torch.ones(2, 1))
    with pytest.raises(ValueError, match="exactly one modality"):
        make_model("unimodal", ("metadata", "note"))


def test_architecture_doc_lists_every_variant_and_diagnostic():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    for name in FUSIONS.names():
        assert f"| `{name}` |" in doc, name
        for key in FUSIONS.get(name).DIAGNOSTICS:
            assert f"`{key}`" in doc, (name, key)
