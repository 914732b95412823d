"""The dual expert's ``lesion_mask_fill`` (issue 15 §3): the lesion stream sees only the lesion, the crop's
pixels outside the lesion mask replaced by a neutral fill. Off by default: an old config prepares and
predicts exactly as before."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import Case, MultimodalClassifier, load_package, save_package
from core.encoders import build_encoder
from core.encoders.dual import DualExpertEncoder, fill_outside, lesion_box
from tiny import LABELS, encoder_configs, make_case

DUAL = {"type": "dual_expert", "arch": "tiny", "pretrained": False, "image_size": 32}
SKIN, LESION, SPOT = (200, 160, 140), (90, 30, 20), (20, 160, 40)


def known_image(spot: bool = False) -> tuple[Image.Image, np.ndarray]:
    """48 x 40 uniform skin with a rectangular dark lesion (the mask), optionally a green 'context' spot
    right next to it (inside the crop's margin, outside the lesion)."""
    a = np.zeros((40, 48, 3), np.uint8)
    a[:] = SKIN
    mask = np.zeros((40, 48), bool)
    mask[10:26, 14:30] = True
    a[mask] = LESION
    if spot:
        a[26:28, 14:18] = SPOT
    return Image.fromarray(a), mask


def normalised(enc: DualExpertEncoder, rgb: tuple[int, int, int]) -> torch.Tensor:
    x = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
    return ((x - enc.backbone._mean.cpu()) / enc.backbone._std.cpu())[0, :, 0, 0]


def crop_alpha(enc: DualExpertEncoder, img: Image.Image, mask: np.ndarray) -> torch.Tensor:
    box = lesion_box(img, mask, enc.margin)
    im = Image.fromarray(mask.astype(np.uint8) * 255).crop(box).resize((enc.image_size,) * 2, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(im, np.float32) / 255.0)


def old_prepare(enc: DualExpertEncoder, values) -> dict[str, torch.Tensor]:
    """The prepare() of every package saved before the option (the code as it was)."""
    images, crops, boxes = [], [], []
    for img, mask in values:
        box = lesion_box(img, mask, enc.margin)
        images.append(img)
        crops.append(img.crop(box))
        w, h = img.size
        boxes.append([box[0] / w, box[1] / h, box[2] / w, box[3] / h])
    return {"pixels": enc.backbone.prepare(images)["pixels"], "local_pixels": enc.backbone.prepare(crops)["pixels"],
            "crop_box": torch.tensor(boxes, dtype=torch.float32)}


def test_outside_the_mask_the_crop_shows_the_image_mean_colour_inside_the_lesion_as_before():
    img, mask = known_image(spot=True)
    plain = DualExpertEncoder("tiny", False, 32)
    enc = DualExpertEncoder("tiny", False, 32, lesion_mask_fill="mean")
    a = plain.prepare([(img, mask)])
    x = enc.prepare([(img, mask)])
    alpha = crop_alpha(enc, img, mask)
    outside, inside = alpha == 0, alpha == 1
    assert outside.sum() > 100 and inside.sum() > 100           # the crop has both (margin 0.15)
    mean = x["pixels"][0].mean(dim=(1, 2))
    lp = x["local_pixels"][0]
    assert torch.allclose(lp[:, outside], mean[:, None].expand(3, int(outside.sum())), atol=1e-6)
    assert torch.equal(lp[:, inside], a["local_pixels"][0][:, inside])                  # the lesion untouched
    assert torch.equal(x["pixels"], a["pixels"]) and torch.equal(x["crop_box"], a["crop_box"])   # global as before
    spot = normalised(enc, SPOT)
    assert (a["local_pixels"][0] - spot[:, None, None]).abs().sum(0).min() < 0.5        # the plain crop shows the spot
    assert (lp - spot[:, None, None]).abs().sum(0).min() > 1.0                          # the masked one does not
    assert x["lesion_mask"].shape == (1, 1, 32, 32)


def test_blur_fill_is_the_local_skin_without_the_lesion_bleeding_in():
    img, mask = known_image()
    enc = DualExpertEncoder("tiny", False, 32, lesion_mask_fill="blur")
    lp = enc.prepare([(img, mask)])["local_pixels"][0]
    outside = crop_alpha(enc, img, mask) == 0
    skin = normalised(enc, SKIN)
    # uniform skin around the lesion: the normalised blur of the outside pixels is that skin colour exactly
    assert torch.allclose(lp[:, outside], skin[:, None].expand(3, int(outside.sum())), atol=1e-4)
    mean_enc = DualExpertEncoder("tiny", False, 32, lesion_mask_fill="mean")
    mlp = mean_enc.prepare([(img, mask)])["local_pixels"][0]
    assert not torch.allclose(mlp[:, outside], skin[:, None].expand(3, int(outside.sum())), atol=1e-2)  # mean has lesion in it


def test_without_a_mask_the_automatic_segmentation_decides_the_fill(monkeypatch):
    img, mask = known_image()
    import core.encoders.dual as dual

    calls = []

    def fake(image):
        calls.append(1)
        return mask

    monkeypatch.setattr(dual, "auto_lesion_mask", fake)
    enc = DualExpertEncoder("tiny", False, 32, lesion_mask_fill="mean")
    x = enc.prepare([(img, None)])
    assert len(calls) == 1                                          # segmented once: box and fill share it
    y = enc.prepare([(img, mask)])
    assert torch.equal(x["local_pixels"], y["local_pixels"]) and torch.equal(x["lesion_mask"], y["lesion_mask"])


def test_crop_pixels_fills_the_same_outside_when_the_whole_image_is_varied(monkeypatch):
    img, mask = known_image(spot=True)
    enc = DualExpertEncoder("tiny", False, 32, lesion_mask_fill="mean")
    x = enc.prepare([(img, mask)])
    varied = x["pixels"].repeat(3, 1, 1, 1) + torch.randn(3, 3, 32, 32) * 0.1    # e.g. an occlusion batch
    local = enc.crop_pixels(varied, x["crop_box"], x["lesion_mask"])
    box = (x["crop_box"][0] * 32).round().long().tolist()
    m = torch.nn.functional.interpolate(x["lesion_mask"][:, :, box[1]:box[3], box[0]:box[2]], size=(32, 32),
                                        mode="bilinear", align_corners=False)[0, 0]
    outside = m == 0
    assert outside.sum() > 50
    for i in range(3):
        mean = varied[i].mean(dim=(1, 2))
        assert torch.allclose(local[i][:, outside], mean[:, None].expand(3, int(outside.sum())), atol=1e-5)
    # forward cuts the lesion stream the same way when it gets only the whole image
    with torch.no_grad():
        a = enc(pixels=varied, crop_box=x["crop_box"], lesion_mask=x["lesion_mask"])
        b = enc(pixels=varied, local_pixels=local)
    assert torch.allclose(a.pooled, b.pooled, atol=1e-6)
    # no mask given (a caller holding only the crop box): each varied image is segmented
    import core.encoders.dual as dual

    seen = []
    monkeypatch.setattr(dual, "auto_lesion_mask", lambda im: (seen.append(im.size), np.asarray(mask[4:36, 8:40]))[1])
    enc.crop_pixels(varied, x["crop_box"])
    assert seen == [(32, 32)] * 3
    plain = DualExpertEncoder("tiny", False, 32)
    p = plain.prepare([(img, mask)])
    assert torch.equal(plain.crop_pixels(p["pixels"], p["crop_box"]),                  # default: the plain crop
                       DualExpertEncoder.crop_pixels(plain, p["pixels"], p["crop_box"], x["lesion_mask"]))


def test_fill_outside_leaves_the_lesion_and_rejects_unknown_fills():
    local, whole = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 16, 16)
    alpha = torch.ones(2, 1, 8, 8)
    for fill in ("mean", "blur"):
        assert torch.allclose(fill_outside(local, alpha, whole, fill), local)
    assert fill_outside(local, alpha * 0, whole, "none") is local
    with pytest.raises(ValueError, match="lesion_mask_fill"):
        fill_outside(local, alpha, whole, "zeros")
    with pytest.raises(ValueError, match="lesion_mask_fill"):
        build_encoder("image", {**DUAL, "lesion_mask_fill": "zeros"})


