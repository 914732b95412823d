"""core.package.tta: the eight image symmetries, views encoded at their own size (never squashed), one view
equal to the plain prediction, the two ways of combining views, suite_inference.json checked against the
weights, and evaluate_package_tta on a tiny ISIC-layout folder made from the shipped demo cases."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.package.tta import (FLIPS, FORMAT, VIEWS, TTASettings, adjust, apply_view, combine_views,
                              evaluate_package_tta, load_settings, run_views, tta_posterior)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models" / "ham10000"
CASES = ROOT / "assets" / "cases" / "ham10000"


def test_the_views_are_the_eight_symmetries_of_the_image():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    outs = {v: apply_view(x, v) for v in VIEWS}
    assert len(VIEWS) == 8 and len({(o.shape, tuple(o.flatten().tolist())) for o in outs.values()}) == 8
    for v, o in outs.items():
        assert o.is_contiguous()
        assert o.shape == (x.shape if v in FLIPS else (2, 3, 5, 4))          # transposes swap height and width
        assert torch.equal(o.flatten().sort().values, x.flatten().sort().values)   # a permutation of the pixels
        back = {"rot90": "rot270", "rot270": "rot90"}.get(v, v)
        assert torch.equal(apply_view(o, back), x)
    assert torch.equal(apply_view(apply_view(x, "rot90"), "rot90"), outs["rot180"])
    img = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert apply_view(img, "rot90").tolist() == [[4, 1], [5, 2], [6, 3]]   # a quarter turn clockwise
    with pytest.raises(ValueError, match="unknown view"):
        apply_view(x, "shear")


def test_combining_views_by_logits_or_by_probabilities():
    det = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]])          # [V=2, B=1, K=3]
    mc = det.unsqueeze(1).repeat(1, 5, 1, 1)                           # [V, T=5, B, K]
    lv = torch.zeros(2, 5, 1)
    a = combine_views(det, mc, lv, 2.0, "mean_logits")
    assert torch.allclose(a.calibrated, torch.softmax(det.mean(0) / 2.0, -1))
    b = combine_views(det, mc, lv, 2.0, "mean_probs")
    assert torch.allclose(b.calibrated, torch.softmax(det / 2.0, -1).mean(0))
    assert torch.allclose(b.probabilities, torch.softmax(det, -1).mean(0))
    assert b.uncertainty.sample_probs.shape[0] == 10                   # MC samples of both views pooled
    assert float(b.uncertainty.epistemic[0]) > 0.0                     # the views disagree: that is epistemic
    assert adjust(b, None, 1.0) is b
    shift = (0.5, -0.5, 0.0)
    c = adjust(b, shift, 0.8)                                          # the logit (class-prior) adjustment
    want = torch.softmax((b.calibrated.log() - torch.tensor(shift)) / 0.8, -1)
    assert torch.allclose(c.calibrated, want) and torch.equal(c.probabilities, b.probabilities)
    assert int(c.calibrated.argmax()) == 1 and int(b.calibrated.argmax()) in (0, 1)
    assert torch.allclose(c.uncertainty.mean_probs.sum(-1), torch.ones(1))
    with pytest.raises(ValueError, match="combine"):
        combine_views(det, mc, lv, 1.0, "vote")
    with pytest.raises(ValueError, match="view"):
        TTASettings(views=("identity", "shear"))


@pytest.fixture(scope="module")
def pkg():
    if not (MODELS / "concat").is_dir() or not CASES.is_dir():
        pytest.skip("the HAM10000 suite is not shipped")
    from core.package import load_package

    return load_package(MODELS / "concat")


@pytest.fixture(scope="module")
def cases():
    from core.case import Case

    return [Case.from_folder(p) for p in sorted(p for p in CASES.iterdir() if p.is_dir())[:4]]


def test_one_view_is_the_plain_prediction(pkg, cases):
    det, mc, lv = run_views(pkg, cases, ("identity",), mc_samples=4, seed=3)
    d, m, _, _ = pkg.run(cases, 4, seed=3)
    assert det.shape == (1, len(cases), len(pkg.labels)) and mc.shape == (1, 4, len(cases), len(pkg.labels))
    torch.testing.assert_close(det[0], d.logits)
    torch.testing.assert_close(mc[0], m.logits)
    post = combine_views(det, mc, lv, pkg.temperature)
    for i, p in enumerate(pkg.predict(cases, mc_samples=4, seed=3)):
        torch.testing.assert_close(post.calibrated[i], torch.as_tensor(p.calibrated))


def test_a_quarter_turn_is_encoded_at_its_own_size_not_squashed(pkg, cases):
    case = cases[0]
    det, _, _ = run_views(pkg, [case], ("transpose",), mc_samples=1)
    enc = pkg.model.encoders["image"]
    px = enc.prepare([case.image])["pixels"]                           # [1, 3, 150, 200]
    d, _, _, _ = pkg.run([case], 1, 0, {"image": enc(px.transpose(-1, -2).contiguous())})   # [1, 3, 200, 150]
    torch.testing.assert_close(det[0], d.logits)
    # what a PIL-level turn gives after prepare(): squashed back to 200 x 150 -- another input
    squashed = enc(enc.prepare([case.image.transpose(Image.Transpose.TRANSPOSE)])["pixels"])
    s, _, _, _ = pkg.run([case], 1, 0, {"image": squashed})
    assert not torch.allclose(s.logits, d.logits, atol=1e-3)


def test_map_level_views_turn_the_block_10_map(pkg, cases):
    from core.package.tta import view_features
    from core.training.finetune import frozen_part, trained_part

    enc = pkg.model.encoders["image"]
    px = enc.prepare([c.image for c in cases[:2]])["pixels"]
    ident, turned = view_features(pkg, px, ("identity", "rot90"), "maps")
    with torch.inference_mode():
        plain = enc(px)
        x, _, _ = frozen_part(enc, px)
        want = trained_part(enc, apply_view(x, "rot90")).mean(dim=(2, 3))
    torch.testing.assert_close(ident.pooled, plain.pooled, atol=1e-4, rtol=1e-4)   # identity = the encoder's forward
    torch.testing.assert_close(ident.levels[0], plain.levels[0])
    torch.testing.assert_close(turned.pooled, want)
    assert not torch.allclose(turned.pooled, ident.pooled, atol=1e-3)
    with pytest.raises(ValueError, match="level"):
        TTASettings(level="voxels")


def _settings_file(tmp_path: Path, pkg, tau: float = 0.0, **entry) -> Path:
    f = tmp_path / "suite_inference.json"
    f.write_text(json.dumps({"format": FORMAT, "fitted_on": "test", "tta": {"views": list(FLIPS), "combine": "mean_probs"},
                             "logit_adjustment": {"tau": tau, "log_prior_train": [-1.0] * len(pkg.labels)},
                             "packages": {"concat": {"package_sha256": pkg.sha256, "tta_temperature": 1.5, **entry}}}))
    return f


def test_settings_are_read_only_for_the_weights_they_were_fitted_on(pkg, tmp_path):
    s = load_settings(pkg, _settings_file(tmp_path, pkg, tta_referral_threshold=0.4))
    assert s is not None and s.views == FLIPS and s.combine == "mean_probs" and s.temperature == 1.5
    assert s.referral_threshold == 0.4 and s.shift is None and s.pool_temperature == 1.0
    f = _settings_file(tmp_path, pkg, tau=0.5, pool_temperature=0.9)
    s = load_settings(pkg, f)
    assert s.shift is None and s.pool_temperature == 1.0                   # the adjustment only when asked for
    s = load_settings(pkg, f, logit_adjustment=True)
    assert s.shift == (-0.5,) * len(pkg.labels) and s.pool_temperature == 0.9
    assert load_settings(pkg, _settings_file(tmp_path, pkg, package_sha256="0" * 64)) is None   # retrained since
    assert load_settings(pkg, tmp_path / "nothing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a"):
        load_settings(pkg, bad)


def _isic_folder(tmp_path: Path) -> Path:
    """The shipped HAM10000 demo cases written in the ISIC 2018 Task 3 test layout."""
    (tmp_path / "images").mkdir(parents=True)
    rows = []
    for k, folder in enumerate(sorted(p for p in CASES.iterdir() if p.is_dir())):
        meta = json.loads((folder / "metadata.json").read_text())
        image_id = f"ISIC_{34524 + k:07d}"
        Image.open(folder / "image.png").convert("RGB").save(tmp_path / "images" / f"{image_id}.jpg", quality=95)
        rows.append({"lesion_id": f"HAMTEST_{k:07d}", "image_id": image_id, "dx": meta["label"], "dx_type": "histo",
                     "age": meta.get("age") or "", "sex": meta.get("sex") or "", "localization": meta["localization"],
                     "dataset": "demo"})
    with open(tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path


def test_evaluate_with_tta_on_an_isic_layout_folder(pkg, tmp_path):
    from core.data.loaders import load_dataset
    from core.training.evaluate import evaluate_package

    items = load_dataset(_isic_folder(tmp_path)).split("test")
    plain = evaluate_package(pkg, items, n_boot=10)
    one = evaluate_package_tta(pkg, items, TTASettings(("identity",), "mean_logits", temperature=pkg.temperature), n_boot=10)
    for k in ("balanced_accuracy", "ece", "auroc"):
        assert one[k]["value"] == pytest.approx(plain[k]["value"], abs=1e-6)
    four = evaluate_package_tta(pkg, items, TTASettings(FLIPS, "mean_probs", "maps", pkg.temperature), n_boot=10)
    assert four["tta"]["views"] == list(FLIPS) and four["tta"]["level"] == "maps" and four["n"] == len(items)
    assert four["ece"]["value"] != pytest.approx(plain["ece"]["value"], abs=1e-9)   # the views were really averaged


def test_the_shipped_settings_belong_to_the_shipped_packages(pkg):
    f = MODELS / "suite_inference.json"
    if not f.is_file():
        pytest.skip("no suite_inference.json shipped")
    doc = json.loads(f.read_text())
    assert doc["format"] == FORMAT and doc["fitted_on"].startswith("HAM10000 validation split only")
    for name, entry in doc["packages"].items():        # a package retrained without refitting would be refused
        cfg = json.loads((MODELS / name / "config.json").read_text())
        assert entry["package_sha256"] == cfg["weights"]["sha256"], name
    s = load_settings(pkg)
    assert s is not None and s.level == doc["tta"]["level"] and s.views == tuple(doc["tta"]["views"]) and s.shift is None
    assert load_settings(pkg, logit_adjustment=True).shift is not None


def test_cli_evaluate_tta_uses_the_shipped_settings_and_refuses_what_it_cannot_do(pkg, tmp_path, capsys):
    from core.cli import main

    data = _isic_folder(tmp_path / "isic")
    assert main(["evaluate", "--model", str(MODELS / "concat"), "--data", str(data), "--tta", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    shipped = load_settings(pkg)
    assert out["data"]["tta"] is True and out["tta"]["views"] == list(shipped.views)
    assert out["n"] == len([p for p in CASES.iterdir() if p.is_dir()])
    assert main(["evaluate", "--model", str(MODELS / "concat"), "--data", str(data), "--tta", "--drop", "metadata"]) != 0
    assert "cannot be combined with --drop" in capsys.readouterr().err
    other = Path(__file__).resolve().parents[1] / "assets" / "models" / "dermatology" / "concat"   # no suite_inference.json
    assert main(["evaluate", "--model", str(other), "--data", str(data), "--tta"]) != 0
    assert "no test-time augmentation settings" in capsys.readouterr().err


def test_predict_tta_uses_the_suite_settings_for_these_weights(pkg, cases, tmp_path):
    from core.package.predictor import predict_tta

    settings = load_settings(pkg)
    case = cases[0]
    pred = predict_tta(pkg, case, mc_samples=4, seed=2)
    post = tta_posterior(pkg, [case], settings, mc_samples=4, seed=2)
    assert np.allclose(pred.calibrated, post.calibrated[0].numpy(), atol=1e-6)
    assert pred.label == pkg.labels[int(post.calibrated[0].argmax())]
    assert any("fitted on the suite's validation split" in w for w in pred.warnings)
    threshold = settings.referral_threshold if settings.referral_threshold is not None else pkg.referral_threshold
    assert pred.refer == (pred.uncertainty["normalised_entropy"] > threshold) and pred.referral["threshold"] == threshold
    assert pred.uncertainty["tta_spread"] >= 0
    plain = pkg.predict(case, mc_samples=4, seed=2)
    assert not np.allclose(pred.calibrated, plain.calibrated, atol=1e-6)       # the views were really averaged
    assert pred.diagnostics.keys() == plain.diagnostics.keys()
