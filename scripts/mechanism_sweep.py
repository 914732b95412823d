"""Choose #14's training options for the mechanism variants on the TRAINING seed's validation split.

Each setting trains one variant of the dermatology suite on the cached features of the suite's own cohort
(seed 0, 10,000 cases: the split the suite trains on) and measures on its *validation* split (never the
test split, never an evaluation seed): balanced accuracy and the mechanism record of
``core.explain.mechanisms`` (per-case spread, Spearman with exact modality Shapley, top weight = the
generator's decisive modality). The printed JSON lines are what the choice in README §14 was made on.

    python scripts/mechanism_sweep.py --variant gated --set gate_entropy_weight=0.05 --set modality_dropout=0.3
    python scripts/mechanism_sweep.py --variant mmtm --fusion gate_residual=false --out /tmp/sweep.jsonl
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sklearn.metrics import balanced_accuracy_score


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _pairs(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"'{it}' is not KEY=VALUE.")
        k, v = it.split("=", 1)
        out[k] = _value(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", required=True)
    ap.add_argument("--set", action="append", default=[], help="train option KEY=VALUE")
    ap.add_argument("--fusion", action="append", default=[], help="fusion option KEY=VALUE")
    ap.add_argument("--cohort", default="dermatology")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    ap.add_argument("--seed", type=int, default=None, help="train.seed (weight init and sampling)")
    ap.add_argument("--from-package", default=None, help="start from this trained package (its train_config and "
                    "weights) instead of training: e.g. only --set mechanism_refit_epochs=1")
    ap.add_argument("--save", default=None, help="also write the trained package here (calibrated on validation, "
                                                  "its own metrics on the test split, as train-suite does)")
    args = ap.parse_args(argv)

    import torch

    from core.explain.mechanisms import measure_split
    from core.training.config import DataConfig, config_from_dict
    from core.training.suite import _prepare, suite_configs
    from core.package import load_package
    from core.training.train import (build_from_config, finish_package, fit, load_cohort, predict_split,
                                     refit_mechanism_scalars)
    from core.uncertainty import fit_temperature
    from core.uncertainty.calibration import expected_calibration_error

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="sweep-"))
    if args.from_package:
        pkg = load_package(args.from_package)
        pkg_cfg = json.loads((Path(args.from_package) / "config.json").read_text())
        raw = pkg_cfg["train_config"]
        # load_package freezes every weight for inference; the encoders the package trained stay trainable, so that
        # a saved refit records them as it found them ("frozen": false), not as frozen
        for m, enc_cfg in pkg_cfg["architecture"]["modalities"].items():
            if not enc_cfg.get("frozen", False):
                pkg.model.encoders[m].requires_grad_(True)
        if raw["variant"] != args.variant:
            ap.error(f"{args.from_package} is a '{raw['variant']}' package.")
        raw["out"] = str(tmp / "out")
    else:
        raw = suite_configs(args.cohort, tmp, [args.variant], args.n, args.epochs)
        raw = [c for c in raw if c["variant"] == args.variant][0]
    raw["train"].update(_pairs(args.set))
    if args.seed is not None:
        raw["train"]["seed"] = args.seed
    if args.save:
        raw["out"] = args.save
    raw.setdefault("fusion_options", {}).update(_pairs(args.fusion))
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    cohort = load_cohort(DataConfig(**vars(cfg.data)))
    model = pkg.model if args.from_package else build_from_config(cfg, cohort)
    if args.from_package:   # only options that do not change the forward (mmtm's weights_from), recorded in the package
        for k, v in _pairs(args.fusion).items():
            setattr(model.fusion, k, v)
            model.fusion_options[k] = v
    splits = _prepare(model, cohort, cfg, lambda s: None)
    t1 = time.perf_counter()
    if args.from_package:
        info = {"from_package": args.from_package}
        if cfg.train.mechanism_refit_epochs > 0:
            info["mechanism_refit"] = refit_mechanism_scalars(model, splits["train"], cfg.train)
    else:
        model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer, tmp / "run")
    det, _, _ = predict_split(model, splits["val"], 0)
    temperature = fit_temperature(det, splits["val"].labels)
    evidence = {it.case_id: it.evidence for it in cohort.items}
    y = splits["val"].labels
    # calibration on validation: ECE with the temperature fitted on all of it (optimistic), and cross-fitted
    # (the temperature fitted on one half of validation, ECE measured on the other, both ways, averaged)
    ece_val = expected_calibration_error(torch.softmax(det / temperature, -1).numpy(), y.numpy())
    halves = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).chunk(2)
    ece_cross = sum(expected_calibration_error(torch.softmax(det[b] / fit_temperature(det[a], y[a]), -1).numpy(),
                                               y[b].numpy()) for a, b in (halves, halves[::-1])) / 2
    ev_val = [evidence.get(i) for i in splits["val"].ids]
    rec = measure_split(model, splits["val"], temperature, ev_val)
    other = {}
    if getattr(model.fusion, "weights_from", None) is not None:   # mmtm: both readings of the same trained model
        mode = model.fusion.weights_from
        model.fusion.weights_from = alt = "gates" if mode == "flow" else "flow"
        r2 = measure_split(model, splits["val"], temperature, ev_val)
        model.fusion.weights_from = mode
        other = {"weights_from": alt,
                 "spearman": r2.get("agreement_with_shapley", {}).get("spearman_mean"),
                 "top_match": r2.get("agreement_with_shapley", {}).get("top_match"),
                 "decisive": r2.get("agreement_with_evidence", {}).get("balanced_weight_top_rate"),
                 "spread_modality_weights": {k: round(v, 3) for k, v in r2["spread"].items() if k.startswith("modality_weights")}}
    bacc = balanced_accuracy_score(splits["val"].labels.numpy(), det.argmax(-1).numpy())
    ag, ev = rec.get("agreement_with_shapley", {}), rec.get("agreement_with_evidence", {})
    weights = {k: round(v, 3) for k, v in rec["spread"].items() if k.startswith("modality_weights")}
    line = {"variant": args.variant, "train": _pairs(args.set), "fusion": _pairs(args.fusion), "split": "val (seed 0)",
            "seed": cfg.train.seed, "val_bacc": round(float(bacc), 4), "val_ece": round(ece_val, 4),
            "val_ece_crossfit": round(ece_cross, 4), "temperature_fit": round(temperature, 3),
            "spread_modality_weights": weights,
            "max_spread": round(max(rec["spread"].values()), 3) if rec["spread"] else None,
            "spread_all": {k: round(v, 3) for k, v in rec["spread"].items()},
            "spearman": ag.get("spearman_mean"), "spearman_shuffled": ag.get("spearman_shuffled_cases"),
            "top_match": ag.get("top_match"), "decisive": ev.get("balanced_weight_top_rate"),
            "decisive_per": {m: round(p["weight_top_rate"], 3) for m, p in ev.get("per_decisive_modality", {}).items()},
            "shapley_decisive": ev.get("balanced_shapley_top_rate"),
            "movement": {k: round(v["moved"], 3) for k, v in rec["movement"].items()},
            "epochs_run": info.get("epochs_run", info.get("epochs")), "from_package": args.from_package,
            "refit": info.get("mechanism_refit"), "seconds": round(time.perf_counter() - t1, 1),
            "prepare_seconds": round(t1 - t0, 1), "other_reading": other or None}
    if args.save:
        line["saved"] = str(finish_package(model, cohort, splits["val"], splits["test"], cfg, info))
    text = json.dumps(line, default=float)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