def test_an_old_config_prepares_and_predicts_exactly_as_before():
    img, mask = known_image(spot=True)
    enc = build_encoder("image", DUAL)                               # a config without the key
    assert enc.lesion_mask_fill == "none" and "lesion_mask_fill" not in enc.frozen_config()
    values = [(img, mask), (make_case(1).image, None)]
    new, old = enc.prepare(values), old_prepare(enc, values)
    assert set(new) == {"pixels", "local_pixels", "crop_box"}
    for k in old:
        assert torch.equal(new[k], old[k])
    with torch.no_grad():
        assert torch.equal(enc(**new).pooled, enc(**old).pooled)
        assert torch.equal(enc(pixels=new["pixels"], crop_box=new["crop_box"]).pooled,
                           enc(pixels=old["pixels"], local_pixels=enc.crop_pixels(old["pixels"], old["crop_box"])).pooled)


def test_the_shipped_dual_packages_read_with_the_fill_they_were_trained_with():
    """gated_dual_entropy (saved before the option) reads as unmasked; gated_dual_expert (replaced in session 10)
    carries the mean fill in its config and its prepare hands the mask on."""
    root = Path(__file__).resolve().parents[1] / "assets" / "models" / "dermatology"
    expected = {"gated_dual_expert": "mean", "gated_dual_entropy": "none"}
    img, mask = known_image()
    for name, fill in expected.items():
        cfg = json.loads((root / name / "config.json").read_text())["architecture"]["modalities"]["image"]
        assert cfg.get("lesion_mask_fill", "none") == fill, name
        enc = build_encoder("image", {**cfg, "pretrained": False})
        assert enc.lesion_mask_fill == fill
        keys = {"pixels", "local_pixels", "crop_box"} | ({"lesion_mask"} if fill != "none" else set())
        assert set(enc.prepare([(img, mask)])) == keys


