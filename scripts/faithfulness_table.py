"""Measure explanation faithfulness of every dermatology package on the demo cohort's test split
(ground truth from the generator) and write it into each package's metrics.json; print the README table.

    python scripts/faithfulness_table.py [--n 100] [--cohort-n 6000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core import discover_packages, load_package
from core.data.cohorts.dermatology import generate_dermatology
from core.explain.cohort import cohort_faithfulness


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="test cases per package")
    ap.add_argument("--cohort-n", type=int, default=6000)
    ap.add_argument("--models", default="assets/models/dermatology")
    args = ap.parse_args()
    cohort = generate_dermatology(n=args.cohort_n, seed=0)
    test = cohort.split("test")
    # keep every lesion- and context-decided case we can within n, the rest in order
    decided = [it for it in test if it.evidence in ("lesion", "context")]
    items = (decided + [it for it in test if it not in decided])[: args.n]
    lines = ["| model | CAM mass in lesion: lesion-decided | CAM mass in lesion: context-decided | CAM mass in context ring: context-decided | pointing game | Shapley top = evidence |",
             "|---|---|---|---|---|---|"]
    for path in discover_packages(args.models):
        pkg = load_package(path)
        if "image" not in pkg.modalities and "note" not in pkg.modalities:
            continue
        t = time.perf_counter()
        f = cohort_faithfulness(pkg, items)
        f["seconds"] = round(time.perf_counter() - t, 1)
        m = json.loads((path / "metrics.json").read_text())
        m["faithfulness"] = f
        (path / "metrics.json").write_text(json.dumps(m, indent=2))
        fmt = lambda v: "—" if v != v else f"{v:.2f}"  # noqa: E731  (NaN -> dash)
        lines.append(f"| `{path.name}` | {fmt(f['cam_lesion_share_lesion_decided'])} | {fmt(f['cam_lesion_share_context_decided'])} "
                     f"| {fmt(f['cam_context_share_context_decided'])} | {fmt(f['pointing_game_rate'])} | {fmt(f['shapley_top_equals_evidence'])} |")
        print(path.name, f, flush=True)
    out = "\n".join(lines)
    Path(args.models, "faithfulness.md").write_text(out + "\n")
    print(out)


if __name__ == "__main__":
    main()
