"""HAM10000 as a demo suite cohort: real dermoscopy (image + metadata), path from the CLI or environment.

The data are never part of the repository (CC BY-NC, see ``HAM10000_LICENCE``): ``python -m core
train-suite --cohort ham10000 --data PATH`` or ``FUSIONLENS_HAM10000=PATH`` names the folder holding
``HAM10000_metadata.csv``, the images and (optionally) ``HAM10000_segmentations_lesion/``.
``dx_type`` (how the diagnosis was made) is a label leak and never an input: the loader keeps it only
in ``CohortItem.extras``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..base import Cohort, DataError
from ..loaders.ham10000 import HAM_LICENCE, load_ham10000

logger = logging.getLogger(__name__)

ENV = "FUSIONLENS_HAM10000"
MASKS_DIR = "HAM10000_segmentations_lesion"
# EfficientNet-Lite0 at the images' native 200 x 150 (no upscaling), 3 x 3 patch tokens of the last map
IMAGE_ENCODER = {"type": "image", "arch": "efficientnet_lite0", "pretrained": False, "image_size": [200, 150],
                 "token_grid": 3, "frozen": True}
# sized for two shared CPU cores: one thread (two contended threads measured 2-3x slower per step).
# 12 x 3,200 sampled maps = ~5.5 passes over the 6,969 training images; the first shipped run had 3 x 2,400
# (less than one pass) and its validation balanced accuracy was still rising (0.50 -> 0.56 -> 0.57).
FINETUNE = {"epochs": 12, "samples_per_epoch": 3200, "batch_size": 32, "lr": 1e-3, "backbone_lr": 4e-4, "threads": 1}


def data_path(path: str | Path | None = None) -> Path:
    p = path or os.environ.get(ENV)
    if not p:
        raise DataError(f"the ham10000 cohort needs its data: pass --data PATH or set {ENV}=PATH (the folder with "
                        "HAM10000_metadata.csv).")
    return Path(p)


def load_ham10000_cohort(path: str | Path | None = None, seed: int = 0, notes: str = "metadata") -> Cohort:
    root = data_path(path)
    masks = root / MASKS_DIR
    return load_ham10000(root, masks_dir=masks if masks.is_dir() else None, seed=seed, notes=notes)


def finetune_stage1(cohort: Cohort, enc_cfg: dict[str, Any], opts: dict[str, Any] | None = None,
                    log: Callable[[str], None] = logger.info) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, dict]]:
    """Fine-tune the image encoder's top blocks (see :mod:`core.training.finetune`). Returns the encoder
    state, a training record, and per split the fine-tuned encoder's features (to prime the stage-2 cache)."""
    from ...encoders.image import ImageEncoder
    from ...training.dataset import cache_root
    from ...training.finetune import _items_key, encode_frozen, finetune_top, full_features, tail_logits

    opts = {**FINETUNE, **(opts or {})}
    enc = ImageEncoder(enc_cfg.get("arch", "efficientnet_lite0"), True, enc_cfg.get("image_size", [200, 150]),
                       enc_cfg.get("token_grid"))
    cache = cache_root() / "finetune"
    frozen = {s: encode_frozen(enc, cohort.split(s), cache, log=log, what=s) for s in ("train", "val", "test")}
    y = {s: torch.tensor([cohort.labels.index(it.label) for it in cohort.split(s)]) for s in frozen}
    # the fine-tuned state is cached too (keyed by the data and the options), so a failed stage 2 reruns alone
    key = hashlib.sha256(json.dumps([_items_key(enc, cohort.split(s)) for s in frozen] + [opts], sort_keys=True)
                         .encode()).hexdigest()[:20]
    done_state, done_info = cache / f"stage1-{key}.safetensors", cache / f"stage1-{key}.json"
    if done_state.is_file() and done_info.is_file():
        enc.load_state_dict(load_file(str(done_state)))
        enc.freeze().eval()
        info = json.loads(done_info.read_text())
        log(f"  reusing the fine-tuned encoder from {done_state}")
    else:
        info = finetune_top(enc, frozen["train"], y["train"], frozen["val"], y["val"], len(cohort.labels), log=log,
                            **opts)
        clf = info.pop("classifier")
        pred = tail_logits(enc, clf, frozen["test"]["map"]).argmax(1)
        rec = [float((pred[y["test"] == c] == c).float().mean()) for c in range(len(cohort.labels))
               if (y["test"] == c).any()]
        info["test_balanced_accuracy_linear_head"] = round(sum(rec) / len(rec), 4)
        log(f"  fine-tuned: val bacc {info['best_val_balanced_accuracy']:.3f}, test bacc (its own linear head) "
            f"{info['test_balanced_accuracy_linear_head']:.3f}, {info['train_seconds']:.0f} s")
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(done_state))
        done_info.write_text(json.dumps(info, indent=2))
    feats = {s: full_features(enc, frozen[s]) for s in frozen}
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}, info, feats


__all__ = ["ENV", "IMAGE_ENCODER", "FINETUNE", "HAM_LICENCE", "data_path", "load_ham10000_cohort", "finetune_stage1"]