def dual_model(fill: str) -> MultimodalClassifier:
    torch.manual_seed(0)
    cfgs = encoder_configs()
    enc = {"image": build_encoder("image", {**DUAL, "lesion_mask_fill": fill}),
           "note": build_encoder("note", cfgs["note"]), "metadata": build_encoder("metadata", cfgs["metadata"])}
    return MultimodalClassifier(enc, 3, "gated", {"dim": 32}, 32, {"hidden": 16}).eval()


@pytest.mark.parametrize("fill", ["mean", "blur"])
def test_the_setting_is_stored_in_the_package_and_reloads(tmp_path, fill):
    model = dual_model(fill)
    path = save_package(model, tmp_path / fill, LABELS, name=f"tiny-dual-{fill}")
    cfg = json.loads((path / "config.json").read_text())["architecture"]["modalities"]["image"]
    assert cfg["lesion_mask_fill"] == fill
    pkg = load_package(path)
    assert pkg.model.encoders["image"].lesion_mask_fill == fill
    img, mask = known_image(spot=True)
    c = make_case(0)
    case = Case.from_inputs(image=img, mask=Image.fromarray(mask.astype(np.uint8) * 255), note=c.note,
                            metadata=c.metadata, case_id="masked")
    inputs, present, _ = pkg.prepare([case])
    assert "lesion_mask" in inputs["image"]
    with torch.no_grad():
        assert torch.allclose(model(inputs, present).logits, pkg.model(inputs, present).logits, atol=1e-6)
    unmasked = dual_model("none")
    unmasked.load_state_dict(model.state_dict())
    plain, _, _ = load_package(save_package(unmasked, tmp_path / "none", LABELS, name="tiny-dual-none")).prepare([case])
    assert not torch.allclose(plain["image"]["local_pixels"], inputs["image"]["local_pixels"])
    # the training cache of the lesion stream is keyed by the fill (a masked run never reads unmasked streams)
    assert model.encoders["image"].frozen_config() != unmasked.encoders["image"].frozen_config()
    assert 0 < float(pkg.predict(case).diagnostics["image_lesion_gate"]) < 1


