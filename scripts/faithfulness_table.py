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
    ap.add_argument("--cohort-n", type=int, default=10000)
    ap.add_argument("--only", nargs="*", help="measure only these package folders (the others keep their numbers)")
    ap.add_argument("--models", default="assets/models/dermatology")
    ap.add_argument("--generator-version", help="load a cached cohort of this generator version (the one the "
                                                "packages were trained on, recorded in their config.json)")
    ap.add_argument("--table-only", action="store_true", help="only print the table from the metrics.json files")
    args = ap.parse_args()
    if args.table_only:
        print(table(args.models))
        return
    if args.generator_version:
        import core.data.cohorts.dermatology as derm

        derm.GENERATOR_VERSION = args.generator_version
    cohort = generate_dermatology(n=args.cohort_n, seed=0)
    test = cohort.split("test")
    # keep every lesion- and context-decided case we can within n, the rest in order
    decided = [it for it in test if it.evidence in ("lesion", "context")]
    items = (decided + [it for it in test if it not in decided])[: args.n]
    for path in discover_packages(args.models):
        if args.only and path.name not in args.only:
            continue
        pkg = load_package(path)
        if "image" not in pkg.modalities and "note" not in pkg.modalities:
            continue
        t = time.perf_counter()
        f = cohort_faithfulness(pkg, items)
        f["seconds"] = round(time.perf_counter() - t, 1)
        m = json.loads((path / "metrics.json").read_text())
        m["faithfulness"] = f
        (path / "metrics.json").write_text(json.dumps(m, indent=2))
        print(path.name, f, flush=True)
    out = table(args.models)
    Path(args.models, "faithfulness.md").write_text(out + "\n")
    print(out)


def table(models: str) -> str:
    lines = ["| model | CAM mass in lesion: lesion-decided | CAM mass in lesion: context-decided | CAM mass in context ring: context-decided | pointing game | Shapley top = evidence | lesion gate w_l: lesion- / context-decided |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v != v else f"{v:.2f}"  # noqa: E731  (NaN -> dash)
    for path in discover_packages(models):
        f = json.loads((path / "metrics.json").read_text()).get("faithfulness")
        if f:
            lines.append(f"| `{path.name}` | {fmt(f['cam_lesion_share_lesion_decided'])} | {fmt(f['cam_lesion_share_context_decided'])} "
                         f"| {fmt(f['cam_context_share_context_decided'])} | {fmt(f['pointing_game_rate'])} "
                         f"| {fmt(f['shapley_top_equals_evidence'])} "
                         f"| {fmt(f.get('lesion_gate_lesion_decided', float('nan')))} / {fmt(f.get('lesion_gate_context_decided', float('nan')))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
