"""#14 §5: accuracy, calibration and the mechanism record of several packages on one fresh cohort seed.

The same numbers as ``python -m core evaluate --model DIR --cohort dermatology --seed S --mechanisms``
(classification metrics with the package's own temperature and MC samples; ``core.explain.mechanisms``),
but the frozen encoders run once for all packages: their features go through the content-keyed feature
cache (``core.training.dataset.build_split``), so comparing old and new packages on 2,000 cases costs
one encoder pass, not one per package and per measure.

    python scripts/mechanism_eval.py --seed 9901 --n 2000 --json out.json \\
        assets/models/dermatology/gated /tmp/newsuite/dermatology/gated
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("packages", nargs="+")
    ap.add_argument("--cohort", default="dermatology")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", help="write {package path: record} here")
    args = ap.parse_args(argv)

    from core.data.cohorts import COHORTS
    from core.explain.mechanisms import measure_split
    from core.package import load_package, posterior
    from core.training.dataset import build_split
    from core.training.metrics import classification_metrics
    from core.training.train import predict_split

    spec = COHORTS.get(args.cohort)
    if args.seed == spec.default_seed:
        ap.error("that is the training seed; evaluate on a seed the packages never saw.")
    t0 = time.perf_counter()
    cohort = spec.load(n=args.n, seed=args.seed)
    items = list(cohort.items)
    print(f"cohort {args.cohort} seed {args.seed}: {len(items)} cases ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    evidence = {it.case_id: it.evidence for it in items}
    out = {}
    for path in args.packages:
        t = time.perf_counter()
        pkg = load_package(path)
        split = build_split(pkg.model, items, pkg.labels, f"mechanism-eval-{args.cohort}-{args.seed}-{args.n}")
        det, mc, lv = predict_split(pkg.model, split, pkg.cfg.mc_samples, seed=1)
        post = posterior(det, mc, lv, pkg.temperature)
        y = split.labels.numpy()
        metrics = classification_metrics(y, post.calibrated.numpy(), post.probabilities.numpy(),
                                         post.normalised_entropy.numpy(), pkg.labels, n_boot=200)
        rec = measure_split(pkg.model, split, pkg.temperature, [evidence.get(i) for i in split.ids],
                            data={"cohort": args.cohort, "seed": args.seed, "split": "train+val+test", "n_generated": len(items)})
        ag, ev = rec.get("agreement_with_shapley", {}), rec.get("agreement_with_evidence", {})
        short = {"balanced_accuracy": metrics["balanced_accuracy"], "ece": metrics["ece"],
                 "error_detection_auroc": metrics["error_detection_auroc"],
                 "spread": {k: round(v, 4) for k, v in rec["spread"].items()},
                 "movement": {k: round(v["moved"], 4) for k, v in rec["movement"].items()},
                 "spearman": ag.get("spearman_mean"), "spearman_shuffled": ag.get("spearman_shuffled_cases"),
                 "top_match": ag.get("top_match"), "decisive": ev.get("balanced_weight_top_rate"),
                 "decisive_chance": ev.get("chance"), "shapley_decisive": ev.get("balanced_shapley_top_rate")}
        print(json.dumps({"package": path, **short}, default=float), flush=True)
        print(f"  {path}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out[path] = {"metrics": {k: metrics[k] for k in ("balanced_accuracy", "macro_f1", "auroc", "ece",
                                                           "ece_before_calibration", "error_detection_auroc")},
                     "mechanisms": rec}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
