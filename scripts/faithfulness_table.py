"""Measure explanation faithfulness of every dermatology package against the generator's ground truth on
a FRESH generator seed (never used for training or tuning), write it into each package's metrics.json
under ``faithfulness`` and print the README tables, every measure beside its chance level.

    python scripts/faithfulness_table.py [--seed 9201] [--cohort-n 600] [--per-kind 20] [--only add gated]
    python scripts/faithfulness_table.py --table-only
    python scripts/faithfulness_table.py --seed 9931 --method feature_occlusion    # another image map
    python scripts/faithfulness_table.py --seed 9932 --method pixel_ig --json out.json   # a look, nothing stored
    python scripts/faithfulness_table.py --seed 9935 --method median_ig   # IG from the median features (session 10)

Cases: ``--per-kind`` lesion-, context-, note- and metadata-decided cases each (the first ones of the
fresh cohort), explained for the predicted class and for the true class (core/explain/cohort.py).

``--method``: the image map, a CAM (``core.explain.gradcam.CAM_METHODS``, default the product's Grad-CAM) or a map of
``core.explain.image_maps.PIXEL_MAPS`` (e.g. ``feature_occlusion``, the map the known-answer controls validated,
``pixel_ig``). Grad-CAM's measures (all parts) live under ``faithfulness``; another map's image measures only (the
Shapley, note and table measures do not depend on the map) are measured on the lesion- and context-decided cases and
stored under ``faithfulness_maps[<method>]`` beside them, their table in ``faithfulness_<method>.md``. A package whose
image encoder cannot draw the map (a dual expert: no one middle stage) is recorded as skipped, with the reason.
``--json PATH`` writes the results there instead of into the packages (a validation look on a choice seed);
``--store-json A.json [B.json ...] --seed S`` stores such results later (e.g. runs side by side, one per group of
packages), after checking that every result was measured on ``S``. A choice seed (``CHOICE_SEEDS``: a choice was
made on it) is never stored, by either path.
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
#: last-stage Grad-CAM, measured with every part and stored under "faithfulness" (every suite's default until session
#: 10; the dermatology suite's default is now median_ig, whose measures go under faithfulness_maps)
PRODUCT_METHOD = "gradcam"
MAP_KINDS = ("lesion", "context")   # where an image map is measured (the other kinds have no image region)
#: generator seeds whose results are never stored as the packages' report figures (``--store-json`` refuses them):
#: the training seed 0, and the seeds a choice was made on -- 9932 (the dermatology suite's measured image map,
#: assets/models/dermatology/faithfulness_maps_choice.md) and 9935 (the gate that made median IG the default,
#: median_ig_choice.md; its report figures come from 9937)
CHOICE_SEEDS = frozenset({0, 9932, 9935})
#: image maps that read the middle stage of a plain image encoder (core.explain.image_maps)
MIDDLE_STAGE_MAPS = ("feature_occlusion", "median_ig")


def stored_results(paths: list[str], seed: int, models: str | Path) -> dict[str, dict]:
    """The results of ``--json`` runs (package folder name -> results) that ``--store-json`` may write into the
    packages, all checked before anything is written: raises SystemExit (one sentence, non-zero exit) when no file
    or no result is given, when a result's generator seed is not ``seed`` (``--seed``), when ``seed`` is a choice
    seed (:data:`CHOICE_SEEDS`), or when a result names no package (metrics.json) under ``models``."""
    if not paths:
        raise SystemExit("--store-json needs at least one results file written by --json.")
    if seed in CHOICE_SEEDS:
        raise SystemExit(f"seed {seed} is a choice seed (a map was chosen on it): its results are never stored as the "
                         "packages' report figures; measure on a report seed.")
    stored: dict[str, dict] = {}
    for f in paths:
        stored.update(json.loads(Path(f).read_text()))
    if not stored:
        raise SystemExit(f"--store-json: no results in {', '.join(paths)}; nothing to store.")
    for name, f in stored.items():
        if f.get("generator_seed") != seed:
            raise SystemExit(f"--store-json: the results of {name} were measured on generator seed "
                             f"{f.get('generator_seed')}, not --seed {seed}; nothing was stored.")
        if not (Path(models, name) / "metrics.json").is_file():
            raise SystemExit(f"--store-json: {name} has no metrics.json under {models}; nothing was stored.")
    return stored


def pick_items(items, per_kind: int, kinds=KINDS):
    out = []
    for k in kinds:
        out += [it for it in items if it.evidence == k][:per_kind]
    return out


def map_unavailable(pkg, method: str) -> str | None:
    """Why ``pkg`` cannot draw the image map ``method`` (None when it can): the middle-stage maps need a plain image
    encoder (core.explain.image_maps.middle_stage_function)."""
    from core.explain.image_ig import plain_image_encoder

    enc = pkg.model.encoders["image"] if "image" in pkg.model.encoders else None
    if enc is None:
        return "no image encoder"
    if method in MIDDLE_STAGE_MAPS and not plain_image_encoder(enc):
        return "dual-expert image encoder: no one middle stage to " + ("occlude" if method == "feature_occlusion" else "read")
    return None


def measure_map(pkg, items, method: str) -> dict:
    """The image measures of ``method`` on ``items`` (lesion- and context-decided cases), predicted and true class,
    with the seconds per package and per map drawn; ``{"skipped": why}`` where the package cannot draw it."""
    why = map_unavailable(pkg, method)
    if why:
        return {"method": method, "skipped": why}
    t = time.perf_counter()
    f = cohort_faithfulness(pkg, items, method, parts=("image",))
    f["seconds"] = round(time.perf_counter() - t, 1)
    n_maps = f["n"] + f["predicted"]["incorrect"]["n"]   # correct cases share one map for both targets
    f.update(n_maps=n_maps, seconds_per_map=round(f["seconds"] / max(n_maps, 1), 3))
    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=9201, help="fresh generator seed (not the training seed 0)")
    ap.add_argument("--cohort-n", type=int, default=600)
    ap.add_argument("--per-kind", type=int, default=20, help="cases per evidence kind (lesion/context/note/metadata)")
    ap.add_argument("--only", nargs="*", help="measure only these package folders (the others keep their numbers)")
    ap.add_argument("--models", default="assets/models/dermatology")
    ap.add_argument("--method", default=PRODUCT_METHOD,
                    help="image map: a CAM (gradcam: the product's, all parts) or e.g. feature_occlusion / median_ig / pixel_ig "
                         "(image measures only, under faithfulness_maps[method])")
    ap.add_argument("--json", help="write the results to this file instead of the packages' metrics.json (a look)")
    ap.add_argument("--store-json", nargs="*", help="store the results of --json runs (e.g. one per group of packages, "
                    "run side by side) into the packages' metrics.json and write the table; measures nothing. Every "
                    "result must have been measured on --seed, which may not be a choice seed (CHOICE_SEEDS)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="only print the tables from the metrics.json files")
    args = ap.parse_args()
    product = args.method == PRODUCT_METHOD and not args.json
    if args.store_json is not None:   # given, even with no files ([]): store, never fall through to measuring
        stored = stored_results(args.store_json, args.seed, args.models)
        for name, f in stored.items():
            path = Path(args.models, name)
            m = json.loads((path / "metrics.json").read_text())
            m.setdefault("faithfulness_maps", {})[f["method"]] = f
            (path / "metrics.json").write_text(json.dumps(m, indent=2))
        methods = {f["method"] for f in stored.values()}
        for method in methods:
            out = map_table(args.models, method)
            Path(args.models, f"faithfulness_{method}.md").write_text(out + "\n")
            print(out)
        return
    if args.table_only:
        print(table(args.models) if product else map_table(args.models, args.method))
        return
    if args.seed == TRAINING_SEED:
        raise SystemExit("seed 0 is the training cohort's seed; measure on a fresh seed (e.g. 9201).")
    if args.seed in CHOICE_SEEDS and not args.json:
        raise SystemExit(f"seed {args.seed} is a choice seed: its results may only be looked at (--json PATH), never "
                         "stored in the packages.")
    import torch

    torch.set_num_threads(args.threads)
    from core.data.cohorts.dermatology import generate_dermatology

    cohort = generate_dermatology(n=args.cohort_n, seed=args.seed, workers=min(2, os.cpu_count() or 1))
    # a fresh seed: every case is unseen, any split
    items = pick_items(cohort.items, args.per_kind, KINDS if product else MAP_KINDS)
    looked: dict[str, dict] = {}
    for path in discover_packages(args.models):
        if args.only and path.name not in args.only:
            continue
        pkg = load_package(path)
        if not ({"image", "note", "metadata"} if product else {"image"}) & set(pkg.modalities):
            continue
        t = time.perf_counter()
        f = cohort_faithfulness(pkg, items, args.method) if product else measure_map(pkg, items, args.method)
        f.update(seconds=round(time.perf_counter() - t, 1), generator_seed=args.seed, cohort_n=args.cohort_n,
                 per_kind=args.per_kind)
        if args.json:   # written after every package: a stopped run keeps what it measured
            looked[path.name] = f
            Path(args.json).write_text(json.dumps(looked, indent=2))
        else:
            m = json.loads((path / "metrics.json").read_text())
            if product:
                m["faithfulness"] = f
            else:   # beside the product's Grad-CAM results, which stay as they are
                m.setdefault("faithfulness_maps", {})[args.method] = f
            (path / "metrics.json").write_text(json.dumps(m, indent=2))
        print(path.name, round(f["seconds"]), "s", f.get("skipped", ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(looked, indent=2))
        print(map_table(args.models, args.method, looked))
        return
    out = table(args.models) if product else map_table(args.models, args.method)
    Path(args.models, "faithfulness.md" if product else f"faithfulness_{args.method}.md").write_text(out + "\n")
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


FUSION_EXCLUDED_PREFIX = "unimodal_"   # the goals' medians run over the fusion variants


def map_results(models: str, method: str, looked: dict | None = None) -> dict[str, dict]:
    """package folder name -> its measures of ``method`` (``looked``: results not stored in the packages; else each
    package's metrics.json -> faithfulness_maps[method], or -> faithfulness when that was measured with ``method``)."""
    if looked is not None:
        return dict(looked)
    out = {}
    for path in discover_packages(models):
        m = json.loads((path / "metrics.json").read_text())
        f = (m.get("faithfulness_maps") or {}).get(method)
        if f is None and (m.get("faithfulness") or {}).get("method") == method:
            f = m["faithfulness"]
        if f:
            out[path.name] = f
    return out


def map_summary(results: dict[str, dict]) -> dict:
    """Best / median over the fusion variants that could draw the map: decisive-region pointing game, lesion mass
    ratio on lesion-decided cases, and the chance levels beside them (medians over the same variants)."""
    import numpy as np

    rows = {k: v["predicted"]["all"] for k, v in results.items()
            if not k.startswith(FUSION_EXCLUDED_PREFIX) and "predicted" in v}
    skipped = sorted(k for k, v in results.items() if "skipped" in v)
    if not rows:
        return {"n_variants": 0, "skipped": skipped}

    def stat(key: str) -> dict:
        vals = {k: r[key] for k, r in rows.items() if r.get(key) is not None and r[key] == r[key]}
        if not vals:
            return {}
        best = max(vals, key=vals.get)
        return {"best": vals[best], "best_variant": best, "median": float(np.median(list(vals.values()))),
                "lowest": min(vals.values())}

    return {"n_variants": len(rows), "variants": sorted(rows), "skipped": skipped,
            "pointing_game_decisive": stat("pointing_game_decisive"),
            "pointing_game_decisive_chance_median": float(np.median([r["pointing_game_decisive_chance"]
                                                                     for r in rows.values()])),
            "lesion_ratio_lesion_decided": stat("lesion_ratio_lesion_decided"),
            "context_ratio_context_decided": stat("context_ratio_context_decided"),
            "lesion_ratio_context_decided": stat("lesion_ratio_context_decided"),
            "seconds_per_map_median": float(np.median([results[k].get("seconds_per_map", float("nan")) for k in rows]))}


def map_table(models: str, method: str, looked: dict | None = None) -> str:
    """The image measures of one map per package (predicted class, all cases; chance in brackets), the seconds it
    took, and a last line with the best / median over the fusion variants."""
    from core.explain.gradcam import NAMES

    results = map_results(models, method, looked)
    head = (f"| model ({NAMES.get(method, method)}) | acc (lesion- + context-dec.) | lesion mass ratio: lesion-dec. (1) "
            "| context ratio: context-dec. (1) | lesion ratio: context-dec. | energy PG: lesion box "
            "| pointing game, decisive region | pointing: lesion-dec. | pointing: context-dec. | s per map | s |")
    lines = [head, "|" + "---|" * 11]
    for name, f in results.items():
        if "skipped" in f:
            lines.append(f"| `{name}` | — | — | — | — | — | — | — | — | — | — (skipped: {f['skipped']}) |")
            continue
        a = f["predicted"]["all"]
        lines.append(
            f"| `{name}` | {_fmt(f['accuracy'])} | {_fmt(a['lesion_ratio_lesion_decided'])} "
            f"| {_fmt(a['context_ratio_context_decided'])} | {_fmt(a['lesion_ratio_context_decided'])} "
            f"| {_fmt(a['energy_pg_lesion_decided'], a['energy_pg_lesion_decided_chance'])} "
            f"| {_fmt(a['pointing_game_decisive'], a['pointing_game_decisive_chance'])} "
            f"| {_fmt(a['pointing_game_lesion_decided'], a['pointing_game_lesion_decided_chance'])} "
            f"| {_fmt(a['pointing_game_context_decided'], a['pointing_game_context_decided_chance'])} "
            f"| {_fmt(f.get('seconds_per_map'))} | {f.get('seconds', float('nan')):.0f} |")
    s = map_summary(results)
    if s["n_variants"]:
        pg, lr = s["pointing_game_decisive"], s["lesion_ratio_lesion_decided"]
        seeds = sorted({f.get("generator_seed") for f in results.values() if f.get("generator_seed") is not None})
        lines.append("")
        lines.append(f"Over the {s['n_variants']} fusion variants that draw it (seed {', '.join(map(str, seeds))}): "
                     f"decisive-region pointing game best {pg['best']:.2f} (`{pg['best_variant']}`), median "
                     f"{pg['median']:.2f} (chance median {s['pointing_game_decisive_chance_median']:.2f}); lesion mass "
                     f"ratio best {lr['best']:.2f} (`{lr['best_variant']}`), median {lr['median']:.2f}"
                     + (f"; not drawn: {', '.join(s['skipped'])}." if s["skipped"] else "."))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
