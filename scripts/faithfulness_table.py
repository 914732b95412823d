"""Measure explanation faithfulness of every dermatology package against the generator's ground truth on
a FRESH generator seed (never used for training or tuning), write it into each package's metrics.json
under ``faithfulness`` and print the README tables, every measure beside its chance level.

    python scripts/faithfulness_table.py [--seed 9201] [--cohort-n 600] [--per-kind 20] [--only add gated]
    python scripts/faithfulness_table.py --table-only

Cases: ``--per-kind`` lesion-, context-, note- and metadata-decided cases each (the first ones of the
fresh cohort), explained for the predicted class and for the true class (core/explain/cohort.py).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from core import discover_packages, load_package
from core.explain.cohort import KINDS, cohort_faithfulness

TRAINING_SEED = 0   # the suite's cohort seed: never measure on it


def pick_items(items, per_kind: int):
    out = []
    for k in KINDS:
        out += [it for it in items if it.evidence == k][:per_kind]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=9201, help="fresh generator seed (not the training seed 0)")
    ap.add_argument("--cohort-n", type=int, default=600)
    ap.add_argument("--per-kind", type=int, default=20, help="cases per evidence kind (lesion/context/note/metadata)")
    ap.add_argument("--only", nargs="*", help="measure only these package folders (the others keep their numbers)")
    ap.add_argument("--models", default="assets/models/dermatology")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="only print the tables from the metrics.json files")
    args = ap.parse_args()
    if args.table_only:
        print(table(args.models))
        return
    if args.seed == TRAINING_SEED:
        raise SystemExit("seed 0 is the training cohort's seed; measure on a fresh seed (e.g. 9201).")
    import torch

    torch.set_num_threads(args.threads)
    from core.data.cohorts.dermatology import generate_dermatology

    cohort = generate_dermatology(n=args.cohort_n, seed=args.seed, workers=min(2, os.cpu_count() or 1))
    items = pick_items(cohort.items, args.per_kind)   # a fresh seed: every case is unseen, any split
    for path in discover_packages(args.models):
        if args.only and path.name not in args.only:
            continue
        pkg = load_package(path)
        if not {"image", "note", "metadata"} & set(pkg.modalities):
            continue
        t = time.perf_counter()
        f = cohort_faithfulness(pkg, items, args.method)
        f.update(seconds=round(time.perf_counter() - t, 1), generator_seed=args.seed, cohort_n=args.cohort_n,
                 per_kind=args.per_kind)
        m = json.loads((path / "metrics.json").read_text())
        m["faithfulness"] = f
        (path / "metrics.json").write_text(json.dumps(m, indent=2))
        print(path.name, round(f["seconds"]), "s", flush=True)
    out = table(args.models)
    Path(args.models, "faithfulness.md").write_text(out + "\n")
    print(out)


def _fmt(v, chance=None) -> str:
    if v is None or v != v:
        return "—"
    return f"{v:.2f}" if chance is None or chance != chance else f"{v:.2f} ({chance:.2f})"


def table(models: str) -> str:
    """Two markdown tables: the measures on all cases (predicted class), and by correctness."""
    head = ("| model | acc | lesion mass ratio: lesion-dec. | context ratio: context-dec. | lesion ratio: context-dec. "
            "| energy PG: lesion-dec. (chance) | pointing game, decisive region (chance) "
            "| Shapley decisive: lesion / context / note / metadata | Shapley decisive, balanced (chance) "
            "| gate w_l: lesion- / context-dec. |")
    lines = [head, "|" + "---|" * 10]
    head2 = ("| model | n correct / incorrect | pointing game: correct / incorrect (pred.) / incorrect (true cl.) "
             "| lesion ratio: correct / incorrect (pred.) / incorrect (true cl.) "
             "| Shapley balanced: correct / incorrect (pred.) / incorrect (true cl.) |")
    lines2 = [head2, "|" + "---|" * 5]
    for path in discover_packages(models):
        f = json.loads((path / "metrics.json").read_text()).get("faithfulness")
        if not f or "predicted" not in f:
            continue
        a = f["predicted"]["all"]
        sh = " / ".join(_fmt(a[f"shapley_decisive_{k}"]) for k in KINDS)
        lines.append(
            f"| `{path.name}` | {_fmt(f['accuracy'])} | {_fmt(a['lesion_ratio_lesion_decided'])} "
            f"| {_fmt(a['context_ratio_context_decided'])} | {_fmt(a['lesion_ratio_context_decided'])} "
            f"| {_fmt(a['energy_pg_lesion_decided'], a['energy_pg_lesion_decided_chance'])} "
            f"| {_fmt(a['pointing_game_decisive'], a['pointing_game_decisive_chance'])} | {sh} "
            f"| {_fmt(a['shapley_decisive_balanced'], a['shapley_decisive_balanced_chance'])} "
            f"| {_fmt(a['lesion_gate_lesion_decided'])} / {_fmt(a['lesion_gate_context_decided'])} |")
        c, ip, it = f["predicted"]["correct"], f["predicted"]["incorrect"], f["true"]["incorrect"]

        def trio(key: str, groups=(c, ip, it)) -> str:
            return " / ".join(_fmt(g[key]) for g in groups)

        lines2.append(f"| `{path.name}` | {c['n']} / {ip['n']} | {trio('pointing_game_decisive')} "
                      f"| {trio('lesion_ratio_lesion_decided')} | {trio('shapley_decisive_balanced')} |")
    return "\n".join(lines) + "\n\n" + "\n".join(lines2)


if __name__ == "__main__":
    main()
