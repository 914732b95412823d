"""Issue 14: fusion mechanisms that are identifiable and learn, and their measured readability."""
from __future__ import annotations

import math

import pytest
import torch

from core.encoders.base import Encoder, ModalityFeatures
from core.fusion import FUSIONS
from core.model import MultimodalClassifier
from core.training.config import TrainerOptions, TrainOptions
from core.training.dataset import SplitTensors

from tiny import make_case, make_model
from core.package import prepare_batch

D, TOK, N_CLASSES = 16, 4, 3
SIGNAL_NOISE = 1.0


class FixedEncoder(Encoder):
    """Stands for a frozen encoder whose outputs are cached: the synthetic features go straight to fusion."""

    def __init__(self, modality: str):
        super().__init__()
        self.modality, self.out_dim, self.level_dims, self.token_dim = modality, D, (D, D, D), D
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


def synthetic_split(n: int, seed: int) -> tuple[SplitTensors, torch.Tensor]:
    """Two modalities; for half the cases only the first carries the label (the other is noise of the
    same size), for the rest only the second. Returns the split and which modality is informative."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(2, N_CLASSES, D, generator=torch.Generator().manual_seed(123))
    protos = protos / protos.norm(dim=-1, keepdim=True) * math.sqrt(D)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    informative = torch.arange(n) % 2
    feats = {}
    for m, name in enumerate(("image", "note")):
        signal = protos[m, y] + SIGNAL_NOISE * torch.randn(n, D, generator=g)
        noise = torch.randn(n, D, generator=g) * math.sqrt(1 + SIGNAL_NOISE ** 2)
        pooled = torch.where((informative == m).unsqueeze(-1), signal, noise)
        tokens = pooled.unsqueeze(1) + 0.3 * torch.randn(n, TOK, D, generator=g)
        feats[name] = ModalityFeatures(pooled, (pooled, pooled, pooled), tokens, torch.ones(n, TOK, dtype=torch.bool))
    ids = [f"s{seed}-{i}" for i in range(n)]
    present = torch.ones(n, 2, dtype=torch.bool)
    split = SplitTensors(ids, ["image", "note"], y, present, feats, {}, {}, {m: torch.arange(n) for m in feats})
    return split, informative


def synthetic_model(variant: str, seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    encoders = {m: FixedEncoder(m) for m in ("image", "note")}
    opts = {**getattr(FUSIONS.get(variant), "TRAINING_DEFAULTS", {}), "dim": 32}
    if variant == "mmtm":
        opts.update(heads=4, bottleneck=32)
    return MultimodalClassifier(encoders, N_CLASSES, variant, opts, fused_dim=32,
                                head_options={"hidden": 32, "blocks": 1, "dropout": 0.1})


def train_synthetic(variant: str, tmp_path, epochs: int = 12):
    from core.training.train import fit

    train, _ = synthetic_split(1200, 0)
    val, _ = synthetic_split(300, 1)
    model = synthetic_model(variant)
    opts = TrainOptions(**{**FUSIONS.get(variant).TRAIN_OPTION_DEFAULTS,
                           "epochs": epochs, "batch_size": 64, "lr": 1e-3, "patience": epochs, "seed": 0})
    model, _ = fit(model, train, val, opts, TrainerOptions(accelerator="cpu", progress_bar=False), tmp_path / variant)
    return model


def gates_on(model: MultimodalClassifier, split: SplitTensors) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        b = split.batch(model, torch.arange(len(split)))
        return model(b["inputs"], b["present"]).diagnostics["modality_weights"]


@pytest.mark.parametrize("variant", ["gated", "mmtm"])
def test_gates_follow_the_informative_modality_per_case(variant, tmp_path):
    """Fails on the training before issue 14 (gates and temperature that could not learn)."""
    model = train_synthetic(variant, tmp_path)
    test, informative = synthetic_split(400, 2)
    w = gates_on(model, test)[:, 0]          # weight of the first modality
    a, b = w[informative == 0], w[informative == 1]
    diff = float(a.mean() - b.mean())
    noise = float(torch.sqrt(a.var() / len(a) + b.var() / len(b)))
    print(variant, "gate difference", diff, "noise", noise)
    assert diff > 0.07 and diff > 8 * noise
    if variant == "mmtm":
        print("log_tau", float(model.fusion.log_tau))
        assert abs(float(model.fusion.log_tau)) > 0.1, "the temperature never left its initial value"


def _tiny(variant, identifiable=True, **opts):
    base = dict(FUSIONS.get(variant).TRAINING_DEFAULTS) if identifiable else {}
    base.update(opts)
    return make_model(variant, ("spectrum", "metadata"), **base).eval()


def _out(model, n=4):
    inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(n)])
    with torch.no_grad():
        return model(inputs, present).logits


@pytest.mark.parametrize("identifiable", [False, True])
def test_level_weight_cannot_be_absorbed_by_the_level_norm(identifiable):
    """Old form: halving a level weight and doubling that level's LayerNorm gain gives the same output,
    so the level weight is not identifiable. Identifiable form: the same change alters the output."""
    model = _tiny("hierarchical", identifiable, level_weighting="sigmoid")
    with torch.no_grad():
        model.fusion.level_logits.copy_(torch.tensor([0.5, -0.3, 0.2]))
        before = _out(model)
        a0 = torch.sigmoid(model.fusion.level_logits[0])
        model.fusion.level_logits[0] = torch.logit(a0 / 2)
        model.fusion.mixers[0].norm.weight.mul_(2)
        model.fusion.mixers[0].norm.bias.mul_(2)
        after = _out(model)
    assert torch.allclose(before, after, atol=1e-5) != identifiable


@pytest.mark.parametrize("identifiable", [False, True])
def test_temperature_cannot_be_absorbed_by_the_interaction_layer(identifiable):
    """sigmoid(z / tau): doubling tau and the last interaction layer is invisible unless z is normalised."""
    model = _tiny("mmtm", identifiable, temperature_mode="sharpness")
    with torch.no_grad():
        before = _out(model)
        model.fusion.log_tau.add_(math.log(2.0))
        model.fusion.interaction[4].weight.mul_(2)
        model.fusion.interaction[4].bias.mul_(2)
        after = _out(model)
    assert torch.allclose(before, after, atol=1e-5) != identifiable


def test_mechanism_scalars_get_gradients_in_the_shipped_form():
    for variant, names in (("mmtm", ("log_tau", "scale_logits")), ("hierarchical", ("level_logits",))):
        model = _tiny(variant).train()
        inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(6)])
        y = torch.tensor([0, 1, 2, 0, 1, 2])
        torch.nn.functional.cross_entropy(model(inputs, present).logits, y).backward()
        for n in names:
            g = getattr(model.fusion, n).grad
            assert g is not None and float(g.abs().sum()) > 0, f"{variant}.{n} gets no gradient"


def test_sharpness_temperature_polarises_identifiable_gates():
    model = _tiny("mmtm")
    inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(4)])
    spread = []
    for tau in (4.0, 0.1):
        with torch.no_grad():
            model.fusion.log_tau.fill_(math.log(tau))
            g = model(inputs, present).diagnostics["gates_per_dim"]
        spread.append(float((g - 0.5).abs().mean()))
    assert spread[1] > 2 * spread[0]  # high tau = smooth (near 0.5), low tau = polarised (seed 000)


def test_old_packages_keep_their_forward():
    """A package saved before issue 14 records no such options: the constructor defaults rebuild it."""
    for variant in ("gated", "hierarchical", "mmtm"):
        old = make_model(variant, ("spectrum", "metadata"))
        assert not getattr(old.fusion, "identifiable", False)
    assert make_model("mmtm", ("spectrum", "metadata")).fusion.temperature_mode == "scale"


def test_param_groups_split_decay_and_mechanisms():
    from core.training.module import param_groups

    model = _tiny("mmtm")
    opts = TrainOptions(lr=1e-3, weight_decay=0.01, mechanism_lr_mult=5.0)
    groups = {g["name"]: g for g in param_groups(model, opts)}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    named = dict(model.named_parameters())
    assert id(named["fusion.log_tau"]) in ids["mechanism"] and id(named["fusion.scale_logits"]) in ids["mechanism"]
    assert groups["mechanism"]["lr"] == pytest.approx(5e-3) and groups["mechanism"]["weight_decay"] == 0
    assert groups["no_decay"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == 0.01
    for n, p in named.items():
        if not p.requires_grad or id(p) in ids["mechanism"]:
            continue
        if p.ndim < 2 or n.startswith("missing.") or "type_emb" in n:
            assert id(p) in ids["no_decay"], n
        else:
            assert id(p) in ids["decay"], n
    all_ids = set().union(*ids.values())
    assert all_ids == {id(p) for p in model.parameters() if p.requires_grad}


# ---- §2: measuring the mechanisms --------------------------------------------------------------------------------

def test_batch_shapley_is_exact_and_sums_to_full_minus_none():
    from core.explain.mechanisms import batch_measure

    model = make_model("gated", ("image", "note", "metadata")).eval()
    cases = [make_case(i) for i in range(5)] + [make_case(5, missing=("note",))]
    inputs, present, _ = prepare_batch(model, cases)
    values, weights, shap, target = batch_measure(model, inputs, present, 1.5)
    with torch.no_grad():
        full = torch.softmax(model(inputs, present).logits / 1.5, -1).gather(1, target[:, None]).squeeze(1)
        none_p = torch.zeros_like(present)
        empty = torch.softmax(model({m: None for m in model.modalities}, none_p).logits / 1.5, -1)
        empty = empty.gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(shap.sum(1), full - empty, atol=1e-5)
    assert float(shap[5, 1].abs()) < 1e-6          # an absent input contributes nothing
    assert set(values) >= {"gates:image", "gates:note", "gates:metadata", "modality_weights:image"}
    assert torch.allclose(weights.sum(1), torch.ones(6), atol=1e-5)


def test_summary_spread_agreement_and_readings():
    from core.explain.mechanisms import THRESHOLDS, readings, summarise
    import numpy as np

    model = make_model("mmtm", ("image", "note", "metadata"))
    rng = np.random.default_rng(0)
    n = 200
    shap = rng.normal(size=(n, 3))
    weights = np.exp(shap) / np.exp(shap).sum(1, keepdims=True)        # ranks exactly like Shapley
    flat = np.full(n, 0.33) + rng.normal(scale=0.001, size=n)
    values = {"modality_weights:image": weights[:, 0], "gates:image": flat}
    evidence = [["lesion", "note", "metadata"][int(i)] for i in shap.argmax(1)]
    rec = summarise(model, values, weights, shap, np.ones((n, 3), bool), evidence)
    a = rec["agreement_with_shapley"]
    assert a["spearman_mean"] == pytest.approx(1.0) and a["top_match"] == 1.0 and a["top_match_chance"] == pytest.approx(1 / 3)
    assert abs(a["spearman_shuffled_cases"]) < 0.2
    e = rec["agreement_with_evidence"]
    assert e["balanced_weight_top_rate"] == 1.0 and e["chance"] == pytest.approx(1 / 3)
    assert rec["movement"]["temperature"]["moved"] == pytest.approx(0.0)
    by = {r["name"]: r for r in readings(rec)}
    assert by["gates:image"]["trust_level"] == "model" and "property of the model" in by["gates:image"]["reading_sentence"]
    assert rec["spread"]["modality_weights:image"] >= THRESHOLDS["spread_varies"]
    assert by["modality_weights:image"]["trust_level"] == "case" and "ρ = 1.00" in by["modality_weights:image"]["reading_sentence"]
    assert by["temperature"]["trust_level"] == "model"   # never left its initial value
    # a prediction's own value is placed in the test split's distribution
    pr = readings(rec, {"diagnostics": {"modality_weights": [0.9, 0.05, 0.05], "gates": [0.33, 0.33, 0.34]}})
    row = next(r for r in pr if r["name"] == "modality_weights:image")
    assert row["value"] == pytest.approx(0.9) and row["percentile"] > 90


def test_readings_are_empty_for_packages_without_a_record():
    from core.explain.mechanisms import readings

    assert readings({}) == [] and readings({"mechanisms": {}}) == []


def test_measure_split_on_a_trained_model(tmp_path):
    """What finish_package stores in metrics.json under "mechanisms", on a trained model's test split."""
    import json

    from core.explain.mechanisms import measure_split

    model = train_synthetic("gated", tmp_path, epochs=2)
    test, informative = synthetic_split(200, 3)
    rec = measure_split(model, test, 1.0, ["lesion" if i == 0 else "note" for i in informative.tolist()])
    json.dumps(rec)   # serialisable as it is stored
    assert rec["n_cases"] == 200 and "modality_weights:image" in rec["spread"]
    assert rec["agreement_with_evidence"]["n_cases"] == 200 and rec["agreement_with_evidence"]["chance"] == 0.5
    assert set(rec["readings"]) == set(rec["spread"]) | set(rec["movement"])


