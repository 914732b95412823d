"""Training on tiny generated data: one short run end to end, config validation, feature caching."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import load_package
from core.data import Cohort, CohortItem, grouped_split
from core.training.config import ConfigError, config_from_dict
from core.training.dataset import build_split, modality_dropout
from core.training.train import build_from_config, train
from tiny import SCHEMA, TINY_BERT

LABELS = ["low", "high"]


def tiny_cohort(tmp_path, n: int = 96) -> Cohort:
    rng = np.random.default_rng(0)
    grid = np.linspace(1000, 1100, 64)
    items = []
    ys = rng.integers(0, 2, n)
    splits = grouped_split([str(i) for i in range(n)], None, [LABELS[y] for y in ys], seed=0)
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, (y, split) in enumerate(zip(ys, splits)):
        img = np.full((32, 32, 3), 90 + 80 * y, dtype=np.uint8) + rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
        path = tmp_path / "img" / f"{i}.png"
        Image.fromarray(img).save(path)
        band = np.exp(-((grid - 1050) / 5) ** 2) * (1.0 + y)
        items.append(CohortItem(
            case_id=f"c{i}", label=LABELS[y], split=split, image_path=path,
            note=["stable lesion", "bleeding and growing lesion"][y] if i % 4 else None,
            metadata={"age": float(40 + 20 * y + rng.normal(0, 8)), "sex": ["female", "male"][i % 2], "site": "back"},
            spectrum=band + rng.normal(0, 0.3, 64)))
    schema = [dict(f) for f in SCHEMA]
    return Cohort("tiny", LABELS, items, ["image", "note", "metadata", "spectrum"], schema, list(grid),
                  "tiny generated test data", synthetic=True)


def tiny_config(tmp_path, variant="gated", modalities=("image", "note", "metadata", "spectrum"), **train):
    return config_from_dict({
        "name": f"tiny-{variant}", "variant": variant, "modalities": list(modalities), "out": str(tmp_path / variant),
        "data": {"path": "unused"},
        "encoders": {"image": {"type": "image", "arch": "tiny", "pretrained": False, "image_size": 32, "frozen": True},
                     "note": {"type": "text", "source": "minilm", "random_init": TINY_BERT, "max_length": 16, "frozen": True},
                     "metadata": {"hidden": 16, "out_dim": 16, "token_dim": 8},
                     "spectrum": {"channels": 8, "out_dim": 16}},
        "fusion_options": {"dim": 16} if variant != "concat" else {},
        "fused_dim": 16, "head": {"hidden": 16, "blocks": 1, "dropout": 0.2},
        "train": {"epochs": 2, "batch_size": 16, "mc_samples": 8, **train},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
    })


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_short_training_writes_a_complete_package(tmp_path, cache):
    cohort = tiny_cohort(tmp_path)
    cfg = tiny_config(tmp_path, "gated", disagreement_weighting=True, loss="focal", logit_adjustment=1.0)
    out = train(cfg, cohort, progress=False)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "confusion_matrix.png", "reliability.png"} <= files
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "ece_before_calibration", "error_detection_auroc"):
        lo, hi = metrics[key]["ci95"]
        assert np.isnan(lo) or lo <= metrics[key]["value"] <= hi, key
    assert metrics["n"] == len(cohort.split("test")) and metrics["calibration_temperature"] > 0
    assert len(metrics["accuracy_vs_referred"]["accuracy"]) == len(metrics["accuracy_vs_referred"]["fractions"])
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    pkg = load_package(out)
    assert pkg.synthetic and pkg.config["training_data"]["class_counts"]["test"]
    pred = pkg.predict(cohort.split("test")[0].to_case())
    assert pred.label in LABELS
    # the frozen encoders' outputs were cached once per split
    assert len(list((cache / "features").glob("image-*.safetensors"))) == 3
    assert (cache / "runs" / "tiny-gated" / "best.safetensors").is_file()


def test_training_learns_the_signal(tmp_path, cache):
    cohort = tiny_cohort(tmp_path, n=160)
    cfg = tiny_config(tmp_path, "concat", ("metadata", "spectrum"), epochs=15, lr=3e-3)
    out = train(cfg, cohort, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["balanced_accuracy"]["value"] > 0.8  # age and the spectral band both separate the classes


def test_cached_features_match_a_fresh_encoder_pass(tmp_path, cache):
    cohort = tiny_cohort(tmp_path, n=24)
    model = build_from_config(tiny_config(tmp_path), cohort)
    items = cohort.items
    first = build_split(model, items, LABELS, "t")
    again = build_split(model, items, LABELS, "t")  # from the on-disk cache
    assert torch.equal(first.cached["image"].pooled, again.cached["image"].pooled)
    idx = torch.arange(len(items))
    with torch.no_grad():
        b = first.batch(model, idx)
        from core.package import prepare_batch
        inputs, present, _ = prepare_batch(model, [it.to_case(with_mask=False) for it in items])
        direct = model(inputs, present).logits
        cached = model(b["inputs"], b["present"]).logits
    assert torch.allclose(direct, cached, atol=1e-5)


def test_feature_cache_is_keyed_by_content_not_case_ids(tmp_path, cache):
    """Two cohorts that reuse case ids (and image paths) for other images must not share cached
    features: the second one's features come from its own images."""
    cohort = tiny_cohort(tmp_path, n=24)
    model = build_from_config(tiny_config(tmp_path), cohort)
    first = build_split(model, cohort.items, LABELS, "t")
    (tmp_path / "other").mkdir()
    other = tiny_cohort(tmp_path / "other", n=24)
    for a, b in zip(cohort.items, other.items):       # same ids and paths, new pixels and notes
        img = 255 - np.asarray(Image.open(b.image_path))
        Image.fromarray(img.astype(np.uint8)).save(a.image_path)
        a.note = None if a.note is None else a.note + " with new crusting"
    second = build_split(model, cohort.items, LABELS, "t")
    assert not torch.equal(first.cached["image"].pooled, second.cached["image"].pooled)
    assert not torch.equal(first.cached["note"].pooled, second.cached["note"].pooled)
    with torch.no_grad():   # and what the cache returned is what the encoder gives on the new images
        from core.package import prepare_batch
        inputs, present, _ = prepare_batch(model, [it.to_case(with_mask=False) for it in cohort.items])
        fresh = model.encoders["image"](**inputs["image"]).pooled
    assert torch.allclose(fresh, second.cached["image"].pooled, atol=1e-5)


def test_modality_dropout_never_hides_everything():
    present = torch.ones(500, 3, dtype=torch.bool)
    present[:100, 1:] = False
    out = modality_dropout(present, 0.9, torch.Generator().manual_seed(0))
    assert out.any(1).all() and (out <= present).all() and out.sum() < present.sum()


@pytest.mark.parametrize("bad,needle", [
    ({"data": {"cohort": "x", "path": "y"}}, "exactly one of"),
    ({"train": {"epochz": 3}}, "unknown key 'train.epochz'"),
    ({"train": {"loss": "hinge"}}, "'train.loss' must be"),
    ({"modalities": []}, "at least one"),
])
def test_config_errors(bad, needle):
    base = {"name": "x", "variant": "concat", "modalities": ["metadata"], "out": "o", "data": {"cohort": "diabetes"}}
    with pytest.raises(ConfigError, match=needle):
        config_from_dict({**base, **bad})
