"""The verbs on models and cohorts: ``train``, ``train-suite``, ``evaluate``, ``bench``, ``faithfulness``, ``variants``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .common import UsageError, usage_errors


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..bench import table as bench_table
    from ..data.cohorts import generated_cohorts

    if not 1 <= args.cases <= 1000:
        raise UsageError("--cases must be between 1 and 1000.")
    if not 1 <= args.repeats <= 100:
        raise UsageError("--repeats must be between 1 and 100.")
    if not 2 <= args.memory_cases <= 10000:
        raise UsageError("--memory-cases must be between 2 and 10000.")
    if args.json and not Path(args.json).parent.is_dir():
        raise UsageError(f"the folder of --json '{args.json}' does not exist.")
    cohorts = [args.cohort] if args.cohort else generated_cohorts()
    with usage_errors(FileNotFoundError):
        result = run_bench(cohorts, args.cases, args.repeats, args.memory_cases, log=lambda s: print(s, file=sys.stderr))
    print(bench_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from ..fusion import COMMON_DIAGNOSTICS, FUSIONS
    from ..heads import HEADS

    rows = [{"name": n, "summary": FUSIONS.get(n).SUMMARY,
             "diagnostics": {**COMMON_DIAGNOSTICS, **FUSIONS.get(n).DIAGNOSTICS}} for n in FUSIONS.names()]
    heads = [{"name": n, "summary": HEADS.get(n).SUMMARY, "diagnostics": HEADS.get(n).DIAGNOSTICS} for n in HEADS.names()]
    if args.json:
        print(json.dumps(rows if not args.heads else heads, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:16s} {r['summary']}")
        print("\nheads (head: {type: NAME} in a training config):")
        for r in heads:
            print(f"{r['name']:16s} {r['summary']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import ConfigError, load_config
    from ..training.train import train

    with usage_errors(ConfigError):
        cfg = load_config(args.config)
    if args.devices is not None:
        cfg.trainer.devices = int(args.devices) if args.devices.isdigit() else args.devices
    if args.num_nodes is not None:
        cfg.trainer.num_nodes = args.num_nodes
    if args.out:
        cfg.out = args.out
    with usage_errors():
        out = train(cfg)
    if out is not None:
        print(f"package written to {out}")
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.controls:
        from ..explain import controls as K

        rows = K.run_controls(args.sources, n=args.n, n_eval=args.eval_n, epochs=args.epochs, retrain=args.retrain,
                              alternatives=_alternative_labels(args.alternatives, K.ALTERNATIVES),
                              log=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps(rows, indent=2, default=float) if args.json else K.controls_table(rows))
        return 0
    if args.alternatives is not None:
        raise UsageError("--alternatives measures the known-answer controls' alternative explainers: add --controls.")
    if not args.packages:
        raise UsageError("give model package folders to measure, or --controls.")
    from ..data.cohorts import COHORTS

    spec = COHORTS.get("dermatology")   # the cohort whose generator records what decides each case
    if args.seed == spec.default_seed:
        raise UsageError(f"seed {spec.default_seed} is the training cohort's seed; measure on a fresh seed (e.g. 9201).")
    from ..explain.cohort import KINDS, cohort_faithfulness
    from ..package import load_package

    cohort = spec.load(n=args.cohort_n, seed=args.seed, workers=1)
    items = [it for k in KINDS for it in [i for i in cohort.items if i.evidence == k][: args.per_kind]]
    out = {path: cohort_faithfulness(load_package(path), items) for path in args.packages}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        for path, f in out.items():
            a = f["predicted"]["all"]
            print(f"{path}: accuracy {f['accuracy']:.2f} on {f['n']} cases of seed {args.seed}; lesion mass ratio "
                  f"{a['lesion_ratio_lesion_decided']:.2f} (chance 1.00); pointing game, decisive region "
                  f"{a['pointing_game_decisive']:.2f} (chance {a['pointing_game_decisive_chance']:.2f}); Shapley decisive "
                  f"modality, balanced {a['shapley_decisive_balanced']:.2f} (chance {a['shapley_decisive_balanced_chance']:.2f})")
    return 0


def cmd_train_suite(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..data.cohorts import COHORTS, names_sentence
    from ..training.suite import train_suite

    if args.n is not None and args.n < 50:
        raise UsageError("--n must be at least 50 cases.")
    spec = COHORTS.get(args.cohort)
    env = spec.data_env
    if env:
        if args.data:
            os.environ[env] = args.data
        if not os.environ.get(env):
            raise UsageError(f"--cohort {spec.name} needs its data: pass --data PATH or set {env}.")
        with usage_errors(DataError):
            spec.check_data(Path(os.environ[env]))
    elif args.data:
        real = names_sentence([n for n in COHORTS.names() if not COHORTS.get(n).generated])
        raise UsageError(f"--data is only for --cohort {real}; the other demo cohorts are generated.")
    seed = spec.default_seed if args.seed is None else args.seed
    train_suite(args.cohort, args.out, args.variants, args.n, args.epochs, seed, log=print)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..package import load_package
    from ..training.config import DataConfig
    from ..training.evaluate import evaluate_package, select_items
    from ..training.train import load_cohort

    if (args.cohort is None) == (args.data is None):
        raise UsageError("give exactly one of --cohort and --data.")
    pkg = load_package(args.model, int8=args.int8 or None)
    with usage_errors(DataError, ValueError):
        if args.cohort:
            cohort = load_cohort(DataConfig(cohort=args.cohort, n=args.n, seed=args.seed))
        else:
            cohort = load_cohort(DataConfig(path=args.data))
        items = select_items(cohort, args.split)
        if getattr(args, "tta", False):   # the suite's validation-fitted test-time augmentation (suite_inference.json)
            from ..package.tta import evaluate_package_tta

            if args.drop:
                raise UsageError("--tta cannot be combined with --drop; run them separately.")
            metrics = evaluate_package_tta(pkg, items, mc_samples=args.mc_samples)
        else:
            metrics = evaluate_package(pkg, items, mc_samples=args.mc_samples, drop=args.drop)
        if getattr(args, "mechanisms", False):   # issue 14: can each fusion mechanism be read on these cases?
            from ..explain.mechanisms import measure_cases

            metrics["mechanisms"] = measure_cases(pkg, items)
    metrics = {"model": pkg.info(), "data": {"cohort": cohort.name, "seed": args.seed, "split": args.split,
                                             "dropped": list(args.drop), "tta": bool(getattr(args, "tta", False))}, **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc"):
            v = metrics[k]
            print(f"{k:24s} {v['value']:.3f}  (95% CI {v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})")
        if "mechanisms" in metrics:
            from ..explain.mechanisms import text_report

            print(text_report(metrics["mechanisms"]))
    return 0


def _alternative_labels(spec: str | None, offered: Mapping[str, Sequence[tuple[str, Any]]]) -> bool | list[str]:
    """The command line's ``--alternatives`` value -> ``run_controls``' ``alternatives``: None -> False, "all" ->
    True, else the comma-separated labels, each checked against the offered ones (``controls.ALTERNATIVES``)."""
    if spec is None:
        return False
    if spec.strip().lower() == "all":
        return True
    known = sorted({lb for opts in offered.values() for lb, _ in opts})
    labels = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = [x for x in labels if x not in known]
    if unknown or not labels:
        raise UsageError(f"unknown alternative explainer {', '.join(map(repr, unknown)) or repr(spec)}; "
                         f"use 'all' or some of: {', '.join(known)}.")
    return labels
