"""The head registry: every head through the same checks (shapes, MC dropout without train mode,
reproducible samples, save/load, learning a toy task), plus each head's own promises."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core import load_package, save_package
from core.heads import HEADS, KANLayer, MoEHead, build_head
from tiny import LABELS, make_case, make_model

NAMES = HEADS.names()


@pytest.mark.parametrize("name", NAMES)
def test_head_contract(name):
    torch.manual_seed(0)
    head = build_head(16, 3, {"type": name, "hidden": 12})
    head.eval()
    x = torch.randn(5, 16)
    logits, log_var = head(x)
    assert logits.shape == (5, 3) and log_var.shape == (5,)
    a = head(x, 7, torch.Generator().manual_seed(1))
    b = head(x, 7, torch.Generator().manual_seed(1))
    assert a[0].shape == (7, 5, 3) and a[1].shape == (7, 5)
    assert torch.equal(a[0], b[0])                                   # reproducible MC samples
    assert not torch.allclose(a[0][0], a[0][1])                      # dropout really varies the samples
    assert not head.training                                         # MC never flips the shared module
    assert torch.equal(head(x)[0], logits)                           # deterministic without samples
    assert getattr(head, "SUMMARY", "") and isinstance(getattr(head, "DIAGNOSTICS", None), dict)


@pytest.mark.parametrize("name", NAMES)
def test_joint_mc_pass_of_every_head_equals_the_two_calls(name):
    """``forward_with_samples`` (one pass, what predict and a comparison run) gives the deterministic call's
    numbers and the MC call's samples, dropout masks included (issue 17)."""
    torch.manual_seed(0)
    head = build_head(16, 3, {"type": name, "hidden": 12})
    head.eval()
    for p in head.parameters():                     # weights away from init, so every path matters
        p.data.add_(torch.randn_like(p) * 0.3)
    fused = torch.randn(4, 16)
    with torch.inference_mode():
        det = head(fused)
        mc = head(fused[:2], 9, torch.Generator().manual_seed(5))
        got = head.forward_with_samples(fused, fused[:2], 9, torch.Generator().manual_seed(5))
        other = head.forward_with_samples(fused, fused[:2], 9, torch.Generator().manual_seed(6))
    for a, b in zip((*det, *mc), got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(got[2], other[2])      # the samples follow the generator (dropout is drawn)


@pytest.mark.parametrize("name", NAMES)
def test_head_learns_a_toy_task(name):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    head = build_head(8, 3, {"type": name, "hidden": 16, "dropout": 0.0})
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(head(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert (head(x)[0].argmax(-1) == y).float().mean() > 0.85


@pytest.mark.parametrize("name", NAMES)
def test_model_with_each_head_saves_loads_and_reports_diagnostics(tmp_path, name):
    model = make_model("gated", modalities=("image", "note", "metadata"))
    from core import MultimodalClassifier

    model = MultimodalClassifier(dict(model.encoders), 3, "gated", {"dim": 32}, 32, {"type": name, "hidden": 16})
    path = save_package(model, tmp_path / name, LABELS, name=f"tiny-{name}")
    pkg = load_package(path)
    case = make_case(0)
    p1, p2 = model.eval(), pkg.model
    inputs, present, _ = pkg.prepare([case])
    with torch.no_grad():
        assert torch.allclose(p1(inputs, present).logits, p2(inputs, present).logits, atol=1e-6)
    pred = pkg.predict(case)
    assert pkg.config["architecture"]["head"]["type"] == name
    for key in HEADS.get(name).DIAGNOSTICS:
        assert key in pred.diagnostics
    assert np.isclose(pred.calibrated.sum(), 1.0, atol=1e-5)


def test_moe_routes_to_exactly_top_two_and_the_balance_loss_measures_balance():
    torch.manual_seed(0)
    head = MoEHead(16, 3, hidden=8, experts=4, top_k=2)
    w, probs = head.routing(torch.randn(32, 16))
    assert ((w > 0).sum(-1) == 2).all() and torch.allclose(w.sum(-1), torch.ones(32))
    top2 = probs.topk(2, -1).indices
    assert torch.equal((w > 0), torch.zeros_like(w, dtype=torch.bool).scatter(-1, top2, True))
    head.train()
    with torch.no_grad():
        head.router.weight.zero_()
        head.router.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
    head(torch.randn(64, 16))
    assert head.last_balance_loss.item() == pytest.approx(1.0, abs=1e-5)   # uniform router: perfectly balanced
    with torch.no_grad():
        head.router.bias.copy_(torch.tensor([10.0, 9.0, -10.0, -10.0]))
    head(torch.randn(64, 16))
    assert head.last_balance_loss.item() > 1.5                              # two experts take everything
    with pytest.raises(ValueError, match="top_k"):
        MoEHead(8, 3, experts=2, top_k=3)


def test_kan_spline_basis_is_a_partition_of_unity_inside_the_grid():
    layer = KANLayer(3, 2, grid=6, bound=2.0)
    x = torch.linspace(-1.99, 1.99, 50).unsqueeze(1).expand(50, 3)
    b = layer.basis(x)
    assert b.shape == (50, 3, 9) and (b >= 0).all()
    assert torch.allclose(b.sum(-1), torch.ones(50, 3), atol=1e-5)


def test_modality_disagreement_is_reported_per_case():
    from core import load_package  # noqa: F401  (the package API computes it)
    from core.package import Package

    model = make_model("gated", modalities=("image", "note", "metadata")).eval()
    pkg = Package(__import__("pathlib").Path("."), {"labels": LABELS, "name": "t", "variant": "gated",
                                                   "weights": {"sha256": "0" * 64}}, model)
    both = pkg.predict(make_case(0))
    d = float(both.diagnostics["modality_disagreement"])
    assert np.isfinite(d) and d >= 0
    alone = pkg.predict(make_case(0, missing=("image", "note")))
    assert np.isnan(float(alone.diagnostics["modality_disagreement"]))


def test_test_time_augmentation_averages_four_views_in_probability_space(tmp_path):
    import json
    from dataclasses import replace

    from PIL import Image as PILImage

    from core.package import Package

    def package(input_size, folder):
        model = make_model("gated", modalities=("image", "note", "metadata")).eval()
        model.encoders["image"].image_size = input_size
        return Package(folder, {"labels": LABELS, "name": "t", "variant": "gated", "weights": {"sha256": "0" * 64}}, model)

    (tmp_path / "suite").mkdir()
    square_in = package(32, tmp_path / "suite" / "a")          # the tiny encoders' square input
    wide_in = package((48, 40), tmp_path / "suite" / "b")      # like HAM10000's 200 x 150 input
    wide = make_case(1)                                        # a 48 x 40 image
    square = replace(wide, image=wide.image.resize((40, 40)))

    def views(img, turn):
        return [img, img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT), img.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM),
                img.transpose(turn)]

    # a quarter turn unless neither the image nor the model's input is square (then prepare() would squash the
    # turned image back to the input shape: a view the model never saw), where the image turns half way
    for pkg, case, turn, words in ((square_in, wide, PILImage.Transpose.ROTATE_90, "90 degrees"),
                                   (wide_in, square, PILImage.Transpose.ROTATE_90, "90 degrees"),
                                   (wide_in, wide, PILImage.Transpose.ROTATE_180, "180 degrees")):
        tta = pkg.predict_tta(case, mc_samples=5)
        single = [pkg.predict(replace(case, image=v), mc_samples=5) for v in views(case.image, turn)]
        assert np.allclose(tta.calibrated, np.mean([p.calibrated for p in single], 0), atol=1e-5)
        assert tta.mc_samples.shape == (20, 3) and tta.label == LABELS[int(tta.calibrated.argmax())]
        assert tta.uncertainty["tta_spread"] >= 0 and any(words in w for w in tta.warnings)
    squashed = [wide_in.predict(replace(wide, image=v), mc_samples=5) for v in views(wide.image, PILImage.Transpose.ROTATE_90)]
    assert not np.allclose(tta.calibrated, np.mean([p.calibrated for p in squashed], 0), atol=1e-5)
    no_image = make_case(1, missing=("image",))
    assert np.allclose(wide_in.predict_tta(no_image).calibrated, wide_in.predict(no_image).calibrated)
    # a damaged suite_inference.json beside the package: one sentence in the notes, the plain views, no crash
    (tmp_path / "suite" / "suite_inference.json").write_text(json.dumps({"format": "something else"}))
    damaged = wide_in.predict_tta(wide, mc_samples=5)
    assert np.allclose(damaged.calibrated, tta.calibrated, atol=1e-6)
    assert any("could not be used" in w for w in damaged.warnings)


def test_int8_packages_predict_like_float_and_still_explain(tmp_path):
    from core import load_package
    from core.explain import explain_case

    model = make_model("gated", modalities=("image", "note", "metadata"))
    path = save_package(model, tmp_path / "p", LABELS, name="tiny", extra={"deployment": {"int8": True}})
    q = load_package(path)
    f = load_package(path, int8=False)
    assert q.int8 and not f.int8 and q.info()["int8"]
    kinds = {type(m).__module__ for m in q.inference_model.modules()}
    assert any("quantized" in k for k in kinds)                      # the linear layers really are int8
    assert not any("quantized" in type(m).__module__ for m in q.model.modules())  # the float model is kept
    for i in range(4):
        a, b = q.predict(make_case(i)), f.predict(make_case(i))
        assert np.abs(a.calibrated - b.calibrated).max() < 0.05
    ex = explain_case(q, make_case(0), parts=("cam", "note", "table"), ig_steps=4, shapley_samples=0)
    assert ex.cams["gradcam"].shape and ex.note["words"]


def test_missing_reconstruct_fills_absent_rows_from_the_present_ones_and_learns(tmp_path):
    from core import MultimodalClassifier

    torch.manual_seed(0)
    base = make_model("concat", modalities=("note", "metadata", "spectrum"))
    model = MultimodalClassifier(dict(base.encoders), 3, "concat", {}, 32, {"hidden": 16}, missing="reconstruct")
    path = save_package(model, tmp_path / "r", LABELS, name="tiny-reconstruct")
    pkg = load_package(path)
    assert pkg.config["architecture"]["missing"] == "reconstruct"
    full, no_note = make_case(0), make_case(0, missing=("note",))
    inputs, present, _ = pkg.prepare([full, no_note])
    with torch.no_grad():
        feats = pkg.model.encode(inputs, present)
    note = feats[pkg.modalities.index("note")]
    emb = pkg.model.missing["note"].pooled
    assert not torch.allclose(note.pooled[1], emb)                      # not the plain missing embedding
    assert pkg.model.last_reconstruction_loss is None                   # no loss outside training
    # training: the reconstruction of a present modality from the others is pulled towards it
    model.train()
    opt = torch.optim.Adam([p for p in model.reconstruct.parameters()], lr=1e-2)
    cases = [make_case(i) for i in range(12)]
    inputs, present, _ = pkg.prepare(cases)
    losses = []
    for _ in range(60):
        model.encode(inputs, present)
        loss = model.last_reconstruction_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="missing must be"):
        MultimodalClassifier(dict(base.encoders), 3, "concat", {}, 32, missing="guess")


