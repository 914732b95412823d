"""The fast paths of issue 17 give the same numbers as the plain ways they replace."""
from __future__ import annotations

import numpy as np
import torch

from core import load_package, save_package
from core.compare import compare_variants
from core.explain import ExplainContext, explain_case
from core.explain.context import _PRIVATE
from core.explain.gradcam import image_cam
from core.explain.image_ig import _features, middle_stage_ig
from core.explain.modality import modality_disagreement
from tiny import LABELS, make_case, make_model


def _pkg(tmp_path, variant="gated", **kw):
    return load_package(save_package(make_model(variant, **kw), tmp_path / variant, LABELS, name=f"tiny-{variant}"))


def test_single_modality_rows_in_the_main_pass_give_the_two_pass_disagreement(tmp_path):
    pkg = _pkg(tmp_path, "mmtm")
    cases = [make_case(0), make_case(1, missing=("note", "metadata", "spectrum")), make_case(2, missing=("note",))]
    det, mc, present, _ = pkg.run(cases, 5)
    with torch.inference_mode():
        inputs, present2, _ = pkg.prepare(cases)
        plain = pkg.model(inputs, present2)
        two_pass = modality_disagreement(pkg, plain, present2)
    assert torch.allclose(det.logits, plain.logits, atol=1e-5)
    got = det.diagnostics["modality_disagreement"]
    assert torch.isnan(got[1]) and torch.isnan(two_pass[1])           # one modality: nothing to disagree with
    assert torch.allclose(got[[0, 2]], two_pass[[0, 2]], atol=1e-5) and float(got[0]) > 0
    assert all(f.pooled.shape[0] == 3 for f in det.features)
    for k, v in plain.diagnostics.items():                             # diagnostics keep the cases' rows only
        if torch.is_tensor(v) and v.dim() > 0:
            assert det.diagnostics[k].shape == v.shape, k


def test_middle_stage_split_rebuilds_the_encoder_output_and_its_ig_is_complete(tmp_path):
    pkg = _pkg(tmp_path)
    enc = pkg.model.encoders["image"]
    ctx = ExplainContext(pkg, make_case(0))
    x = ctx.inputs["image"]["pixels"]
    head, tail = enc.stage_split()
    with torch.no_grad():
        early, mid = head(x)
        ref, got = enc(x), _features(enc, early.mean(dim=(2, 3)), mid, tail(mid))
    assert torch.allclose(ref.pooled, got.pooled, atol=1e-6) and torch.allclose(ref.tokens, got.tokens, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref.levels, got.levels))
    info = middle_stage_ig(ctx, n_steps=32, internal_batch_size=32)
    assert info["map"].shape == tuple(x.shape[-2:]) and float(info["map"].max()) == 1.0
    assert info["convergence_delta"] <= 0.05 * max(abs(info["output_difference"]), 1e-3) + 1e-4
    ex = explain_case(pkg, make_case(0), parts=("image_ig", "image_ig_pixels"), shapley_samples=0)
    assert ex.image_attribution_info["integrated_gradients"]["layer"] == "middle stage"
    assert ex.image_attributions["integrated_gradients_pixels"].shape == info["map"].shape


def test_gradcam_reuses_a_hook_free_private_copy(tmp_path):
    pkg = _pkg(tmp_path)
    ctx = ExplainContext(pkg, make_case(0))
    first = image_cam(ctx)
    pool = _PRIVATE.get(pkg.model.encoders["image"])
    assert pool and len(pool) == 1
    copy = pool[0]
    assert copy is not pkg.model.encoders["image"] and not any(m._forward_hooks for m in copy.modules())
    second = image_cam(ctx)
    assert np.allclose(first, second) and _PRIVATE.get(pkg.model.encoders["image"])[0] is copy
    assert not any(m._forward_hooks for m in pkg.model.modules() if not type(m).__module__.startswith("transformers"))


def test_comparison_with_cached_dual_expert_streams_matches_each_package_alone(tmp_path):
    from test_dual_expert import dual_model, masked_case

    plain = load_package(save_package(make_model("gated", modalities=("image", "note", "metadata")), tmp_path / "g",
                                      LABELS, name="g"))
    dual = load_package(save_package(dual_model(), tmp_path / "d", LABELS, name="d"))
    case = masked_case(1)
    cmp = compare_variants([plain, dual], case, explain=False)
    for col in cmp.columns:
        alone = col.package.predict(case)
        assert np.allclose(col.prediction.calibrated, alone.calibrated, atol=1e-5)
        assert np.allclose(col.prediction.mc_samples, alone.mc_samples, atol=1e-5)
    gate = cmp.columns[1].prediction.diagnostics["image_lesion_gate"]
    assert np.isclose(float(gate), float(dual.predict(case).diagnostics["image_lesion_gate"]), atol=1e-5)