# ---- §3: the Fusion internals page reads the record ------------------------------------------------------------

def test_fusion_internals_page_shows_readings(tmp_path, monkeypatch):
    import json

    from streamlit.testing.v1 import AppTest

    from core import load_package
    from core.explain.mechanisms import batch_measure, summarise
    from pathlib import Path
    from tiny import save_suite

    root = Path(__file__).resolve().parents[1]
    models = tmp_path / "models"
    paths = save_suite(models, ("gated", "mmtm"))
    for p in paths:
        pkg = load_package(p)
        inputs, present, _ = prepare_batch(pkg.model, [make_case(i) for i in range(12)])
        vals, w, sh, _ = batch_measure(pkg.model, inputs, present, pkg.temperature)
        rec = summarise(pkg.model, {k: v.numpy() for k, v in vals.items()}, w.numpy(), sh.numpy(), present.numpy())
        (p / "metrics.json").write_text(json.dumps({"n": 12, "mechanisms": rec}))
    case = make_case(0)
    demo = tmp_path / "cases" / "dermatology" / "demo-1"
    demo.mkdir(parents=True)
    case.image.save(demo / "image.png")
    (demo / "note.txt").write_text(case.note)
    (demo / "metadata.json").write_text(json.dumps({**case.metadata, "label": "malignant"}))
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(tmp_path / "cases"))
    at = AppTest.from_file(str(root / "dashboard" / "Home.py"), default_timeout=120).run()
    at.switch_page("pages/1_Case.py").run()
    at.radio(key="case_mode").set_value("Demo case").run()
    at.button(key="demo_load").click().run()
    at.switch_page("pages/3_Fusion_internals.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value == "Can these values be read as an explanation of this case?" for s in at.subheader)
    texts = [m.value for m in at.markdown]
    assert any("gate of the image" in t and ("property of the model" in t or "varies" in t) for t in texts)
    assert any("percentile of the test split" in t for t in texts)
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    dist = [f for f in figs if "this case against the 12 cases" in ((f["layout"].get("title") or {}).get("text", ""))]
    assert dist and any(sh.get("type") == "line" for sh in dist[0]["layout"]["shapes"])
    # Compare: each column carries the reading of its variant's modality weights (and temperature for mmtm)
    at.switch_page("pages/6_Compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    caps = [c.value for c in at.caption]
    assert sum("modality weight" in c for c in caps) >= 2 and any("temperature" in c for c in caps)


def test_evaluate_mechanisms_cli_matches_the_stored_record(capsys):
    """`evaluate --mechanisms` through the deployed path reproduces the record training stored, on the
    shipped diabetes `hierarchical` (retrained in issue 14 with one gate per input and level)."""
    import json
    from pathlib import Path

    from core.cli import main
    from core.explain.mechanisms import THRESHOLDS

    pkg = Path(__file__).resolve().parents[1] / "assets" / "models" / "diabetes" / "hierarchical"
    stored = json.loads((pkg / "metrics.json").read_text())["mechanisms"]
    assert main(["evaluate", "--model", str(pkg), "--cohort", "diabetes", "--split", "test", "--mechanisms", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)["mechanisms"]
    assert rec["n_cases"] == stored["n_cases"] == 115
    assert rec["movement"]["level_weights"]["moved"] == pytest.approx(stored["movement"]["level_weights"]["moved"], abs=1e-6)
    assert max(stored["spread"].values()) >= THRESHOLDS["spread_varies"]   # its gates vary per patient
    assert rec["agreement_with_shapley"]["spearman_mean"] == pytest.approx(stored["agreement_with_shapley"]["spearman_mean"], abs=0.02)
    for k, v in stored["spread"].items():
        assert rec["spread"][k] == pytest.approx(v, abs=2e-3)



# ---- gates that select an input per case: one weight per input (gate_per="modality") + the balance loss --------------

@pytest.mark.parametrize("variant", ["gated", "hierarchical", "mmtm"])
def test_modality_gates_give_one_weight_per_input(variant):
    opts = {"gate_per": "modality"} | ({"gate_residual": False} if variant == "mmtm" else {})
    model = _tiny(variant, **opts)   # two inputs: the one-sigmoid path (three inputs: the softmax test below)
    inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(5)])
    with torch.no_grad():
        d = model(inputs, present).diagnostics
    if variant == "hierarchical":
        assert all(m.gate.out_features == 1 for m in model.fusion.mixers)   # two inputs: one sigmoid per case
        assert torch.allclose(d["level_gates"].sum(-1), torch.ones(5, 3), atol=1e-5)
    else:
        g = d["gates_per_dim"]
        assert float(g.std(-1).max()) < 1e-6      # the same gate on every dimension of an input
    assert torch.allclose(d["modality_weights"].sum(-1), torch.ones(5), atol=1e-5)
    dim_gated = _tiny("gated", gate_per="dim")
    with torch.no_grad():
        per_dim = dim_gated(*prepare_batch(dim_gated, [make_case(i) for i in range(5)])[:2]).diagnostics["gates_per_dim"]
    assert float(per_dim.std(-1).max()) > 1e-4    # while seed 001's gate differs per dimension


def test_gate_options_are_checked():
    with pytest.raises(ValueError, match="gate_per"):
        _tiny("gated", gate_per="channel")
    with pytest.raises(ValueError, match="gate_per"):
        _tiny("mmtm", gate_per="channel")


def test_gate_balance_loss_allows_choice_per_case_but_not_collapse():
    from core.training.module import gate_balance_loss

    uniform = torch.full((6, 3), 1 / 3)
    per_case_choice = torch.eye(3).repeat(2, 1)          # every case picks one input, each input picked as often
    collapsed = torch.tensor([[1.0, 0.0, 0.0]]).repeat(6, 1)
    assert float(gate_balance_loss(uniform)) == pytest.approx(0, abs=1e-6)
    assert float(gate_balance_loss(per_case_choice)) == pytest.approx(0, abs=1e-6)
    assert float(gate_balance_loss(collapsed)) == pytest.approx(2.0)


def test_selecting_mmtm_gate_can_remove_an_input():
    """gate_residual=False: final = g * v, so a gate at 0 takes that input out of the fusion; seed 000's
    final = g * v + v keeps it whatever the gate says."""
    outs = {}
    for residual in (True, False):
        model = _tiny("mmtm", gate_per="modality", gate_residual=residual)
        inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(4)])
        with torch.no_grad():
            last = model.fusion.interaction[4]
            last.weight.zero_()
            dim = model.fusion.dim
            last.bias.copy_(torch.cat([torch.full((dim,), -1.0), torch.full((dim,), 1.0)]))  # input 0 lowest
            model.fusion.log_tau.fill_(math.log(1e-3))                                         # gate 0 -> 0
            before = model(inputs, present).logits
            b = model.fusion.pooled_proj[0][0].bias
            b.add_(3 * torch.randn_like(b))
            outs[residual] = float((model(inputs, present).logits - before).abs().max())
    assert outs[False] < 1e-5 < outs[True]


