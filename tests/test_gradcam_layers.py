"""core.explain.gradcam's layer product, per-suite default and 'auto' on tiny hand-wired networks (no data).

The known-answer network: a dark 'lesion' square raises two last-stage channels, one for the class (P) and one
against it (N, 0.9 x P); the bright skin raises a third channel with a small positive weight (Q). Grad-CAM's
channel-weighted sum cancels P and N on the lesion, so its peak moves to the skin; Grad-CAM++ / LayerCAM keep
only positive evidence and peak on the lesion. This is the mechanism measured on HAM10000 (validation masks:
the positive and the negative part of the last-stage map each sit on the lesion, their difference does not).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core import Case, MultimodalClassifier, load_package, save_package
from core.encoders import build_encoder
from core.encoders.image import ImageEncoder
from core.explain import explain_case
from core.explain import gradcam as gc
from core.explain.context import ExplainContext
from tiny import LABELS

S = 32
LESION = np.zeros((S, S), bool)
LESION[:16, :16] = True          # the top-left quadrant: 2 x 2 cells of the 4 x 4 last stage


def _wire(enc: ImageEncoder) -> None:
    """Hand-set the tiny backbone (3 stride-2 conv stages + BN + ReLU): stage 0 ch 0 = darkness, ch 1 =
    brightness; the later stages copy them forward; last stage ch 0 = P, ch 1 = N = 0.9 P, ch 2 = Q (skin)."""
    with torch.no_grad():
        for stage in enc.backbone:
            conv, bn = stage[0], stage[1]
            conv.weight.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        c0 = enc.backbone[0][0].weight
        c0[0] = -1.0 / 27
        c0[1] = 1.0 / 27
        enc.backbone[1][0].weight[0, 0, 1, 1] = 1.0
        enc.backbone[1][0].weight[1, 1, 1, 1] = 1.0
        last = enc.backbone[2][0].weight
        last[0, 0, 1, 1] = 1.0
        last[1, 0, 1, 1] = 0.9
        last[2, 1, 1, 1] = 1.0


def _fake_logits(vary, modality_inputs, mc_generator=None, encoder=None):
    """Class 0's logit = P - N + 0.2 Q of the pooled last stage (the encoder still runs, hooks see it)."""
    feats = encoder(**modality_inputs) if isinstance(modality_inputs, dict) else modality_inputs
    p = feats.pooled
    z = p[:, 0] - p[:, 1] + 0.2 * p[:, 2]
    return torch.stack([z, -z, 0 * z], 1)


def lesion_image() -> Image.Image:
    img = np.full((S, S, 3), 205, np.uint8)       # skin
    img[LESION] = 25                             # a dark lesion
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    torch.manual_seed(0)
    enc = build_encoder("image", {"type": "image", "arch": "tiny", "pretrained": False, "image_size": S})
    model = MultimodalClassifier({"image": enc}, len(LABELS), "unimodal", {}, fused_dim=16,
                                 head_options={"hidden": 16, "blocks": 1, "dropout": 0.0})
    pkg = load_package(save_package(model, tmp_path_factory.mktemp("w") / "p", LABELS, name="wired"))
    _wire(pkg.model.encoders["image"])       # before any private copy of this encoder exists
    return pkg


def wired_ctx(pkg, monkeypatch) -> ExplainContext:
    ctx = ExplainContext(pkg, Case.from_inputs(case_id="w", image=lesion_image()), target=0)
    monkeypatch.setattr(ctx, "calibrated_logits", _fake_logits)
    return ctx


def peak_in_lesion(cam: np.ndarray) -> bool:
    return bool(LESION[np.unravel_index(np.argmax(cam), cam.shape)])


def mass_ratio(cam: np.ndarray) -> float:
    return float(cam[LESION].sum() / cam.sum()) / float(LESION.mean())


def test_known_answer_gradcam_cancels_on_the_lesion_positive_evidence_does_not(wired, monkeypatch):
    ctx = wired_ctx(wired, monkeypatch)
    cams = {m: gc.image_cam(ctx, m, "last stage") for m in ("gradcam", "gradcam++", "layercam")}
    assert not peak_in_lesion(cams["gradcam"])                    # P - N cancel: the skin's Q wins
    assert peak_in_lesion(cams["gradcam++"]) and peak_in_lesion(cams["layercam"])
    assert mass_ratio(cams["gradcam++"]) > 1.5 > mass_ratio(cams["gradcam"])


