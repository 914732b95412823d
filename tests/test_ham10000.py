"""HAM10000 / ISIC 2018: the loader on both CSV layouts, the stage-1 fine-tune and the suite wiring on tiny
generated images, and the shipped real demo cases (licence file, predict / explain / report)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import DataError
from core.data.loaders import HAM_LABELS, load_dataset, load_ham10000

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "assets" / "cases" / "ham10000"
MODELS = ROOT / "assets" / "models" / "ham10000"


def _image(path: Path, k: int, size=(200, 150)) -> None:
    rng = np.random.default_rng(k)
    arr = (rng.random((size[1], size[0], 3)) * 60 + 40 * (k % 7)).astype(np.uint8)
    Image.fromarray(arr).save(path)


def make_ham(root: Path, per_class: int = 4, masks: bool = True) -> Path:
    """A tiny HAM10000 layout: metadata CSV, 200 x 150 JPEGs, binary masks; two images per lesion."""
    (root / "HAM10000_images").mkdir(parents=True)
    if masks:
        (root / "HAM10000_segmentations_lesion").mkdir()
    rows, k = [], 0
    for dx in HAM_LABELS:
        for _j in range(per_class):
            k += 1
            image_id = f"ISIC_{k:07d}"
            rows.append({"lesion_id": f"HAM_{(k + 1) // 2:07d}", "image_id": image_id, "dx": dx,
                         "dx_type": "histo", "age": str(20 + 5 * (k % 12)), "sex": ("male", "female")[k % 2],
                         "localization": ("back", "face", "lower extremity")[k % 3]})
            _image(root / "HAM10000_images" / f"{image_id}.jpg", k)
            if masks:
                m = np.zeros((150, 200), np.uint8)
                m[40:110, 60:140] = 255
                Image.fromarray(m).save(root / "HAM10000_segmentations_lesion" / f"{image_id}_segmentation.png")
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def make_isic(root: Path) -> Path:
    """The ISIC 2018 Task 3 ground-truth layout: HAMTEST_ lesions, images/ folder, missing age / sex."""
    (root / "images").mkdir(parents=True)
    rows = []
    for k, dx in enumerate(HAM_LABELS * 2):
        image_id = f"ISIC_{34524 + k:07d}"
        rows.append({"lesion_id": f"HAMTEST_{k:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": "" if k % 3 == 0 else str(30 + k), "sex": "" if k % 4 == 0 else "unknown" if k % 4 == 1
                     else "female", "localization": "unknown" if k % 5 == 0 else "back", "dataset": "vidir_modern"})
        _image(root / "images" / f"{image_id}.jpg", k)
    with open(root / "ISIC2018_Task3_Test_GroundTruth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_ham_loader_splits_by_lesion_and_records_licence(tmp_path):
    c = load_ham10000(make_ham(tmp_path / "ham"), masks_dir=tmp_path / "ham" / "HAM10000_segmentations_lesion")
    assert len(c.items) == 28 and c.info["n_masks"] == 28
    by_lesion = {}
    for it in c.items:
        by_lesion.setdefault(it.group, set()).add(it.split)
    assert all(len(s) == 1 for s in by_lesion.values())            # never one lesion in two splits
    assert "CC BY-NC" in c.training_data()["licence"] and c.training_data()["citation"]
    assert "dx_type" not in c.items[0].metadata                       # the label leak is not an input
    assert not c.info["external_test_set"]


def test_isic_ground_truth_csv_is_an_external_test_set(tmp_path):
    c = load_dataset(make_isic(tmp_path / "isic"))
    assert c.name == "ham10000" and len(c.items) == 14
    assert {it.split for it in c.items} == {"test"} and c.info["external_test_set"]
    ages = [it.metadata["age"] for it in c.items]
    sexes = [it.metadata["sex"] for it in c.items]
    assert ages[0] is None and sexes[0] is None and sexes[1] == "unknown" and ages[1] == 31.0
    assert all(it.group.startswith("HAMTEST_") for it in c.items)


def test_ham_loader_names_a_bad_age(tmp_path):
    root = make_isic(tmp_path / "isic")
    p = root / "ISIC2018_Task3_Test_GroundTruth.csv"
    p.write_text(p.read_text().replace(",31,", ",old,", 1))
    with pytest.raises(DataError, match="age 'old'"):
        load_dataset(root)


def test_image_encoder_keeps_native_non_square_size():
    from core.encoders.image import ImageEncoder

    enc = ImageEncoder("tiny", False, [200, 150])
    x = enc.prepare([Image.new("RGB", (200, 150)), Image.new("RGB", (400, 300))])["pixels"]
    assert tuple(x.shape) == (2, 3, 150, 200)
    assert enc.config()["image_size"] == [200, 150]
    assert ImageEncoder("tiny", False, 32).config()["image_size"] == 32     # old packages: square


def test_finetune_top_trains_only_the_top_and_primes_features():
    import torch

    from core.encoders.image import ImageEncoder
    from core.training.finetune import frozen_part, full_features, finetune_top

    torch.manual_seed(0)
    enc = ImageEncoder("efficientnet_lite0", False, [64, 48], token_grid=2)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        x, l0, l1 = frozen_part(enc, torch.randn(12, 3, 48, 64))
    data = {"map": x.half(), "l0": l0, "l1": l1}
    y = torch.arange(12) % 3
    info = finetune_top(enc, data, y, data, y, 3, epochs=1, samples_per_epoch=8, batch_size=4, threads=1, log=lambda m: None)
    after = enc.state_dict()
    assert torch.equal(before["backbone._conv_stem.weight"], after["backbone._conv_stem.weight"])
    assert not torch.equal(before["backbone._conv_head.weight"], after["backbone._conv_head.weight"])
    assert enc.frozen and len(info["history"]) == 1
    feats = full_features(enc, data)
    with torch.no_grad():
        direct = enc(enc.prepare([Image.new("RGB", (64, 48))])["pixels"])
    assert feats["tokens"].shape[1:] == direct.tokens.shape[1:] and feats["pooled"].shape[1] == direct.pooled.shape[1]


def test_demo_cases_ship_with_their_licence():
    if not CASES.is_dir():
        pytest.skip("no HAM10000 demo cases shipped")
    folders = sorted(CASES.iterdir())
    assert 12 <= len(folders) <= 20 and all(f.is_dir() for f in folders)
    kinds = set()
    for f in folders:
        source = (f / "SOURCE.txt").read_text()
        assert "CC BY-NC" in source and "Tschandl" in source and f.name in source
        assert (f / "image.png").is_file() and (f / "mask.png").is_file() and not (f / "note.txt").exists()
        meta = json.loads((f / "metadata.json").read_text())
        assert set(meta) <= {"age", "sex", "localization", "label", "kind"} and meta["label"] in HAM_LABELS
        kinds.add(meta["kind"])
    assert json.loads((folders[0] / "metadata.json").read_text())["kind"] == "clear"     # the first one is clear
    assert "clear" in kinds and kinds & {"hard", "referred"}


def test_a_real_demo_case_through_predict_explain_report(tmp_path):
    if not (MODELS / "gated").is_dir() or not CASES.is_dir():
        pytest.skip("the HAM10000 suite is not shipped")
    from core.case import Case
    from core.package import load_package

    pkg = load_package(MODELS / "gated")
    assert "CC BY-NC" in pkg.config["training_data"]["licence"]
    case = Case.from_folder(sorted(p for p in CASES.iterdir() if p.is_dir())[0])
    assert case.mask is not None
    pred = pkg.predict(case)
    assert pred.label in HAM_LABELS
    from core.explain.engine import explain_case
    from core.report.render import make_report

    ex = explain_case(pkg, case, parts=("cam", "lesion_context"))
    # the suite's measured default map (Grad-CAM++ x early-stage LayerCAM on HAM10000), at native size
    assert list(ex.cams) == ["gradcam++"] and ex.cam_layer == "last × early stage"
    assert ex.cams["gradcam++"].shape == (150, 200)                     # native size, not squashed to a square
    assert ex.lesion_context["mask_source"] == "uploaded"               # the published mask, not a guess
    assert np.array_equal(ex.lesion_context["mask"], case.mask)
    html = make_report(pkg, case, explanation=ex).render("html").decode()
    assert "HAM10000 (real dermoscopy, CC BY-NC)" in html and "not a medical device" in html


def test_cli_train_suite_ham10000_needs_its_data(monkeypatch, capsys, tmp_path):
    from core.cli import main

    monkeypatch.setenv("FUSIONLENS_HAM10000", "")      # restored after the test (the CLI sets it from --data)
    assert main(["train-suite", "--cohort", "ham10000", "--out", str(tmp_path)]) == 2
    assert "--data PATH" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train-suite", "--cohort", "ham10000", "--data", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "HAM10000_metadata.csv" in capsys.readouterr().err
    assert main(["train-suite", "--cohort", "dermatology", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2


def test_suite_lists_the_template_note_package_for_ham10000_only():
    from core.training.suite import suite_configs

    ham = {c["name"].split("/")[1]: c for c in suite_configs("ham10000", Path("out"))}
    assert ham["gated_template_note"]["modalities"] == ["image", "note", "metadata"]
    assert ham["gated"]["modalities"] == ["image", "metadata"]          # the default suite: no note
    assert ham["unimodal_image"]["encoders"]["image"]["image_size"] == [200, 150]
    assert "gated_dual_expert" not in ham
    derm = {c["name"].split("/")[1] for c in suite_configs("dermatology", Path("out"))}
    assert "gated_template_note" not in derm


def test_app_opens_on_the_real_cohort_with_its_provenance(monkeypatch):
    if not (MODELS / "gated").is_dir() or not CASES.is_dir():
        pytest.skip("the HAM10000 suite is not shipped")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FUSIONLENS_MODELS", str(ROOT / "assets" / "models"))
    monkeypatch.setenv("FUSIONLENS_CASES", str(ROOT / "assets" / "cases"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="w_cohort").value == "ham10000"          # real lesions first
    captions = [c.value for c in at.sidebar.caption] + [c.value for c in at.caption]
    assert any("HAM10000 (real dermoscopy, CC BY-NC)" in c for c in captions)
    from core.case_io import list_demo_cases                              # the Case page's demo list, in its order

    first = next(d for d in list_demo_cases([ROOT / "assets" / "cases"]) if d.cohort == "ham10000")
    assert first.case_id.startswith("ham-01-") and json.loads((first.path / "metadata.json").read_text())["kind"] == "clear"
    # the app's warm-up thread predicts and explains the default demo case with the default package: let it finish
    # (a daemon thread still inside torch when the interpreter exits aborts the process)
    from dashboard import background

    assert background._WARM["done"].wait(600)
    assert background._WARM["error"] is None, background._WARM["error"]