def test_variant_training_defaults_reach_the_config_and_yield_to_it():
    from core.training.config import ConfigError, config_from_dict

    base = {"name": "x", "modalities": ["image", "note"], "out": "/tmp/x", "data": {"cohort": "dermatology"}}
    assert config_from_dict({**base, "variant": "gated"}).train.gate_balance_weight == 0.1
    assert config_from_dict({**base, "variant": "concat"}).train.gate_balance_weight == 0.0
    own = config_from_dict({**base, "variant": "gated", "train": {"gate_balance_weight": 0.0}})
    assert own.train.gate_balance_weight == 0.0
    with pytest.raises(ConfigError, match="gate_balance_weight"):
        config_from_dict({**base, "variant": "concat", "train": {"gate_balance_weight": -1}})


def test_balance_penalty_looks_at_every_level():
    """A level that gives one input nothing for every case is penalised even when the levels' weighted sum
    looks balanced (which is what let hierarchical's image weight stay constant)."""
    from core.training.module import balance_penalty

    level_ok = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    drops_first = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    drops_second = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    levels = torch.stack([level_ok, drops_first, drops_second], 1)       # [B, 3 levels, 2 inputs]
    weights = levels.mean(1)                                              # balanced overall
    assert float(balance_penalty({"modality_weights": weights})) == pytest.approx(0, abs=1e-6)
    assert float(balance_penalty({"modality_weights": weights, "level_gates": levels})) == pytest.approx(2 / 3)


