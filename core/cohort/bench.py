"""``python -m core explain-cohort --bench``: the per-case ``explain_case`` loop vs ``--engine local`` vs
``--engine ray`` on the same cases, packages and parts, one after the other in one process.

Each engine writes its own results folder under ``out`` and is timed end to end (loading the packages,
and for Ray starting it and its actors, included). The rows of the three folders are compared too
(the largest difference of a calibrated probability), so the speed-up is for the same answers."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

GOALS = {"local_over_loop": 3.0, "local_over_ray_at_most": 1.3}


def bench_engines(model_dirs: Sequence[str], records: Sequence[Mapping[str, Any]], out: str, parts: Sequence[str],
                  batch_size: int = 16, workers: int = 2, threads: int | None = None,
                  source: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from .runner import ray_available, run_cohort
    from .store import ResultsStore

    stamp = time.strftime("%Y%m%d-%H%M%S")
    engines = ["loop", "local"] + (["ray"] if ray_available() else [])
    threads = threads or torch.get_num_threads()
    result: dict[str, Any] = {"cases": len(records), "packages": [str(d) for d in model_dirs], "parts": list(parts),
                              "batch_size": batch_size, "ray_workers": workers, "torch_threads": threads,
                              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                              "source": dict(source or {}), "engines": {}, "goals": GOALS}
    folders = {}
    for eng in engines:
        folder = str(Path(out) / f"bench-{stamp}-{eng}") if "://" not in out else f"{out.rstrip('/')}/bench-{stamp}-{eng}"
        folders[eng] = folder
        log(f"bench: {eng} on {len(records)} cases x {len(model_dirs)} packages …")
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        m = run_cohort(model_dirs, records, folder, parts, eng, batch_size, workers,
                       threads=1 if eng == "ray" else threads)
        secs = time.perf_counter() - t0
        result["engines"][eng] = {"seconds": round(secs, 2), "cases_per_s": round(len(records) / secs, 4),
                                  "cases_ok": m["counts"]["cases_ok"], "cases_failed": m["counts"]["cases_failed"],
                                  "folder": folder}
        log(f"bench: {eng}: {secs:.1f} s, {len(records) / secs:.3f} cases/s")
    e = result["engines"]
    result["local_over_loop"] = round(e["local"]["cases_per_s"] / e["loop"]["cases_per_s"], 3)
    if "ray" in e:
        result["local_over_ray"] = round(e["local"]["cases_per_s"] / e["ray"]["cases_per_s"], 3)
    # same answers: the largest difference of a calibrated probability between engines, per pair
    tables = {eng: ResultsStore(f).read(["status", "probabilities"]).to_pylist() for eng, f in folders.items()}
    probs = {eng: {(r["case_id"], r["package"]): r["probabilities"] for r in rows if r["status"] == "ok"}
             for eng, rows in tables.items()}
    diffs = {}
    for eng in engines[1:]:
        keys = probs["loop"].keys() & probs[eng].keys()
        diffs[f"loop_vs_{eng}"] = max((float(np.max(np.abs(np.subtract(probs["loop"][k], probs[eng][k])))) for k in keys),
                                      default=None)
    result["max_probability_difference"] = diffs
    return result


def bench_table(r: Mapping[str, Any]) -> str:
    lines = [f"{r['cases']} cases x {len(r['packages'])} packages, parts {','.join(r['parts'])}, batch {r['batch_size']}, "
             f"{r['torch_threads']} torch threads, {r['cpus']} CPUs",
             f"{'engine':8s} {'seconds':>9s} {'cases/s':>9s}"]
    for eng, e in r["engines"].items():
        lines.append(f"{eng:8s} {e['seconds']:9.1f} {e['cases_per_s']:9.3f}")
    lines.append(f"local / loop: {r['local_over_loop']:.2f}x (goal >= {GOALS['local_over_loop']})")
    if "local_over_ray" in r:
        lines.append(f"local / ray ({r['ray_workers']} workers): {r['local_over_ray']:.2f}x "
                     f"(goal <= {GOALS['local_over_ray_at_most']})")
    lines.append("largest calibrated-probability difference vs the loop: "
                 + ", ".join(f"{k} {v:.2e}" if v is not None else f"{k} n/a" for k, v in r["max_probability_difference"].items()))
    return "\n".join(lines)