def test_layer_product_is_the_product_of_its_parts_and_keeps_the_lesion(wired, monkeypatch):
    ctx = wired_ctx(wired, monkeypatch)
    coarse = gc.image_cam(ctx, "gradcam++", "last stage")
    fine = gc.image_cam(ctx, "layercam", "early stage")
    both = gc.image_cam(ctx, "gradcam++", "last × early stage")
    want = coarse / coarse.max() * (fine / fine.max())
    assert both.shape == (S, S) and both.max() == pytest.approx(1.0)
    np.testing.assert_allclose(both, want / want.max(), atol=1e-5)
    # the class-specific coarse map decides where: the early map alone (its gradients carry P - N + 0.2 Q too)
    # peaks on the skin, the product on the lesion
    assert not peak_in_lesion(fine) and peak_in_lesion(both)


def test_auto_is_the_suites_measured_choice_and_plain_gradcam_elsewhere(wired, monkeypatch):
    ctx = wired_ctx(wired, monkeypatch)
    assert gc.default_cam(wired) == gc.DEFAULT_CAM == ("gradcam", "last stage")   # cohort 'custom', arch 'tiny'
    np.testing.assert_allclose(gc.image_cam(ctx), gc.image_cam(ctx, "gradcam", "last stage"))
    monkeypatch.setitem(gc.SUITE_DEFAULTS, (wired.cfg.cohort, "tiny"), ("gradcam++", "last × early stage"))
    assert gc.default_cam(wired) == ("gradcam++", "last × early stage")
    np.testing.assert_allclose(gc.image_cam(ctx), gc.image_cam(ctx, "gradcam++", "last × early stage"))
    assert gc.resolve_cam(wired, ("auto", "gradcam"), "auto") == (("gradcam++", "gradcam"), "last × early stage")
    assert gc.resolve_cam(wired, ("gradcam",), "middle stage") == (("gradcam",), "middle stage")   # asked = given


def test_ham10000_default_and_names():
    enc = ImageEncoder("efficientnet_lite0", pretrained=False, image_size=[200, 150])
    ham = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="ham10000"))
    other = SimpleNamespace(model=SimpleNamespace(encoders={"image": enc}), cfg=SimpleNamespace(cohort="dermatology"))
    no_image = SimpleNamespace(model=SimpleNamespace(encoders={}), cfg=SimpleNamespace(cohort="ham10000"))
    assert gc.default_cam(ham) == ("gradcam++", "last × early stage")
    assert gc.default_cam(other) == ("median_ig", "last stage")      # the dermatology suite's validated map
    assert gc.default_cam(no_image) == ("gradcam", "last stage")
    assert gc.cam_layer_names(enc) == ["last stage", "middle stage", "early stage", "last × early stage"]
    assert gc.describe_cam("gradcam++", "last × early stage") == "Grad-CAM++ (last stage) × LayerCAM (early stage)"
    assert gc.describe_cam("gradcam", "last stage") == "Grad-CAM (last stage)"


def test_explain_case_resolves_auto_and_records_what_drew_the_map(wired, monkeypatch):
    monkeypatch.setitem(gc.SUITE_DEFAULTS, (wired.cfg.cohort, "tiny"), ("gradcam++", "last × early stage"))
    case = Case.from_inputs(case_id="w", image=lesion_image())
    ex = explain_case(wired, case, target=0, parts=("cam", "lesion_context"))
    assert list(ex.cams) == ["gradcam++"] and ex.cam_layer == "last × early stage"
    assert list(ex.lesion_context["shares"]) == ["gradcam++"]
    asked = explain_case(wired, case, target=0, parts=("cam",), cam_methods=("gradcam",), cam_layer="last stage")
    assert list(asked.cams) == ["gradcam"] and asked.cam_layer == "last stage"


def test_tta_and_stability_on_a_non_square_image_and_the_product_layer(tmp_path):
    torch.manual_seed(1)
    enc = build_encoder("image", {"type": "image", "arch": "tiny", "pretrained": False, "image_size": [40, 24]})
    model = MultimodalClassifier({"image": enc}, len(LABELS), "unimodal", {}, fused_dim=16,
                                 head_options={"hidden": 16, "blocks": 1, "dropout": 0.2})
    pkg = load_package(save_package(model, tmp_path / "p", LABELS, name="wide"))
    rng = np.random.default_rng(0)
    ctx = ExplainContext(pkg, Case.from_inputs(case_id="x", image=Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))))
    for layer in ("last stage", "last × early stage"):
        cam = gc.image_cam(ctx, "gradcam++", layer, tta=True)      # the rotated view is 40 x 24: one call per view
        assert cam.shape == (24, 40) and np.isfinite(cam).all() and cam.max() == pytest.approx(1.0)
    st = gc.cam_stability(ctx, "gradcam++", "last × early stage", samples=4)
    assert st["mean"].shape == (24, 40) and np.isfinite(st["mean_pairwise_correlation"])