@pytest.mark.parametrize("variant", ["gated", "hierarchical"])
def test_three_input_modality_gates_are_a_softmax_per_case(variant):
    """The path every shipped dermatology gated / hierarchical package uses: k = 3 inputs, one softmax weight
    per input and case, the same on every dimension, and different from case to case."""
    model = make_model(variant, ("image", "note", "metadata"), **{**FUSIONS.get(variant).TRAINING_DEFAULTS}).eval()
    mixers = [model.fusion.mixer] if variant == "gated" else list(model.fusion.mixers)
    assert all(m.gate_per == "modality" and m.gate.out_features == 3 for m in mixers)
    inputs, present, _ = prepare_batch(model, [make_case(i) for i in range(6)])
    with torch.no_grad():
        d = model(inputs, present).diagnostics
    w = d["gates_per_dim"] if variant == "gated" else d["level_gates"]
    if variant == "gated":
        assert float(w.std(-1).max()) < 1e-6 and torch.allclose(w.sum(1), torch.ones_like(w.sum(1)), atol=1e-5)
    assert torch.allclose(d["modality_weights"].sum(-1), torch.ones(6), atol=1e-5)
    assert float(d["modality_weights"].std(0).max()) > 1e-4     # not a constant


# ---- mmtm's modality weights through the cross-attention; refitting the mechanism scalars ----------------------

