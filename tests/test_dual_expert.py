"""The dual-expert (lesion vs context) image encoder: crops, tied streams, gates, packages, training
cache, explanations of each stream, and the prediction diagnostic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core import Case, MultimodalClassifier, load_package, save_package
from core.encoders import build_encoder
from core.encoders.dual import DualExpertEncoder, lesion_box
from tiny import LABELS, encoder_configs, make_case

DUAL = {"type": "dual_expert", "arch": "tiny", "pretrained": False, "image_size": 32}


def dual_model(gate: str = "learned", variant: str = "gated", seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    cfgs = encoder_configs()
    enc = {"image": build_encoder("image", {**DUAL, "gate": gate, "n_classes": 3 if gate == "entropy" else None}),
           "note": build_encoder("note", cfgs["note"]), "metadata": build_encoder("metadata", cfgs["metadata"])}
    return MultimodalClassifier(enc, 3, variant, {"dim": 32}, 32, {"hidden": 16}).eval()


def masked_case(i: int = 0) -> Case:
    c = make_case(i)
    mask = np.zeros((40, 48), np.uint8)
    mask[8:20, 10:26] = 255
    return Case.from_inputs(image=c.image, mask=Image.fromarray(mask), note=c.note, metadata=c.metadata, case_id=c.case_id)


def test_lesion_box_follows_the_mask_with_a_margin():
    img = Image.new("RGB", (100, 80))
    mask = np.zeros((80, 100), bool)
    mask[20:40, 30:60] = True
    x0, y0, x1, y1 = lesion_box(img, mask, margin=0.1)
    assert x0 <= 30 and y0 <= 20 and x1 >= 60 and y1 >= 40          # contains the lesion
    assert x1 - x0 <= 40 and y1 - y0 <= 40                          # but not the whole image


def test_streams_are_tied_one_copy_and_the_gate_mixes_them():
    enc = DualExpertEncoder("tiny", False, 32)
    for a, b in zip(enc.backbone.parameters(), enc.local_backbone.parameters()):
        assert a is b
    assert not any(k.startswith("local_backbone.") for k in enc.state_dict())
    x = enc.prepare([(make_case(0).image, None), (make_case(1).image, None)])
    assert x["pixels"].shape == x["local_pixels"].shape == (2, 3, 32, 32) and x["crop_box"].shape == (2, 4)
    out = enc(**x)
    w = out.extras["lesion_gate"]
    assert w.shape == (2,) and ((w > 0) & (w < 1)).all()
    g, l = enc.backbone(x["pixels"]), enc.local_backbone(x["local_pixels"])
    expect = w[:, None] * l.pooled + (1 - w[:, None]) * g.pooled
    assert torch.allclose(out.pooled, expect, atol=1e-6)
    assert out.tokens.shape[1] == g.tokens.shape[1] + l.tokens.shape[1]
    cached = enc.frozen_inputs(**x)                                 # what training caches
    assert torch.allclose(enc(**cached).pooled, out.pooled, atol=1e-6)


def test_entropy_gate_leans_on_context_when_the_lesion_stream_is_unsure():
    enc = DualExpertEncoder("tiny", False, 32, gate="entropy", n_classes=3)
    x = enc.prepare([(make_case(0).image, None)])
    with torch.no_grad():
        enc.lesion_head[1].weight.zero_()
        enc.lesion_head[1].bias.zero_()                              # uniform p_l: maximal entropy
        unsure = float(enc(**x).extras["lesion_gate"])
        enc.lesion_head[1].bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # certain p_l: entropy ~0
        sure = float(enc(**x).extras["lesion_gate"])
    assert unsure == pytest.approx(1 / (1 + np.e ** np.log(3)), abs=1e-4) and sure > 0.49 and unsure < sure
    with pytest.raises(ValueError, match="n_classes"):
        DualExpertEncoder("tiny", False, 32, gate="entropy")


@pytest.mark.parametrize("gate", ["learned", "entropy"])
def test_dual_package_round_trip_and_lesion_gate_diagnostic(tmp_path, gate):
    model = dual_model(gate)
    path = save_package(model, tmp_path / gate, LABELS, name=f"tiny-dual-{gate}")
    pkg = load_package(path)
    case = masked_case(0)
    a, b = model.eval(), pkg.model
    inputs, present, _ = pkg.prepare([case])
    with torch.no_grad():
        assert torch.allclose(a(inputs, present).logits, b(inputs, present).logits, atol=1e-6)
    pred = pkg.predict(case)
    assert 0 < float(pred.diagnostics["image_lesion_gate"]) < 1
    nan = pkg.predict(make_case(0, missing=("image",)))
    gate_value = nan.diagnostics.get("image_lesion_gate")
    assert gate_value is None or np.isnan(float(gate_value))            # no image: no gate


def test_the_uploaded_mask_decides_the_crop():
    model = dual_model()
    from core.package import prepare_batch

    with_mask, _, _ = prepare_batch(model, [masked_case(0)])
    box = with_mask["image"]["crop_box"][0]
    assert box[0] <= 10 / 48 + 1e-6 and box[2] >= 26 / 48 - 1e-6 and box[2] - box[0] < 0.9


def test_each_stream_has_its_own_gradcam_and_explanations_run(tmp_path):
    from core.explain import ExplainContext, explain_case
    from core.explain.gradcam import image_cam

    pkg = load_package(save_package(dual_model(), tmp_path / "d", LABELS, name="tiny-dual"))
    case = masked_case(1)
    ctx = ExplainContext(pkg, case)
    g = image_cam(ctx, "gradcam")
    l = image_cam(ctx, "gradcam", stream="lesion")
    assert g.shape == l.shape == (32, 32)
    box = (ctx.inputs["image"]["crop_box"][0] * 32).round().long().tolist()
    outside = np.ones((32, 32), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.all(l[outside] == 0)                                     # the lesion stream sees only its crop
    ex = explain_case(pkg, case, parts=("cam", "lesion_context", "note", "table", "modality", "image_ig"),
                      ig_steps=4, shapley_samples=0)
    assert ex.lesion_stream_cam is not None and ex.lesion_context["confidence"]["full"] > 0
    assert not any(m._forward_hooks for m in pkg.model.modules() if not type(m).__module__.startswith("transformers"))


def test_training_caches_both_streams_once_and_reuses_the_global_image_cache(tmp_path, monkeypatch):
    from core.data import CohortItem  # noqa: F401  (the dataset API works on cohort items)
    from core.training.dataset import build_split

    monkeypatch.setenv("FUSIONLENS_CACHE", str(tmp_path / "cache"))

    class Item:
        def __init__(self, i):
            self.case_id, self.label = f"c{i}", LABELS[i % 3]
            self._case = make_case(i)

        def to_case(self, with_mask=True):
            return self._case

    items = [Item(i) for i in range(6)]
    model = dual_model()
    split = build_split(model, items, LABELS, tag="t")
    d = split.prepared["image"]
    assert {"g_pooled", "l_pooled", "g_tokens", "l_tokens"} <= set(d) and d["g_pooled"].shape[0] == 6
    files = list((tmp_path / "cache" / "features").glob("image-pre-*.safetensors"))
    assert len(files) == 1
    batch = split.batch(model, torch.arange(6))
    out = model(batch["inputs"], batch["present"])
    inputs = model.encoders["image"].prepare([(it._case.image, None) for it in items])
    direct = model.encoders["image"](**inputs)
    assert torch.allclose(out.features[0].pooled, direct.pooled, atol=1e-5)  # cached == a fresh pass
    again = build_split(model, items, LABELS, tag="t")                          # second time: from disk
    assert torch.equal(again.prepared["image"]["l_pooled"], d["l_pooled"])


def test_dashboard_shows_the_lesion_gate_and_both_streams(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    save_package(dual_model(), tmp_path / "models" / "dermatology" / "gated_dual_expert", LABELS, name="tiny-dual",
                 cohort="dermatology")
    monkeypatch.setenv("FUSIONLENS_MODELS", str(tmp_path / "models"))
    at = AppTest.from_file(str(root / "dashboard" / "Home.py"), default_timeout=120).run()
    at.session_state["fl_case"] = masked_case(2)
    at.session_state["stability_samples"] = 4
    at.switch_page("pages/4_Image_explanations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    gate = next(m for m in at.metric if m.label == "Lesion gate w_l")
    assert 0 < float(gate.value) < 1
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert "lesion stream" in titles and "global stream" in titles


def test_a_strict_state_dict_round_trip_works_with_tied_streams():
    """Training restores the best weights with a strict load: the tied stream must not be asked for."""
    model = dual_model()
    other = dual_model(seed=1)
    other.load_state_dict(model.state_dict())                       # strict
    x = other.encoders["image"].prepare([(make_case(0).image, None)])
    assert torch.equal(other.encoders["image"].local_backbone.backbone[0][0].weight,
                       model.encoders["image"].backbone.backbone[0][0].weight)
    assert torch.allclose(other.encoders["image"](**x).pooled, model.encoders["image"](**x).pooled)
