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
    args = ap.parse_args(argv)

    import torch

    from core.explain.mechanisms import measure_split
    from core.training.config import DataConfig, config_from_dict
    from core.training.suite import _prepare, suite_configs
    from core.training.train import build_from_config, fit, load_cohort, predict_split
    from core.uncertainty import fit_temperature

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="sweep-"))
    raw = suite_configs(args.cohort, tmp, [args.variant], args.n, args.epochs)
    raw = [c for c in raw if c["variant"] == args.variant][0]
    raw["train"].update(_pairs(args.set))
    raw.setdefault("fusion_options", {}).update(_pairs(args.fusion))
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    cohort = load_cohort(DataConfig(**vars(cfg.data)))
    model = build_from_config(cfg, cohort)
    splits = _prepare(model, cohort, cfg, lambda s: None)
    t1 = time.perf_counter()
    model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer, tmp / "run")
    det, _, _ = predict_split(model, splits["val"], 0)
    temperature = fit_temperature(det, splits["val"].labels)
    evidence = {it.case_id: it.evidence for it in cohort.items}
    rec = measure_split(model, splits["val"], temperature, [evidence.get(i) for i in splits["val"].ids])
    bacc = balanced_accuracy_score(splits["val"].labels.numpy(), det.argmax(-1).numpy())
    ag, ev = rec.get("agreement_with_shapley", {}), rec.get("agreement_with_evidence", {})
    weights = {k: round(v, 3) for k, v in rec["spread"].items() if k.startswith("modality_weights")}
    line = {"variant": args.variant, "train": _pairs(args.set), "fusion": _pairs(args.fusion), "split": "val (seed 0)",
            "val_bacc": round(float(bacc), 4), "spread_modality_weights": weights,
            "max_spread": round(max(rec["spread"].values()), 3) if rec["spread"] else None,
            "spread_all": {k: round(v, 3) for k, v in rec["spread"].items()},
            "spearman": ag.get("spearman_mean"), "spearman_shuffled": ag.get("spearman_shuffled_cases"),
            "top_match": ag.get("top_match"), "decisive": ev.get("balanced_weight_top_rate"),
            "decisive_per": {m: round(p["weight_top_rate"], 3) for m, p in ev.get("per_decisive_modality", {}).items()},
            "shapley_decisive": ev.get("balanced_shapley_top_rate"),
            "movement": {k: round(v["moved"], 3) for k, v in rec["movement"].items()},
            "epochs_run": info.get("epochs_run", info.get("epochs")), "seconds": round(time.perf_counter() - t1, 1),
            "prepare_seconds": round(t1 - t0, 1)}
    text = json.dumps(line, default=float)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
