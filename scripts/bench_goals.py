#!/usr/bin/env python
"""The goal ratios of `python -m core bench` alone (no naive baselines, reports, int8 or faithfulness), for
a quick before/after check on a busy machine: one plain forward pass, `predict` (MC dropout T=30),
comparing every variant, the full `explain_case`, and resident memory over explained cases.

    python scripts/bench_goals.py [--repo PATH] [--cases 3] [--memory-cases 30] [--clock cpu] [--json out.json]

``--floors`` and ``--compare-paths`` (this checkout's code only) add what a comparison cannot go below and
the package-by-package columns timed against ``compare_variants``.

``--repo`` measures the code of another checkout (e.g. a `git worktree` of an older commit) on its own
assets, so two runs started side by side give before/after figures under the same load.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-repeats", type=int, default=1,
                    help="comparisons timed per case (default 1, as before); more give a steadier median on a busy "
                         "machine without changing what the ratio divides")
    ap.add_argument("--explain-repeats", type=int, default=1,
                    help="full explanations timed per case (default 1, as before); more give a steadier median on a busy "
                         "machine without changing what the ratio divides")
    ap.add_argument("--memory-cases", type=int, default=30)
    ap.add_argument("--cohort", action="append", choices=["dermatology", "diabetes"])
    ap.add_argument("--json")
    ap.add_argument("--compare-paths", action="store_true",
                    help="also time, interleaved call by call, a comparison's columns the package-by-package way "
                         "(shared encoders once, then Package.predict per variant) against compare_variants (stacked "
                         "metadata encoders / heads / posteriors), with the largest difference of their numbers")
    ap.add_argument("--floors", action="store_true",
                    help="also measure what a comparison cannot go below while every variant keeps its own fusion: the "
                         "shared encoders once plus each variant's fusion pass alone, over one predict")
    ap.add_argument("--fast-paths", action="store_true",
                    help="also time each explanation part (and one forward) with session 9's exact fast paths on and off "
                         "in this process, alternating call by call (lean fusion attention, inputs held fixed computed once, "
                         "the note baseline's text-encoder pass kept, ReLU6 inside oneDNN's product): a before/after that "
                         "does not depend on two processes' placement (this checkout's code only)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (time.process_time), steadier than wall time on a machine that "
                         "other jobs keep busy (with OMP_NUM_THREADS=1 the two agree on an idle machine)")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    import torch

    from core.bench import FULL_PARTS, _main_package, demo_cases, plain_forward, rss_mb
    from core.compare import compare_variants
    from core.explain import explain_case
    from core.package import discover_packages, load_package

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    out = {"repo": str(repo), "clock": args.clock, "torch_threads": torch.get_num_threads(), "load_1min_before": os.getloadavg()[0],
           "cohorts": {}}
    for cohort in args.cohort or ["dermatology", "diabetes"]:
        paths = discover_packages(repo / "assets" / "models" / cohort)
        pkg = load_package(_main_package(paths))
        variants = [load_package(p) for p in paths]
        cases = demo_cases(cohort, args.cases)
        S: dict[str, list[float]] = {k: [] for k in ("forward", "predict_T30", "compare_all", "explain_full")}

        def run(name, fn, n, S=S):
            for _ in range(n):
                t = clock()
                fn()
                S[name].append(clock() - t)
        parts: dict[str, list[float]] = {}
        # once per process: the explainers' lazily imported libraries (Grad-CAM, Captum) out of the figures
        explain_case(pkg, cases[0], parts=FULL_PARTS, shapley_samples=0)
        for case in cases:
            plain_forward(pkg, case), pkg.predict(case, mc_samples=30)   # first-call costs out of the figures
            for _ in range(args.repeats):  # interleaved, so drifting load hits both sides of each ratio alike
                run("forward", partial(plain_forward, pkg, case), 1)
                run("predict_T30", partial(pkg.predict, case, mc_samples=30), 1)
            run("compare_all", partial(compare_variants, variants, case, explain=False), args.compare_repeats)
            for _ in range(args.explain_repeats):
                t = clock()
                ex = explain_case(pkg, case, parts=FULL_PARTS, shapley_samples=0)
                S["explain_full"].append(clock() - t)
                for k, v in ex.timings.items():
                    parts.setdefault(k, []).append(v)
        floors = _floors(variants, cases, pkg, clock, args.repeats) if args.floors else None
        cpaths = _compare_paths(variants, cases, pkg, clock, args.repeats) if args.compare_paths else None
        fast = _fast_paths(pkg, cases, clock, args.repeats) if args.fast_paths else None
        mem_parts = ("cam", "lesion_context", "note", "table", "spectrum", "modality")
        warm = min(10, max(2, args.memory_cases // 10))
        base = None
        for i in range(args.memory_cases):
            explain_case(pkg, cases[i % len(cases)], parts=mem_parts, shapley_samples=0)
            if i + 1 == warm:
                gc.collect()
                base = rss_mb()
        gc.collect()
        end = rss_mb()
        med = {k: 1000 * statistics.median(v) for k, v in S.items()}
        out["cohorts"][cohort] = {
            "main_package": pkg.name, "packages": len(paths), "cases": len(cases),
            "median_ms": {k: round(v, 2) for k, v in med.items()},
            "explain_parts_median_ms": {k: round(1000 * statistics.median(v), 1) for k, v in parts.items()},
            "ratios": {"predict_T30_over_forward": round(med["predict_T30"] / med["forward"], 3),
                       "compare_all_over_one_variant": round(med["compare_all"] / med["predict_T30"], 3),
                       "explain_over_forward": round(med["explain_full"] / med["forward"], 3),
                       "memory_growth_percent": round(100 * (end - base) / base, 3) if base else None},
            "memory_mib": {"after_warm_up": round(base or 0, 1), f"after_{args.memory_cases}_explained_cases": round(end, 1)},
        }
        if cpaths:
            out["cohorts"][cohort]["compare_paths"] = cpaths
            print(cohort, "compare paths", json.dumps(cpaths), flush=True)
        if fast:
            out["cohorts"][cohort]["fast_paths"] = fast
            print(cohort, "fast paths", json.dumps(fast), flush=True)
        if floors:
            out["cohorts"][cohort]["compare_floor"] = floors
            print(cohort, "compare floor", json.dumps(floors), flush=True)
        print(cohort, json.dumps(out["cohorts"][cohort]["ratios"]), json.dumps(out["cohorts"][cohort]["median_ms"]), flush=True)
        del variants, pkg
        gc.collect()
    out["load_1min_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _compare_paths(variants, cases, pkg, clock, repeats: int) -> dict:
    """Median ms of one predict, the package-by-package columns and ``compare_variants``, timed in turn."""
    import statistics

    import numpy as np

    from core.compare import SharedEncoderCache, compare_variants

    def one_by_one(case):
        cache = SharedEncoderCache(case)
        feats = [cache.features_for(p) for p in variants]
        return [p.predict(case, None, 0, f or None) for p, f in zip(variants, feats)]

    S: dict[str, list[float]] = {"predict_T30": [], "package_by_package": [], "compare_variants": []}
    diff = 0.0
    for case in cases:
        a, b = one_by_one(case), compare_variants(variants, case, explain=False)
        for x, y in zip(a, b.columns):
            diff = max(diff, float(np.abs(x.calibrated - y.prediction.calibrated).max()),
                       float(np.abs(x.mc_samples - y.prediction.mc_samples).max()),
                       max(abs(x.uncertainty[k] - y.prediction.uncertainty[k]) for k in x.uncertainty))
        for _ in range(repeats):
            for name, fn in (("predict_T30", lambda c=case: pkg.predict(c, mc_samples=30)),
                             ("package_by_package", lambda c=case: one_by_one(c)),
                             ("compare_variants", lambda c=case: compare_variants(variants, c, explain=False))):
                t = clock()
                fn()
                S[name].append(clock() - t)
    med = {k: 1000 * statistics.median(v) for k, v in S.items()}
    return {"median_ms": {k: round(v, 2) for k, v in med.items()},
            "package_by_package_over_predict": round(med["package_by_package"] / med["predict_T30"], 3),
            "compare_variants_over_predict": round(med["compare_variants"] / med["predict_T30"], 3),
            "max_abs_difference": diff}


def _fast_paths(pkg, cases, clock, repeats: int) -> dict:
    """Median ms of one forward and of each explanation part with session 9's fast paths off ("old") and on
    ("new"), alternating call by call on the same context; the parts' sum over the forward, both ways. The
    paths are turned off where they are chosen (the results are the same either way, tests/test_speed_17_s9.py)."""
    import statistics

    import torch

    import core.encoders.onednn as onednn
    import core.explain.attributions as attr
    import core.fusion.base as fbase
    import core.fusion.hierarchical as fhier
    from core.bench import plain_forward
    from core.explain.engine import _context, _predict
    from core.explain.gradcam import image_cam
    from core.explain.image_ig import middle_stage_ig
    from core.explain.modality import modality_shapley

    lean, const, base = fbase.AttentionBlock._lean, fhier.constant_rows, attr.baseline_note_features

    def plain_base(enc, ids, emb, mask):
        with torch.no_grad():
            return enc(inputs_embeds=emb, attention_mask=mask)

    def mode(new: bool) -> None:
        fbase.AttentionBlock._lean = lean if new else (lambda self: False)
        fhier.constant_rows = const if new else (lambda feats, training: [False] * len(feats))
        attr.baseline_note_features = base if new else plain_base
        onednn._RELU6[:] = [] if new else [False]

    S: dict[tuple[str, bool], list[float]] = {}
    try:
        for case in cases:
            ctx = _context(pkg, case, None, None, True)
            parts = {"forward": lambda c=case: plain_forward(pkg, c),
                     "context": lambda c=case: _context(pkg, c, None, None, False),
                     "prediction": lambda c=case, x=ctx: _predict(pkg, c, None, x, False)}
            for m, name, fn in (("note", "note", lambda x=ctx: attr.note_attributions(x)),
                                ("metadata", "table", lambda x=ctx: attr.table_attributions(x, 24, 0)),
                                ("spectrum", "spectrum", lambda x=ctx: attr.spectrum_attributions(x, 24)),
                                ("image", "image_ig", lambda x=ctx: middle_stage_ig(x)),
                                ("image", "gradcam", lambda x=ctx: image_cam(x, "gradcam", "last stage", False))):
                if ctx.has(m):
                    parts[name] = fn
            parts["modality"] = lambda x=ctx: modality_shapley(x)
            for name, fn in parts.items():
                for new in (True, False):
                    mode(new)
                    fn()
                for r in range(2 * repeats):
                    for new in ((False, True) if r % 2 == 0 else (True, False)):
                        mode(new)
                        t = clock()
                        fn()
                        S.setdefault((name, new), []).append(clock() - t)
    finally:
        mode(True)
    med = {f"{k}_{'new' if new else 'old'}": round(1000 * statistics.median(v), 2) for (k, new), v in S.items()}
    names = list(dict.fromkeys(k for k, _ in S if k != "forward"))
    out = {"median_ms": med}
    for new in (False, True):
        tag = "new" if new else "old"
        total = sum(med[f"{n}_{tag}"] for n in names)
        out[f"parts_sum_{tag}_ms"] = round(total, 1)
        out[f"parts_sum_over_forward_{tag}"] = round(total / med[f"forward_{tag}"], 3)
    return out


def _floors(variants, cases, pkg, clock, repeats: int) -> dict:
    """Median CPU (or wall) ms per case: one predict of the main package; the shared encoders of a comparison
    (every frozen encoder once, a dual expert's lesion stream included); every variant's fusion alone on the
    rows its prediction fuses (the case and its single-modality rows); and their sum over the predict: the
    ratio a comparison cannot go below while each variant keeps its own fusion pass."""
    import statistics

    import torch

    from core.compare import SharedEncoderCache
    from core.package.predictor import fused_rows, prepare_batch

    S: dict[str, list[float]] = {"predict_T30": [], "shared_encoders": [], "fusions": []}
    for case in cases:
        for _ in range(repeats):
            t = clock()
            pkg.predict(case, mc_samples=30)
            S["predict_T30"].append(clock() - t)
            t = clock()
            cache = SharedEncoderCache(case)
            feats = [cache.features_for(p) for p in variants]
            S["shared_encoders"].append(clock() - t)
            total = 0.0
            for p, f in zip(variants, feats):
                f = {m: x for m, x in f.items() if m in p.modalities}
                inputs, present, _ = prepare_batch(p.model, [case], set(f))
                inputs.update(f)
                with torch.inference_mode():
                    rows = fused_rows(p.model, p.modalities, inputs, present)
                    t = clock()
                    p.model.fusion(rows.feats, rows.present)
                    total += clock() - t
            S["fusions"].append(total)
    med = {k: 1000 * statistics.median(v) for k, v in S.items()}
    return {"median_ms": {k: round(v, 2) for k, v in med.items()},
            "floor_over_predict": round((med["shared_encoders"] + med["fusions"]) / med["predict_T30"], 3),
            "fusions_over_predict": round(med["fusions"] / med["predict_T30"], 3)}


if __name__ == "__main__":
    sys.exit(main())