def _mmtm_flow_pair():
    gates_model = _tiny("mmtm")
    flow_model = _tiny("mmtm", weights_from="flow")
    flow_model.load_state_dict(gates_model.state_dict())
    inputs, present, _ = prepare_batch(gates_model, [make_case(i) for i in range(6)])
    return gates_model, flow_model, inputs, present


def test_mmtm_flow_weights_follow_the_gate_through_the_attention():
    """'flow': input i's gate weighs v_i, part of which the cross-attention took from the other inputs; the
    weight of input j is sum_i g_i * (share of v_i from j). With a cross-attention that adds nothing the two
    readings agree; with one that does, 'flow' moves weight to the attended inputs. The prediction and the
    balance loss (on the gates' own shares) do not depend on the reading."""
    from core.training.module import balance_penalty

    gates_model, flow_model, inputs, present = _mmtm_flow_pair()
    with torch.no_grad():
        a, b = gates_model(inputs, present), flow_model(inputs, present)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    shares = a.diagnostics["gates"] / a.diagnostics["gates"].sum(-1, keepdim=True)
    assert torch.allclose(a.diagnostics["modality_weights"], shares, atol=1e-6)      # old packages: the gate shares
    assert torch.allclose(b.diagnostics["modality_weights"].sum(-1), torch.ones(6), atol=1e-5)
    assert float((b.diagnostics["modality_weights"] - shares).abs().max()) > 1e-3
    assert float(balance_penalty(a.diagnostics)) == pytest.approx(float(balance_penalty(b.diagnostics)), abs=1e-6)
    with torch.no_grad():   # a cross-attention block that adds nothing to its queries
        for blk in flow_model.fusion.cross_attn:
            for layer in (blk.attn.out_proj, blk.ff[-1]):
                layer.weight.zero_()
                layer.bias.zero_()
        c = flow_model(inputs, present).diagnostics
    assert torch.allclose(c["modality_weights"], c["gates"] / c["gates"].sum(-1, keepdim=True), atol=1e-5)
    with pytest.raises(ValueError, match="weights_from"):
        _tiny("mmtm", weights_from="attention")


