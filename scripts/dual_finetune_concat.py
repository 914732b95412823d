"""Issue 15 §3, second half (scratch, not shipped): the dermatology ``concat`` package with its image
encoder's tail fine-tuned on cached early-stage maps (``core.training.finetune``, as the HAM10000 suite
does), everything else as the suite trains ``concat`` (cohort seed 0, 10,000 cases).

    python scripts/dual_finetune_concat.py --out /tmp/ft_concat
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.data.cohorts.ham10000 import finetune_stage1
from core.training.config import config_from_dict
from core.training.dataset import cache_root
from core.training.finetune import prime_feature_cache
from core.training.suite import _prepare, suite_configs
from core.training.train import build_from_config, finish_package, fit, load_cohort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = suite_configs("dermatology", Path(args.out), ["concat"])[0]
    cfg = config_from_dict(d)
    cohort = load_cohort(cfg.data)
    model = build_from_config(cfg, cohort)
    enc_cfg = {"arch": "efficientnet_lite0", "image_size": 224, "token_grid": model.encoders["image"].token_grid}
    t = time.perf_counter()
    state, info, feats = finetune_stage1(cohort, enc_cfg, {"epochs": args.epochs}, log=print)
    print("fine-tune", json.dumps({k: v for k, v in info.items() if not isinstance(v, (list, dict))}), flush=True)
    model.encoders["image"].load_state_dict(state)
    model.encoders["image"].freeze()
    tag = json.dumps(vars(cfg.data), sort_keys=True)
    for s in ("train", "val", "test"):
        prime_feature_cache(model.encoders["image"], cohort.split(s), tag + s, feats[s])
    splits = _prepare(model, cohort, cfg, print)
    model, tinfo = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer, cache_root() / "runs" / "dual_ft_concat")
    path = finish_package(model, cohort, splits["val"], splits["test"], cfg, {**tinfo, "finetune": info})
    m = json.loads((path / "metrics.json").read_text())
    print(json.dumps({"val_bacc": tinfo["best_val_balanced_accuracy"], "test_bacc": m["balanced_accuracy"],
                      "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
