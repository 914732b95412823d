"""Tiny models and tiny generated cases: nothing is downloaded, everything runs in seconds."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from core import Case, MultimodalClassifier
from core.encoders import build_encoder

LABELS = ["benign", "malignant", "other"]
ORDER = ("image", "note", "metadata", "spectrum")
SCHEMA = [
    {"name": "age", "type": "numeric", "unit": "years", "min": 0, "max": 120, "mean": 50, "std": 15},
    {"name": "sex", "type": "categorical", "categories": ["female", "male"], "most_frequent": "female"},
    {"name": "site", "type": "categorical", "categories": ["back", "face", "leg"], "most_frequent": "back"},
]
GRID = 64
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}


def encoder_configs() -> dict[str, dict]:
    return {
        "image": {"type": "image", "arch": "tiny", "pretrained": False, "image_size": 32},
        "note": {"type": "text", "source": "minilm", "max_length": 32, "random_init": TINY_BERT},
        "metadata": {"type": "tabular", "schema": SCHEMA, "hidden": 32, "out_dim": 24, "token_dim": 16},
        "spectrum": {"type": "spectrum", "n_points": GRID, "start": 1000.0, "stop": 1100.0, "channels": 8, "out_dim": 32},
    }


def make_model(variant: str = "concat", modalities=ORDER, seed: int = 0, **fusion_options) -> MultimodalClassifier:
    torch.manual_seed(seed)
    cfgs = encoder_configs()
    encoders = {m: build_encoder(m, cfgs[m]) for m in modalities}
    opts = {"dim": 32} if variant != "concat" else {}
    if variant in ("cross_attention", "co_attention", "mmtm", "irene"):
        opts["heads"] = 2 if variant != "mmtm" else 8
    opts.update(fusion_options)
    return MultimodalClassifier(encoders, len(LABELS), variant, opts, fused_dim=32,
                                head_options={"hidden": 32, "blocks": 1, "dropout": 0.2})


def make_case(i: int = 0, missing: tuple[str, ...] = ()) -> Case:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    notes = ["Itchy lesion on the back, growing for three months.", "Bleeding nodule.", "No history given by the patient today."]
    meta = {"age": float(rng.integers(20, 90)), "sex": ["female", "male"][i % 2], "site": ["back", "face", "leg"][i % 3]}
    spectrum = np.stack([np.linspace(1000, 1100, 80), rng.normal(size=80)], 1)
    values = {"image": img, "note": notes[i % 3], "metadata": meta, "spectrum": spectrum}
    for m in missing:
        values[m] = None
    return Case.from_inputs(case_id=f"case-{i}", **values)


def save_suite(root, variants=("gated", "mmtm"), modalities=("image", "note", "metadata"), cohort: str = "dermatology",
               shared=("image", "note"), **save_kwargs):
    """Packages of a tiny suite under ``root/cohort/<variant>``: the ``shared`` encoders are frozen, hold the
    same weights in every package and are stored once in ``root/cohort/_shared/`` (as a real suite does)."""
    from pathlib import Path

    from core import save_package

    paths, first = [], None
    for i, variant in enumerate(variants):
        model = make_model(variant, modalities=modalities, seed=i)
        for m in shared:
            if m in model.encoders:
                if first is not None:
                    model.encoders[m].load_state_dict(first.encoders[m].state_dict())
                model.encoders[m].freeze()
        first = first or model
        files = {f"encoders.{m}.": f"../_shared/{m}_encoder.safetensors" for m in shared if m in model.encoders}
        kw = {"name": f"tiny-{variant}", "cohort": cohort, "mc_samples": 8,
              "training_data": {"synthetic": True, "description": "tiny generated cases"}, **save_kwargs}
        paths.append(save_package(model, Path(root) / cohort / variant, LABELS, shared=files, **kw))
    return paths


def write_demo_case(folder, i: int = 0, label: str = "malignant"):
    """A demo case folder as the app reads it (image, mask, note, metadata with its label); returns the folder."""
    import json
    from pathlib import Path

    folder = Path(folder)
    case = make_case(i)
    folder.mkdir(parents=True)
    case.image.save(folder / "image.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "note.txt").write_text(case.note)
    (folder / "metadata.json").write_text(json.dumps({**case.metadata, "label": label}))
    return folder


def open_image_page(models_root, case, monkeypatch, stability_samples: int = 4):
    """An AppTest session on the Image explanations page with ``case`` loaded and the packages under ``models_root``
    (``FUSIONLENS_MODELS``); asserts the page ran without an exception; returns the AppTest."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FUSIONLENS_MODELS", str(models_root))
    home = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
    at = AppTest.from_file(str(home), default_timeout=120).run()
    at.session_state["fl_case"] = case
    at.session_state["stability_samples"] = stability_samples
    at.switch_page("pages/4_Image_explanations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at
