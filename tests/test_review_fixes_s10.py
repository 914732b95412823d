"""Session 10 review fixes: the known-answer controls' cache folders keyed by all of their fine-tuning settings (note and
image), and the case CLI's ``explain --cam`` taking every heatmap method of core.explain.gradcam (CAMs and maps)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import core.explain.controls as K
import core.explain.gradcam as G
from core import save_package
from core.cli import main
from core.cli.case import heatmap_arguments
from core.cli.common import UsageError
from tiny import LABELS, make_model


# --- the note-only control's folder key --------------------------------------------------------------------------

def test_note_control_folder_key_hashes_every_setting():
    base = dict(K.NOTE_FINETUNE)
    tail = K.note_finetune_tail(base)
    assert tail.startswith(f"-tl{base['layers']}-")
    assert K.note_finetune_tail(dict(reversed(list(base.items())))) == tail       # sorted JSON: order does not matter
    # keys the old key left out (it read layers, lr, layer_lr and epochs only)
    for key, value in (("batch_size", base["batch_size"] * 2), ("weight_decay", 0.0), ("dropout", 0.3), ("threads", 2)):
        assert K.note_finetune_tail({**base, key: value}) != tail, key
    assert K.note_finetune_tail({**base, "lr": base["lr"] / 2}) != tail


def test_train_control_never_reuses_a_note_control_trained_with_other_settings(tmp_path, monkeypatch):
    """A cached note-only control of the default settings is reused; asked for another batch size, train_control
    trains (here: reaches the cohort generator) instead of returning the cached package, also the one at the old
    key's folder name ('-tl1', which ignored the batch size)."""
    def trains(**k):
        raise RuntimeError("trains a new control")

    monkeypatch.setattr(K, "generate_dermatology", trains)
    cached = tmp_path / f"note-only-n700-224{K.note_finetune_tail(dict(K.NOTE_FINETUNE))}"
    old_style = tmp_path / f"note-only-n700-224-tl{K.NOTE_FINETUNE['layers']}"
    for d in (cached, old_style):
        d.mkdir()
        (d / "config.json").write_text("{}")
    assert K.train_control("note", root=tmp_path, finetune=True) == cached
    with pytest.raises(RuntimeError, match="trains a new control"):
        K.train_control("note", root=tmp_path, finetune=True,
                        finetune_opts={"batch_size": K.NOTE_FINETUNE["batch_size"] * 2})


# --- explain --cam: every heatmap method -------------------------------------------------------------------------

def test_cam_argument_accepts_every_heatmap_method_and_checks_the_rest():
    every = [*G.CAM_METHODS, *G.MAP_METHODS]
    parts = ("cam", "stability", "modality")
    for m in every:
        methods, kept = heatmap_arguments([m], parts, False, False)
        assert methods == [m]
        assert kept == (parts if m in G.CAM_METHODS else ("cam", "modality"))   # a map has no MC-dropout stability
    # CAMs first, so the stability part (which reads the first method) reads a CAM
    assert heatmap_arguments(["feature_occlusion", "gradcam"], parts, True, False) == (
        ["gradcam", "feature_occlusion"], parts)
    for args, needle in (((["telepathy"], parts, False, False), "unknown heatmap method 'telepathy' for --cam"),
                         ((["feature_occlusion"], parts, False, True), "--tta applies to the CAMs only"),
                         ((["feature_occlusion"], parts, True, False), "the stability part needs a CAM")):
        with pytest.raises(UsageError, match=needle) as e:
            heatmap_arguments(*args)
        assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")   # one sentence


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return save_package(make_model("mmtm", ("image", "note", "metadata")), tmp_path_factory.mktemp("m") / "pkg", LABELS,
                        name="tiny-mmtm")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    p = tmp_path_factory.mktemp("case") / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
    return p


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_cli_draws_a_map_method(pkg, image, capsys):
    base = ["explain", "--model", pkg, "--image", image, "--meta", "age=55", "--json"]
    code, out, err = run([*base, "--cam", "feature_occlusion", "gradcam", "--parts", "cam", "stability"], capsys)
    assert code == 0, err
    d = json.loads(out)
    fo, gc = np.asarray(d["cams"]["feature_occlusion"]), np.asarray(d["cams"]["gradcam"])
    assert fo.shape == gc.shape == (32, 32) and not np.allclose(fo, gc, atol=1e-3)   # the map asked for was drawn
    assert d["stability"]                                                              # from the CAM
    code, out, err = run([*base, "--cam", "feature_occlusion", "--parts", "cam"], capsys)
    assert code == 0, err
    assert list(json.loads(out)["cams"]) == ["feature_occlusion"]
    code, out, err = run([*base, "--cam", "telepathy"], capsys)
    assert code == 2 and out == "" and err.startswith("error: unknown heatmap method 'telepathy' for --cam")


def test_explain_cli_refuses_a_map_the_image_encoder_cannot_draw(pkg, image, capsys, monkeypatch):
    monkeypatch.setattr(G, "heatmap_methods", lambda package=None: list(G.CAM_METHODS))   # as for a dual expert
    code, out, err = run(["explain", "--model", pkg, "--image", image, "--cam", "feature_occlusion", "--parts", "cam"],
                         capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: this package's image encoder cannot draw 'feature_occlusion'")
    assert err.count("\n") == 1


def test_image_control_cache_key_hashes_every_setting():
    base = {**K.IMAGE_FINETUNE}
    tail = K.image_finetune_tail(base)
    assert tail.startswith(f"-ft{base['cut']}-")
    assert K.image_finetune_tail(dict(reversed(list(base.items())))) == tail        # order does not matter
    for key in ("epochs", "samples_per_epoch", "batch_size"):
        assert K.image_finetune_tail({**base, key: base[key] + 1}) != tail, key
    swapped = K.image_finetune_tail({**base, "lesion_swap": 3})
    assert "-swap3-" in swapped and swapped != tail


def test_explain_cli_tta_on_a_package_whose_default_is_a_map_draws_gradcam(pkg, image, capsys, monkeypatch):
    """The dermatology suite's default heatmap is a map (median IG), drawn without test-time augmentation: --tta
    without --cam draws last-stage Grad-CAM with it and says so, instead of failing."""
    monkeypatch.setattr(G, "default_cam", lambda package: ("median_ig", "last stage"))
    code, out, err = run(["explain", "--model", pkg, "--image", image, "--meta", "age=55", "--json", "--tta",
                          "--parts", "cam"], capsys)
    assert code == 0, err
    assert list(json.loads(out)["cams"]) == ["gradcam"]
    assert "--tta: drawing last-stage Grad-CAM" in err and "IG from the median features" in err