def test_head_pass_with_mc_samples_in_one_batch_equals_the_two_calls(tmp_path):
    head = _pkg(tmp_path).model.head
    fused = torch.randn(3, head.inp.in_features)
    with torch.inference_mode():
        det = head(fused)
        mc = head(fused[:1], 7, torch.Generator().manual_seed(4))
        got = head.forward_with_samples(fused, fused[:1], 7, torch.Generator().manual_seed(4))
    for a, b in zip((*det, *mc), got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_stability_with_the_early_layers_run_once_equals_the_batched_copies(tmp_path):
    from core.explain.gradcam import _run_cam, cam_stability

    ctx = ExplainContext(_pkg(tmp_path), make_case(0))
    fast = cam_stability(ctx, "gradcam", samples=5, seed=3)
    maps = _run_cam(ctx, ctx.inputs["image"]["pixels"].expand(5, -1, -1, -1), "gradcam", "last stage", mc_seed=3)
    assert np.allclose(fast["mean"], maps.mean(0), atol=1e-5) and np.allclose(fast["std"], maps.std(0), atol=1e-5)
    assert not any(m._forward_pre_hooks for m in _PRIVATE.get(ctx.model.encoders["image"])[0].modules())


def test_gradcam_cut_at_the_target_layer_gives_the_full_backward_map(tmp_path):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from core.explain.context import ImageTargetModel

    ctx = ExplainContext(_pkg(tmp_path), make_case(1))
    wrapper = ImageTargetModel(ctx)          # pixels require gradients: the backward runs to the input
    with GradCAM(model=wrapper, target_layers=[wrapper.encoder.cam_layers()["last stage"]]) as cam, torch.enable_grad():
        full = cam(input_tensor=ctx.inputs["image"]["pixels"].clone(), targets=[ClassifierOutputTarget(ctx.target)])[0]
    assert np.allclose(image_cam(ctx), full, atol=1e-5)


def test_cohort_tail_gradcam_is_pytorch_grad_cams_gradcam_on_the_last_stage(tmp_path):
    """The cohort engine computes the last-stage Grad-CAM without importing pytorch-grad-cam (Ray actors
    would pay torchvision + scikit-learn at start-up): its maps must be the library's."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from core.cohort.engine import _Batch
    from core.cohort.gradients import fast_cam_encoder, image_features, tail_gradcam

    pkg = _pkg(tmp_path, "mmtm")
    assert fast_cam_encoder(pkg.model.encoders["image"])
    b = _Batch(pkg, [make_case(i) for i in range(3)], {}, maps=True)
    rows = torch.arange(3)
    with torch.no_grad():
        targets = b.logits(rows).argmin(-1)           # not the top class: the map depends on the target
    early = [f.mean(dim=(2, 3)) for f in b.maps[:-1]]
    pixels = b.inputs["image"]["pixels"]
    size = (pixels.shape[-1], pixels.shape[-2])
    got = tail_gradcam(b, rows, targets, b.maps[-1], early, size)

    class Tail(torch.nn.Module):                       # last map -> calibrated logits, for the library to hook
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Identity()
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

        def forward(self, last):
            feats = image_features(pkg.model.encoders["image"], [self.layer(last)], early)
            return b.logits(rows, replace={"image": feats})

    class SizedGradCAM(GradCAM):
        def get_target_width_height(self, input_tensor):
            return size

    tail = Tail()
    with SizedGradCAM(model=tail, target_layers=[tail.layer]) as cam, torch.enable_grad():
        ref = cam(input_tensor=b.maps[-1].detach().clone().requires_grad_(True),
                  targets=[ClassifierOutputTarget(int(t)) for t in targets])
    assert got.shape == ref.shape == (3, size[1], size[0]) and got.dtype == np.float32
    assert np.allclose(got, ref, atol=1e-6) and float(got.max()) > 0.5
    other = tail_gradcam(b, rows, (targets + 1) % len(LABELS), b.maps[-1], early, size)
    assert not np.allclose(got, other, atol=1e-3)    # another target, another map: the target is used
