"""Does seed 003's template note add anything beyond the metadata? Exact modality Shapley values on HAM10000 test images.

    python scripts/ham10000_template_note.py --data ../shared/data/ham10000 [--n 60] [--seed 1]

For ``gated_template_note`` (image + a note written from age / sex / site + metadata) and ``gated`` (image +
metadata), over a seeded sample of the lesion-grouped test split: the mean and mean |phi| of each modality's exact
Shapley value of the calibrated probability of the predicted class, and for the template-note package the
correlation of the note's and the metadata's values and how often they share a sign. Writes
``template_note_shapley.json`` next to the packages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_HAM10000"))
    ap.add_argument("--models", default=str(ROOT / "assets" / "models" / "ham10000"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_HAM10000) is required")
    from core.data.cohorts.ham10000 import load_ham10000_cohort
    from core.explain import explain_case
    from core.package import load_package

    test = load_ham10000_cohort(args.data, notes="metadata").split("test")
    rng = np.random.default_rng(args.seed)
    items = [test[i] for i in sorted(rng.choice(len(test), min(args.n, len(test)), replace=False))]
    out: dict = {"n": len(items), "seed": args.seed, "target": "predicted class, calibrated probability", "packages": {}}
    for name in ("gated_template_note", "gated"):
        pkg = load_package(Path(args.models) / name)
        vals: dict[str, list[float]] = {m: [] for m in pkg.modalities}
        for it in items:
            ex = explain_case(pkg, it.to_case(with_mask=False), parts=["modality"])
            for m, v in ex.modality["values"].items():
                vals[m].append(float(v))
        rec = {m: {"mean_abs": float(np.mean(np.abs(v))), "mean": float(np.mean(v))} for m, v in vals.items()}
        if "note" in vals:
            rec["corr_note_metadata"] = float(np.corrcoef(vals["note"], vals["metadata"])[0, 1])
            rec["same_sign_share"] = float(np.mean(np.sign(vals["note"]) == np.sign(vals["metadata"])))
        out["packages"][name] = rec
        print(name, json.dumps(rec))
    (Path(args.models) / "template_note_shapley.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