def test_mmtm_flow_weights_can_be_trained_through():
    """A loss on the flow reading (e.g. train.gate_entropy_weight) backpropagates: the attention-mass rows are
    stacked, not written in place into a tensor that autograd keeps for the next row's flow."""
    _, flow_model, inputs, present = _mmtm_flow_pair()
    flow_model.train()
    out = flow_model(inputs, present)
    (out.diagnostics["modality_weights"][:, 0].sum() + out.logits.sum()).backward()
    grads = [p.grad for p in flow_model.fusion.cross_attn.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("variant", ["mmtm", "hierarchical"])
def test_mechanism_refit_moves_only_the_scalars_and_lowers_the_training_loss(variant):
    from core.training.train import mechanism_scalars, refit_mechanism_scalars

    train, _ = synthetic_split(600, 0)
    model = synthetic_model(variant).eval()
    names = set(mechanism_scalars(model))
    assert names == {"mmtm": {"log_tau", "scale_logits"}, "hierarchical": {"level_logits"}}[variant]

    def loss():
        with torch.no_grad():
            b = train.batch(model, torch.arange(len(train)))
            return float(torch.nn.functional.cross_entropy(model(b["inputs"], b["present"]).logits, b["labels"]))

    before, state = loss(), {k: v.clone() for k, v in model.state_dict().items()}
    rec = refit_mechanism_scalars(model, train, TrainOptions(mechanism_refit_epochs=3, batch_size=64, seed=0))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {f"fusion.{n}" for n in names}
    assert loss() < before
    assert set(rec) == names | {"seconds"} and rec[sorted(names)[0]]["before"] != rec[sorted(names)[0]]["after"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if "dummy" in n)   # flags restored


@pytest.mark.parametrize("variant", ["mmtm", "hierarchical"])
def test_mechanism_refit_of_the_gate_layers(variant):
    """train.mechanism_refit_params='mechanism' also fits the layers that make the gates (Fusion.MECHANISM_PARAMETERS,
    at mechanism_refit_layer_lr), nothing else; the record keeps the scalars' values and the layers' relative change."""
    from core.training.config import ConfigError, config_from_dict
    from core.training.train import mechanism_scalars, refit_mechanism_scalars

    train, _ = synthetic_split(600, 0)
    model = synthetic_model(variant).eval()
    names = set(mechanism_scalars(model, "mechanism"))
    assert names > set(mechanism_scalars(model)) and any(n.endswith("weight") for n in names)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rec = refit_mechanism_scalars(model, train, TrainOptions(mechanism_refit_epochs=2, batch_size=64, seed=0,
                                                             mechanism_refit_params="mechanism"))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {f"fusion.{n}" for n in names}
    layer = next(n for n in names if n.endswith("weight"))
    assert rec[layer]["relative_change"] > 0 and "after" not in rec[layer]
    assert all("after" in rec[n] for n in mechanism_scalars(model))
    base = {"name": "x", "variant": variant, "modalities": ["image"], "out": "x", "data": {"cohort": "dermatology"}}
    assert config_from_dict({**base, "train": {"mechanism_refit_params": "mechanism"}}).train.mechanism_refit_params == "mechanism"
    with pytest.raises(ConfigError, match="mechanism_refit_params"):
        config_from_dict({**base, "train": {"mechanism_refit_params": "everything"}})
