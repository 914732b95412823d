"""Evaluate every HAM10000 package on the ISIC 2018 Task 3 test images (an external test set) and print the
README table beside the lesion-grouped HAM10000 test split.

    python scripts/ham10000_eval.py --data ../shared/data/isic2018_task3_test [--models assets/models/ham10000]

The image encoder is frozen and shared by every package, so its outputs on the ISIC images are computed
once (the feature cache) and each package then runs its own fusion and head: the same numbers as
``python -m core evaluate --model DIR --data ...`` per package, in one pass. Nothing here is tuned: the
calibration temperature and referral threshold are the packages' own (fitted on HAM10000 validation).
Writes ``external_isic2018.json`` next to the packages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_ISIC2018"), help="ISIC 2018 Task 3 test folder")
    ap.add_argument("--models", default=str(ROOT / "assets" / "models" / "ham10000"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packages", nargs="*", help="only these packages, merged into an existing external_isic2018.json")
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_ISIC2018) is required")
    import torch

    torch.set_num_threads(args.threads)
    from core.data.loaders import load_dataset
    from core.package import discover_packages, load_package
    from core.training.dataset import build_split
    from core.training.train import evaluate_split

    cohort = load_dataset(args.data)
    items = cohort.split("test")
    out: dict[str, dict] = {"data": {"source": Path(args.data).name, "n": len(items),
                                     "class_counts": cohort.class_counts("test")}, "packages": {}}
    target = Path(args.models) / "external_isic2018.json"
    if args.packages and target.is_file():
        out["packages"] = json.loads(target.read_text())["packages"]
    t0 = time.perf_counter()
    for path in [p for p in discover_packages(Path(args.models)) if not args.packages or p.name in args.packages]:
        pkg = load_package(path)
        t = time.perf_counter()
        split = build_split(pkg.model, items, pkg.labels, tag="isic2018-task3-test")
        m, _, _ = evaluate_split(pkg.model, split, pkg.labels, pkg.temperature, pkg.mc_samples,
                                 n_boot=args.n_boot)
        test = json.loads((path / "metrics.json").read_text())
        out["packages"][path.name] = {"modalities": pkg.modalities, "isic2018": m,
                                      "ham10000_test": {k: test[k] for k in ("n", "balanced_accuracy", "ece",
                                                                             "ece_before_calibration", "sensitivity",
                                                                             "accuracy_vs_referred")}}
        print(f"{path.name:22s} ISIC bacc {m['balanced_accuracy']['value']:.3f}  HAM test bacc "
              f"{test['balanced_accuracy']['value']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    target.write_text(json.dumps(out, indent=2))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    def ci(m):
        return f"{m['value']:.3f} ({m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})"

    lines = ["| model | inputs | HAM10000 test bal. acc. (95% CI) | ISIC 2018 bal. acc. (95% CI) | ISIC mel / bcc / akiec sens. "
             "| ISIC ECE before → after | ISIC acc. at 20% referred |", "|---|---|---|---|---|---|---|"]
    for name, r in sorted(out["packages"].items(), key=lambda kv: -kv[1]["isic2018"]["balanced_accuracy"]["value"]):
        i, h = r["isic2018"], r["ham10000_test"]
        s = i["sensitivity"]
        lines.append(f"| `{name}` | {', '.join(r['modalities'])} | {ci(h['balanced_accuracy'])} | {ci(i['balanced_accuracy'])} "
                     f"| {s['mel']:.2f} / {s['bcc']:.2f} / {s['akiec']:.2f} | {i['ece_before_calibration']['value']:.3f} → "
                     f"{i['ece']['value']:.3f} | {i['accuracy_vs_referred']['accuracy'][4]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