def test_dashboard_shows_expert_routing_disagreement_and_offers_tta(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from core import MultimodalClassifier

    root = Path(__file__).resolve().parents[1]
    base = make_model("gated", modalities=("image", "note", "metadata"))
    model = MultimodalClassifier(dict(base.encoders), 3, "gated", {"dim": 32}, 32, {"type": "moe", "hidden": 16})
    save_package(model, tmp_path / "models" / "dermatology" / "gated_moe", LABELS, name="tiny-moe", cohort="dermatology")
    monkeypatch.setenv("FUSIONLENS_MODELS", str(tmp_path / "models"))
    at = AppTest.from_file(str(root / "dashboard" / "Home.py"), default_timeout=120).run()
    at.session_state["fl_case"] = make_case(0)
    at.switch_page("pages/3_Fusion_internals.py").run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert "Mixture-of-experts routing for this case" in titles
    assert any(m.label == "Modality disagreement" and m.value.endswith("nats") for m in at.metric)
    at.switch_page("pages/2_Prediction.py").run()
    at.toggle(key="pred_tta").set_value(True).run()
    assert not at.exception
    assert any("Test-time augmentation: averaged over 4 views" in c.value for c in at.caption)


def test_architecture_doc_lists_every_head_and_its_diagnostics():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    for name in HEADS.names():
        assert f"| `{name}` |" in doc, name
        for key in HEADS.get(name).DIAGNOSTICS:
            assert f"`{key}`" in doc, (name, key)
