"""Retrain the dermatology suite's dual-expert packages (``gated_dual_expert``, ``gated_dual_entropy``) with
``train.stream_dropout`` (issue 15 §3) into a scratch folder, everything else as the suite trains them
(``core.training.suite.suite_configs``: cohort seed 0, 10,000 cases, the suite's training options).

    python scripts/dual_train.py --out /tmp/dual_out --p 0 0.3 0.6 [--only gated_dual_expert] [--balance 0.1]

Writes ``<out>/p<p>/dermatology/<package>`` for each p (p = 0: the suite's own config, a reproduction).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.training.config import config_from_dict
from core.training.suite import _prepare, suite_configs
from core.training.train import build_from_config, finish_package, fit, load_cohort
from core.training.dataset import cache_root

PACKAGES = ("gated_dual_expert", "gated_dual_entropy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--p", type=float, nargs="+", default=[0.0])
    ap.add_argument("--only", nargs="*", default=list(PACKAGES))
    ap.add_argument("--balance", type=float, default=0.0, help="train.stream_gate_balance (0: off)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cohort, splits = None, None
    for p in args.p:
        root = Path(args.out) / (f"p{p:g}" + (f"_b{args.balance:g}" if args.balance else ""))
        for name in args.only:
            d = suite_configs("dermatology", root, [name])[0]
            if p > 0:
                d["train"]["stream_dropout"] = p
            if args.balance:
                d["train"]["stream_gate_balance"] = args.balance
            cfg = config_from_dict(d)
            if cohort is None:
                cohort = load_cohort(cfg.data)
            model = build_from_config(cfg, cohort)
            if splits is None:   # both packages read the same cached streams (their frozen parts are equal)
                splits = _prepare(model, cohort, cfg, print)
            t = time.perf_counter()
            model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer,
                              cache_root() / "runs" / f"dual_p{p:g}_b{args.balance:g}_{name}")
            path = finish_package(model, cohort, splits["val"], splits["test"], cfg, info)
            m = json.loads((path / "metrics.json").read_text())
            print(json.dumps({"p": p, "balance": args.balance, "package": name, "seconds": round(time.perf_counter() - t, 1),
                              "val_bacc": info["best_val_balanced_accuracy"], "epochs": info["epochs_run"],
                              "test_bacc": m["balanced_accuracy"]["value"], "ece": m["ece"]["value"]}), flush=True)


if __name__ == "__main__":
    main()
