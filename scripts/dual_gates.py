"""The dual-expert lesion gate by evidence kind on a fresh generated dermatology cohort (issue 15 §3):
mean w_l on lesion-, context-, note-, metadata-decided and ambiguous cases, every case of the cohort
(not only the faithfulness table's first ``--per-kind``), plus balanced accuracy on the cohort.

    python scripts/dual_gates.py --seed 9932 --n 600 PACKAGE_DIR [PACKAGE_DIR ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from core import load_package

KINDS = ("lesion", "context", "note", "metadata", None)


def measure(pkg, items, batch: int = 32) -> dict:
    gates, pred, true = [], [], []
    for s in range(0, len(items), batch):
        part = items[s:s + batch]
        for it, p in zip(part, pkg.predict([it.to_case(with_mask=True) for it in part], mc_samples=1)):
            gates.append(float(p.diagnostics.get("image_lesion_gate", np.nan)))
            pred.append(p.label)
            true.append(it.label)
    gates, pred, true = np.array(gates), np.array(pred), np.array(true)
    ev = np.array([str(it.evidence) for it in items])
    out = {"n": len(items), "balanced_accuracy": float(balanced_accuracy_score(true, pred)),
           "accuracy": float((pred == true).mean())}
    for k in KINDS:
        sel = ev == str(k)
        out[f"w_l_{k or 'ambiguous'}"] = float(np.nanmean(gates[sel])) if sel.any() else None
        out[f"w_l_sd_{k or 'ambiguous'}"] = float(np.nanstd(gates[sel])) if sel.any() else None
        out[f"n_{k or 'ambiguous'}"] = int(sel.sum())
        out[f"accuracy_{k or 'ambiguous'}"] = float((pred[sel] == true[sel]).mean()) if sel.any() else None
    out["w_l_difference"] = out["w_l_lesion"] - out["w_l_context"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="+")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.seed == 0:
        raise SystemExit("seed 0 is the training cohort's seed.")
    import torch

    torch.set_num_threads(args.threads)
    from core.data.cohorts.dermatology import generate_dermatology

    cohort = generate_dermatology(n=args.n, seed=args.seed, workers=min(2, os.cpu_count() or 1))
    res = {}
    for path in args.packages:
        res[path] = measure(load_package(path), cohort.items)
        r = res[path]
        print(f"{path}: w_l lesion {r['w_l_lesion']:.3f} (n {r['n_lesion']}) context {r['w_l_context']:.3f} "
              f"(n {r['n_context']}) diff {r['w_l_difference']:+.3f}; note {r['w_l_note']:.3f} metadata "
              f"{r['w_l_metadata']:.3f}; bacc {r['balanced_accuracy']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "n": args.n, "packages": res}, f, indent=2)


if __name__ == "__main__":
    main()
