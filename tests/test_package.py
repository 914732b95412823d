"""Model packages: exact round trip, and every way a package can be broken is refused clearly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core import PackageError, load_package, save_package
from core.package import sha256_file
from tiny import LABELS, make_case, make_model


@pytest.fixture
def pkg_dir(tmp_path):
    model = make_model("gated")
    return save_package(model, tmp_path / "pkg", LABELS, name="tiny-gated", cohort="test",
                        calibration_temperature=1.5, referral_threshold=0.4,
                        training_data={"description": "random", "synthetic": True})


@pytest.mark.parametrize("variant", ["concat", "mmtm", "irene", "hierarchical"])
def test_save_load_is_bit_identical(tmp_path, cases, variant):
    model = make_model(variant).eval()
    path = save_package(model, tmp_path / variant, LABELS, name=variant)
    pkg = load_package(path)
    inputs, present, _ = pkg.prepare(cases)
    with torch.no_grad():
        a = model(inputs, present)
        b = pkg.model(inputs, present)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.log_var, b.log_var)
    p1, p2 = pkg.predict(cases), load_package(path).predict(cases)
    for x, y in zip(p1, p2):
        assert np.array_equal(x.mc_samples, y.mc_samples)  # MC sampling is seeded, not global-RNG


def test_config_records_everything(pkg_dir):
    cfg = json.loads((pkg_dir / "config.json").read_text())
    assert cfg["variant"] == "gated" and cfg["labels"] == LABELS
    assert cfg["weights"]["sha256"] == sha256_file(pkg_dir / "model.safetensors")
    assert cfg["calibration"]["temperature"] == 1.5 and cfg["referral"]["threshold"] == 0.4
    assert cfg["architecture"]["modalities"]["metadata"]["schema"][0]["unit"] == "years"
    assert cfg["architecture"]["modalities"]["image"]["image_size"] == 32
    assert "not a medical device" in cfg["notice"]
    assert sorted(p.name for p in pkg_dir.iterdir()) == ["config.json", "model.safetensors"]


def test_loaded_model_is_read_only(pkg_dir):
    pkg = load_package(pkg_dir)
    assert not pkg.model.training
    assert not any(p.requires_grad for p in pkg.model.parameters())


def test_tampered_weights_are_refused(pkg_dir):
    state = load_file(str(pkg_dir / "model.safetensors"))
    key = next(iter(state))
    state[key] = state[key] + 1e-3
    save_file(state, str(pkg_dir / "model.safetensors"))
    with pytest.raises(PackageError, match=r"model\.safetensors: sha256 .* does not match config\.json"):
        load_package(pkg_dir)


def test_truncated_weights_are_refused(pkg_dir):
    data = (pkg_dir / "model.safetensors").read_bytes()
    (pkg_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    cfg = json.loads((pkg_dir / "config.json").read_text())
    cfg["weights"]["sha256"] = sha256_file(pkg_dir / "model.safetensors")  # even with a matching hash
    (pkg_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PackageError, match="not a readable safetensors file"):
        load_package(pkg_dir)


@pytest.mark.parametrize("name", ["model.pt", "extra.pth", "weights.bin", "x.pkl", "last.ckpt"])
def test_pickle_files_are_refused(pkg_dir, name):
    (pkg_dir / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PackageError, match="pickle-based files"):
        load_package(pkg_dir)


def test_missing_files_and_bad_config(tmp_path, pkg_dir):
    with pytest.raises(PackageError, match="no such model folder"):
        load_package(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="no config.json"):
        load_package(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(pkg_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(broken)
    (pkg_dir / "model.safetensors").unlink()
    with pytest.raises(PackageError, match="weights file is missing"):
        load_package(pkg_dir)


def test_unknown_variant_and_wrong_shapes(pkg_dir):
    cfg_path = pkg_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    bad = json.loads(json.dumps(cfg))
    bad["architecture"]["fusion"]["name"] = "telepathy"
    cfg_path.write_text(json.dumps(bad))
    with pytest.raises(PackageError, match="unknown fusion variant 'telepathy'"):
        load_package(pkg_dir)
    bad = json.loads(json.dumps(cfg))
    bad["architecture"]["fusion"]["options"]["dim"] = 48
    cfg_path.write_text(json.dumps(bad))
    with pytest.raises(PackageError, match="has shape .* but the architecture needs"):
        load_package(pkg_dir)
    bad = json.loads(json.dumps(cfg))
    bad["architecture"]["head"]["blocks"] = 2
    cfg_path.write_text(json.dumps(bad))
    with pytest.raises(PackageError, match="weights do not fit the architecture .*missing"):
        load_package(pkg_dir)


def test_weights_outside_the_model_folder_are_refused(pkg_dir, tmp_path):
    cfg_path = pkg_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["weights"]["file"] = "../../../etc/passwd.safetensors"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PackageError, match="outside the model folder"):
        load_package(pkg_dir)


def test_shared_encoder_file_is_stored_once(tmp_path, cases):
    root = tmp_path / "suite"
    torch.manual_seed(0)
    first = make_model("concat")
    second = make_model("add")
    second.encoders.load_state_dict(first.encoders.state_dict())  # same fine-tuned encoders
    shared = {"encoders.image.": "../_shared/image.safetensors"}
    p1 = save_package(first, root / "concat", LABELS, name="a", shared=shared)
    p2 = save_package(second, root / "add", LABELS, name="b", shared=shared)
    assert len(list((root / "_shared").iterdir())) == 1
    assert not any(k.startswith("encoders.image.") for k in load_file(str(p1 / "model.safetensors")))
    pkg = load_package(p2)
    with torch.no_grad():
        inputs, present, _ = pkg.prepare(cases)
        assert torch.equal(second.eval()(inputs, present).logits, pkg.model(inputs, present).logits)


def test_predict_outputs(pkg_dir, cases):
    pkg = load_package(pkg_dir)
    pred = pkg.predict(make_case(0, missing=("spectrum",)), mc_samples=12)
    assert pred.label in LABELS and pred.label == LABELS[int(pred.calibrated.argmax())]
    assert np.isclose(pred.calibrated.sum(), 1) and np.isclose(pred.probabilities.sum(), 1)
    # temperature 1.5 flattens the calibrated distribution
    assert pred.calibrated.max() < pred.probabilities.max()
    assert pred.mc_samples.shape == (12, 3)
    u = pred.uncertainty
    assert np.isclose(u["predictive_entropy"], u["aleatoric"] + u["epistemic"], atol=1e-5)
    assert 0 <= u["normalised_entropy"] <= 1 and u["data_variance"] > 0
    assert pred.refer == (u["normalised_entropy"] > 0.4)
    assert pred.present == {"image": True, "note": True, "metadata": True, "spectrum": False}
    assert set(pred.diagnostics) >= {"modality_weights", "gates", "metadata_feature_gates"}
    d = pred.to_dict()
    json.dumps(d)
    assert d["model"]["sha256"] == pkg.sha256 and d["model"]["variant"] == "gated"
    batch = pkg.predict(cases, mc_samples=12)
    assert len(batch) == len(cases)
    assert np.allclose(batch[0].calibrated, pkg.predict(cases[0], mc_samples=12).calibrated, atol=1e-6)
