"""``python -m core explain-cohort``: the subcommand's flags and its run (hooked into core.cli.build_parser)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .rows import ROW_PARTS


def add_explain_cohort(sub: Any) -> None:
    from ..data.cohorts import COHORTS, generated_cohorts, names_sentence

    sized = names_sentence([n for n in COHORTS.names() if COHORTS.get(n).sized])
    p = sub.add_parser("explain-cohort", help="explain a whole cohort with one or more packages into Parquet")
    p.add_argument("--model", action="append", required=True, metavar="DIR", help="model package folder (repeatable)")
    p.add_argument("--cohort", choices=generated_cohorts(), help="a generated demo cohort")
    p.add_argument("--seed", type=int, default=0, help="generator seed of --cohort (use one never trained on)")
    p.add_argument("--n", type=int, default=2000, help=f"{sized} cases to generate (default 2000)")
    p.add_argument("--data", help="a dataset folder / CSV in one of the supported layouts")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", required=True, help="results folder: a path or a pyarrow filesystem URI (s3://, gs://, ...)")
    p.add_argument("--parts", default=",".join(ROW_PARTS), help=f"comma-separated, from: {','.join(ROW_PARTS)}")
    p.add_argument("--engine", default="local", choices=["local", "ray", "loop"],
                   help="local: batched in this process; ray: Ray Data actor pool; loop: explain_case per case (naive)")
    p.add_argument("--address", help="Ray cluster address (auto or ray://HOST:PORT); default: a local Ray")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="cases per batch (default 16)")
    p.add_argument("--threads", type=int, help="torch threads per process / actor")
    p.add_argument("--limit", type=int, help="explain at most this many cases of the split (first ones)")
    p.add_argument("--bench", action="store_true",
                   help="instead of one run: time the per-case loop, --engine local and --engine ray (--workers) on the "
                        "same cases and parts, each into its own folder under --out; prints cases/s and ratios")
    p.add_argument("--bench-engines", default="loop,local,ray",
                   help="with --bench: the engines to time, in order (default loop,local,ray; ray only when installed)")
    p.add_argument("--json", action="store_true", help="print the manifest (or the benchmark) as JSON")
    p.set_defaults(func=cmd_explain_cohort)


def cmd_explain_cohort(args: argparse.Namespace) -> int:
    from ..cli.common import UsageError, usage_errors
    from .runner import load_records, run_cohort

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    bad = [p for p in parts if p not in ROW_PARTS]
    if bad or not parts:
        raise UsageError(f"unknown part '{bad[0] if bad else ''}'; choose from: {', '.join(ROW_PARTS)}.")
    for d in args.model:
        if not (Path(d) / "config.json").is_file():
            raise UsageError(f"--model '{d}' is not a model package folder (no config.json).")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1.")
    with usage_errors():   # DataError and CohortError are ValueErrors too
        records, source = load_records(args.cohort, args.data, args.seed, args.n, args.split)
    if args.limit:
        records = records[:args.limit]
        source["limit"] = args.limit
    if not records:
        raise UsageError(f"the {args.split} split holds no cases.")
    # a CohortError (a FusionLensError) is reported by core.cli.main as one ``error:`` line
    if args.bench:
        from .bench import bench_engines, bench_table

        from .runner import ray_available

        engines = [e.strip() for e in args.bench_engines.split(",") if e.strip()]
        if not engines or any(e not in ("loop", "local", "ray") for e in engines):
            raise UsageError("--bench-engines takes engines from: loop, local, ray.")
        if "ray" in engines and not ray_available():
            engines.remove("ray")
        result = bench_engines(args.model, records, args.out, parts, args.batch_size, args.workers, args.threads,
                               source, log=lambda s: print(s, file=sys.stderr), engines=engines)
        print(json.dumps(result, indent=2) if args.json else bench_table(result))
        return 0
    manifest = run_cohort(args.model, records, args.out, parts, args.engine, args.batch_size, args.workers,
                          args.address, source, progress=_progress_bar(), threads=args.threads)
    if args.json:
        print(json.dumps(manifest, default=str))
    else:
        c = manifest["counts"]
        run = manifest["runs"][-1]
        print(f"{c['cases_ok']} cases explained, {c['cases_failed']} failed ({c['rows']} rows, {c['packages']} packages) "
              f"in {args.out}; this run: {run.get('cases_done', 0)} cases at {run.get('cases_per_s') or 0:.2f} cases/s.")
        for f in manifest["failures"][:10]:
            print(f"  failed: {f['case_id']} ({f['package']}): {f['reason']}")
        print("Research use only, not a medical device.")
    return 0


def _progress_bar():
    """A tqdm bar on stderr with cases/s and time left (tqdm computes both)."""
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(info: dict[str, Any]) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=info["total"], unit="case", file=sys.stderr, dynamic_ncols=True,
                                      desc="explain-cohort")
        bar.update(info["done"] - bar.n)
        if info["done"] >= info["total"]:
            bar.close()

    return update
