"""What test-time augmentation costs per case on the product path (issue 16).

For each HAM10000 package named, every shipped HAM10000 demo case is predicted plainly (``Package.predict``)
and with the suite's validation-fitted TTA (``Package.predict_tta`` reading ``suite_inference.json``),
interleaved call by call in one process, on CPU time; prints and writes the medians and their ratio.

    OMP_NUM_THREADS=1 python scripts/tta_cost.py --out docs/tta_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["co_attention", "concat"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from core.case import Case
    from core.package import load_package
    from core.package.tta import load_settings

    cases = [Case.from_folder(p) for p in sorted((ROOT / "assets/cases/ham10000").iterdir()) if p.is_dir()]
    out = {"what": "CPU seconds per case, plain predict vs predict_tta with the suite's fitted settings "
                   "(interleaved, one thread, medians over cases x repeats)",
           "cases": len(cases), "repeats": args.repeats, "load_average": os.getloadavg(), "packages": {}}
    for name in args.models:
        pkg = load_package(ROOT / "assets/models/ham10000" / name)
        settings = load_settings(pkg)
        if settings is None:
            raise SystemExit(f"{name}: no test-time augmentation settings for these weights.")
        pkg.predict(cases[0])
        pkg.predict_tta(cases[0])                       # warm both paths
        plain, tta = [], []
        for _ in range(args.repeats):
            for c in cases:
                t = time.process_time()
                pkg.predict(c)
                plain.append(time.process_time() - t)
                t = time.process_time()
                pkg.predict_tta(c)
                tta.append(time.process_time() - t)
        p, q = statistics.median(plain), statistics.median(tta)
        out["packages"][name] = {"views": list(settings.views), "level": settings.level, "plain_s": round(p, 4),
                                 "tta_s": round(q, 4), "ratio": round(q / p, 2)}
        print(f"{name:14s} plain {p * 1000:.0f} ms   TTA ({len(settings.views)} {settings.level} views) {q * 1000:.0f} ms"
              f"   {q / p:.2f}x")
    out["load_average_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