def test_shipped_dual_experts_with_different_fills_compare_and_explain_as_alone():
    """The shipped gated_dual_expert fills the crop outside the lesion (session 10), gated_dual_entropy does not: a
    comparison must not hand one the other's lesion stream (the shared cache keys the fill), and an explanation
    that varies the whole image holds the case's mask fixed with the crop box."""
    from core.compare import compare_variants
    from core.explain import ExplainContext
    from test_assets import ROOT, demo_case

    pkgs = [load_package(ROOT / "models" / "dermatology" / n) for n in ("gated_dual_expert", "gated_dual_entropy")]
    fills = [p.model.encoders["image"].lesion_mask_fill for p in pkgs]
    if fills[0] == fills[1]:
        pytest.skip(f"the shipped dual experts share a fill ({fills[0]})")
    case, _ = demo_case(ROOT / "cases" / "dermatology" / "derm-00001")
    cmp = compare_variants(pkgs, case, explain=False)
    for col in cmp.columns:
        alone = col.package.predict(case)
        assert np.allclose(col.prediction.calibrated, alone.calibrated, atol=1e-5), col.package.name
        assert abs(col.prediction.diagnostics["image_lesion_gate"] - alone.diagnostics["image_lesion_gate"]) < 1e-5
    filled = pkgs[fills.index("mean")] if "mean" in fills else pkgs[0]
    ctx = ExplainContext(filled, case)
    fixed = ctx.image_fixed()
    assert set(fixed) == {"crop_box", "lesion_mask"}
    # varied images are cut with the case's mask: nothing is segmented again
    enc = filled.model.encoders["image"]
    segmented = []
    real = enc._segment
    enc._segment = lambda px: segmented.append(len(px)) or real(px)
    pixels = ctx.inputs["image"]["pixels"]
    f = ctx.target_fn("image", "pixels", **fixed)
    with torch.no_grad():
        held = f(torch.cat([pixels, pixels.flip(-1)]))
    assert segmented == [] and held.shape[0] == 2 and torch.isfinite(held).all()
    with torch.no_grad():
        ctx.target_fn("image", "pixels", crop_box=fixed["crop_box"])(pixels)
    assert segmented == [1]                      # the box alone (the old hold) segments the varied image anew


def test_a_comparison_whose_packages_default_to_different_heatmaps_draws_one_method():
    """Plain dermatology packages default to IG from the median features, the dual experts to Grad-CAM: an explained
    comparison of both draws last-stage Grad-CAM in every column, so the maps and their overlap compare one method."""
    from core.compare import compare_variants
    from core.explain.gradcam import default_cam
    from test_assets import ROOT, demo_case

    pkgs = [load_package(ROOT / "models" / "dermatology" / n) for n in ("mmtm", "gated_dual_expert")]
    assert default_cam(pkgs[0]) != default_cam(pkgs[1])
    case, _ = demo_case(ROOT / "cases" / "dermatology" / "derm-00001")
    cmp = compare_variants(pkgs, case, explain=True)
    assert [list(c.explanation.cams) for c in cmp.columns] == [["gradcam"], ["gradcam"]]
    assert "cam_top_iou" in cmp.explanation_agreement["pairs"][0]
    same = compare_variants(pkgs[:1] + [load_package(ROOT / "models" / "dermatology" / "gated")], case, explain=True)
    assert [list(c.explanation.cams) for c in same.columns] == [["median_ig"], ["median_ig"]]   # one default: kept
