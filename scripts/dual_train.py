"""Retrain the dermatology suite's dual-expert packages (``gated_dual_expert``, ``gated_dual_entropy``) with
``train.stream_dropout`` / ``train.stream_gate_balance`` and the encoder's ``lesion_mask_fill`` (issue 15 §3)
into a scratch folder, everything else as the suite trains them (``core.training.suite.suite_configs``:
cohort seed 0, 10,000 cases, the suite's training options).

    python scripts/dual_train.py --out /tmp/dual_out --p 0 0.3 [--only gated_dual_expert] [--balance 0.1]
        [--fill none|mean|blur] [--margin 0.15] [--dropout-fill other|mean]

Writes ``<out>/<run>/dermatology/<package>`` for each p, ``<run>`` naming the settings (``p0.3``, ``p0.3_b0.1``,
``fmean_p0.3``, ``fmean_m0_p0``...; p = 0 with no fill: the suite's own config, a reproduction). The first run
on a machine draws the cohort (one worker) and caches both streams; the global stream is also stored as the
plain image encoder's cache, so a run with another fill or margin computes only the lesion stream again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from core.training.config import config_from_dict
from core.training.dataset import _encoder_cache_key, cache_root
from core.training.suite import _prepare, suite_configs
from core.training.train import build_from_config, finish_package, fit, load_cohort

PACKAGES = ("gated_dual_expert", "gated_dual_entropy")


def run_name(p: float, balance: float, fill: str, margin: float, dropout_fill: str) -> str:
    name = (f"f{fill}_" if fill != "none" else "") + (f"m{margin:g}_" if margin != 0.15 else "") + f"p{p:g}"
    return name + (f"_b{balance:g}" if balance else "") + (f"_d{dropout_fill}" if dropout_fill != "other" else "")


def prime_global_cache(model, cohort, cfg, splits) -> None:
    """Store each split's cached global stream as the plain image encoder's cache file (``build_split`` reads it
    for a dual expert whose lesion stream is not cached yet: another fill or margin)."""
    enc = model.encoders["image"]
    tag = json.dumps(vars(cfg.data), sort_keys=True)
    for s, split in splits.items():
        path = cache_root() / "features" / f"image-{_encoder_cache_key(enc.backbone, cohort.split(s), tag + s)}.safetensors"
        d = split.prepared.get("image")
        if path.is_file() or d is None or "g_pooled" not in d:
            continue
        out = {k: d[f"g_{k}"].contiguous() for k in ("pooled", "l0", "l1", "l2", "tokens")}
        out["mask"] = torch.ones(out["tokens"].shape[:2], dtype=torch.bool)
        tmp = path.with_suffix(".tmp")
        save_file(out, str(tmp))
        tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--p", type=float, nargs="+", default=[0.0])
    ap.add_argument("--only", nargs="*", default=list(PACKAGES))
    ap.add_argument("--balance", type=float, default=0.0, help="train.stream_gate_balance (0: off)")
    ap.add_argument("--fill", default="none", choices=("none", "mean", "blur"), help="image lesion_mask_fill")
    ap.add_argument("--margin", type=float, default=0.15, help="the lesion crop's margin")
    ap.add_argument("--dropout-fill", default="other", choices=("other", "mean"), help="train.stream_dropout_fill")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cohort, splits = None, None
    for p in args.p:
        run = run_name(p, args.balance, args.fill, args.margin, args.dropout_fill)
        root = Path(args.out) / run
        for name in args.only:
            d = suite_configs("dermatology", root, [name])[0]
            if p > 0:
                d["train"]["stream_dropout"] = p
                if args.dropout_fill != "other":
                    d["train"]["stream_dropout_fill"] = args.dropout_fill
            if args.balance:
                d["train"]["stream_gate_balance"] = args.balance
            if args.fill != "none":
                d["encoders"]["image"]["lesion_mask_fill"] = args.fill
            if args.margin != 0.15:
                d["encoders"]["image"]["margin"] = args.margin
            cfg = config_from_dict(d)
            if cohort is None:
                t = time.perf_counter()
                from core.data.cohorts.dermatology import generate_dermatology

                generate_dermatology(n=cfg.data.n, seed=cfg.data.seed, image_size=cfg.data.image_size,
                                     workers=args.threads)          # drawn once into the cache (one worker)
                cohort = load_cohort(cfg.data)
                print(f"cohort ready ({time.perf_counter() - t:.0f} s)", flush=True)
            model = build_from_config(cfg, cohort)
            if splits is None:   # both packages read the same cached streams (their frozen parts are equal)
                t = time.perf_counter()
                splits = _prepare(model, cohort, cfg, print)
                prime_global_cache(model, cohort, cfg, splits)
                print(f"streams ready ({time.perf_counter() - t:.0f} s)", flush=True)
            t = time.perf_counter()
            model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer,
                              cache_root() / "runs" / f"dual_{run}_{name}")
            path = finish_package(model, cohort, splits["val"], splits["test"], cfg, info)
            m = json.loads((path / "metrics.json").read_text())
            print(json.dumps({"run": run, "p": p, "balance": args.balance, "fill": args.fill, "margin": args.margin,
                              "package": name, "seconds": round(time.perf_counter() - t, 1),
                              "val_bacc": info["best_val_balanced_accuracy"], "epochs": info["epochs_run"],
                              "test_bacc": m["balanced_accuracy"]["value"], "test_bacc_ci95": m["balanced_accuracy"]["ci95"],
                              "ece": m["ece"]["value"]}), flush=True)


if __name__ == "__main__":
    main()
