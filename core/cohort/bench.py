"""``python -m core explain-cohort --bench``: the per-case ``explain_case`` loop vs ``--engine local`` vs
``--engine ray`` on the same cases, packages and parts, one after the other in one process
(``--bench-engines`` picks and orders them).

Each engine writes its own results folder under ``out`` and is timed end to end (loading the packages,
and for Ray starting it and its actors, included). The rows of the folders are compared too (the largest
difference of a calibrated probability), so the speed-up is for the same answers.

Start-up is reported apart, never dropped: for each engine the wall time is split into a start-up and a
steady rate (``steady_state``: cases/s from the part by which a quarter of the cases were done to the last
part; start-up = wall - n / rate), and the run records what it measured directly (packages loaded; for Ray
``ray.init``, then each actor's process start, explainer import, package loading and ready time). The
ray / local ratio is given at the bench's n (start-up included), once started, and projected at the size the
engines are for: the cases the local engine explains in 4 hours on one thread (start-up included).

What scales the figures (2 dermatology packages sharing MiniLM and EfficientNet-Lite0, 1 torch thread per
process; measured on 2 shared cores, so compare CPU seconds when the load changes between engines):

* ``local / loop``: with ``note_top`` the note's integrated gradients dominate both engines (24 forward and
  backward passes through the text transformer per note). Per note the batched engine pays one forward F of
  the shared MiniLM and one backward B per package, the loop P x (F + B); measured per note on 2 dermatology
  packages (1 thread): F 0.21, B 0.22 per package, fusion + head 0.03 CPU s, so the note alone is at most
  ~1.3-1.5x faster, whatever the rest. Padding notes into one batch was measured slower (groups of 4 / 8 /
  16 notes sorted by length: 0.84 / 1.17 / 1.80 vs 0.68 CPU s per note, padding waste), as were smaller step
  chunks (24 steps per pass is the fastest), and fewer Gauss-Legendre steps change the scores far beyond any
  tolerance (12 steps: up to 31% of the note's largest score). Seed 9801, 96 cases, the rows' own CPU per
  case: loop 0.85 vs local 0.48 with all six parts (1.79x), 0.31 vs 0.106 without ``note_top`` (2.96x).
* ``local / ray``: Ray's CPU per case is that of ``local``; it pays a fixed start-up: ``ray.init`` (~10 s wall
  for ~4 CPU s of daemons: gcs, raylet, dashboard, agents, monitors), Ray Data's helper actors (stats,
  autoscaling coordinator, actor-location tracker: ~3 CPU s), and each actor booting a Ray worker and
  importing core + torch (~2.9 CPU s) then loading the packages, mostly importing transformers (~3.2 CPU s):
  ~20 CPU s outside the driver, ~36-43 s wall on 2 cores at load 10-12. With one core per actor the steady
  rate is ``workers`` times ``local``'s on one thread, so Ray is ahead once the run outlasts the start-up
  (~100 cases with all parts, ~200-300 without the note on this machine).
* Run it with ``--threads 1`` on a shared machine: with 2 torch threads on 2 busy cores every small
  operation waits for the descheduled thread, and the wall time of whichever engine runs then explodes
  (one run: ``local`` 143 s with 2 threads vs 19 s with 1)."""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)
GOALS = {"local_over_loop": 3.0, "local_over_ray_at_most": 1.3}
AFTERNOON_S = 4 * 3600   # "more than one CPU can explain in an afternoon": 4 h of the local engine on one thread


def steady_state(arrivals: Sequence[tuple[float, int]], n: int, wall: float) -> tuple[float, float]:
    """(cases/s once started, start-up seconds) of one engine from its parts' arrivals ((seconds, cases done)).

    The rate is taken from the first part by which a quarter of the cases were done to the last one (the
    start-up and the first parts, whose work overlaps it, are left out); the start-up is what the wall time
    has on top of ``n`` cases at that rate, i.e. the intercept of wall(n) = start-up + n / rate."""
    pts = [(float(t), int(d)) for t, d in arrivals]
    if len(pts) < 2:
        return n / wall, 0.0
    k = next((i for i, (_, d) in enumerate(pts) if d >= n / 4), 0)
    k = min(k, len(pts) - 2)
    (ta, da), (tb, db) = pts[k], pts[-1]
    rate = (db - da) / (tb - ta) if tb > ta and db > da else n / wall
    return rate, max(0.0, wall - n / rate)


def at_size(e: Mapping[str, Any], n: float) -> float:
    """Projected wall seconds of an engine for ``n`` cases: its start-up + n / its steady rate."""
    return e["startup_s"] + n / e["steady_cases_per_s"]


def bench_engines(model_dirs: Sequence[str], records: Sequence[Mapping[str, Any]], out: str, parts: Sequence[str],
                  batch_size: int = 16, workers: int = 2, threads: int | None = None,
                  source: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None,
                  engines: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    log = log or logger.info
    from .runner import ray_available, run_cohort
    from .store import ResultsStore

    stamp = time.strftime("%Y%m%d-%H%M%S")
    engines = list(engines or (["loop", "local"] + (["ray"] if ray_available() else [])))
    threads = threads or torch.get_num_threads()
    n = len(records)
    result: dict[str, Any] = {"cases": n, "packages": [str(d) for d in model_dirs], "parts": list(parts),
                              "batch_size": batch_size, "ray_workers": workers, "torch_threads": threads,
                              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                              "source": dict(source or {}), "engines": {}, "goals": GOALS}
    folders = {}
    for eng in engines:
        folder = str(Path(out) / f"bench-{stamp}-{eng}") if "://" not in out else f"{out.rstrip('/')}/bench-{stamp}-{eng}"
        folders[eng] = folder
        log(f"bench: {eng} on {n} cases x {len(model_dirs)} packages …")
        torch.set_num_threads(threads)
        arrivals: list[tuple[float, int]] = []
        t0, c0 = time.perf_counter(), time.process_time()
        m = run_cohort(model_dirs, records, folder, parts, eng, batch_size, workers, source=source,
                       threads=1 if eng == "ray" else threads,
                       progress=lambda info, a=arrivals, t=t0: a.append((time.perf_counter() - t, info["done"])))
        secs, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
        rows = ResultsStore(folder).read(["status", "cpu_seconds"]).to_pylist()
        per_case = {r["case_id"]: r["cpu_seconds"] for r in rows if r.get("cpu_seconds") is not None}
        explain_cpu = float(sum(per_case.values()))
        # CPU seconds spent: this process (loading, writing, and for local / loop the explaining); Ray's actors
        # report the CPU of their batches in the rows (Ray's own daemons and the actors' start-up are not counted)
        cpu = driver_cpu + (explain_cpu if eng == "ray" else 0.0)
        rate, startup = steady_state(arrivals, n, secs)
        measured = m["runs"][-1].get("startup", {})
        if eng == "ray":   # plus what a local Ray's start-up burnt outside the rows: daemons, idle workers, actors' boot
            procs = measured.get("ray_processes_cpu_s", {})
            actors = measured.get("actors", {}).values()
            startup_cpu = (sum(v for k, v in procs.items() if k != "actors")
                           + sum(a.get("boot_cpu_s", 0.0) + a.get("load_cpu_s", 0.0) for a in actors))
        else:
            startup_cpu = 0.0
        result["engines"][eng] = {"seconds": round(secs, 2), "cases_per_s": round(n / secs, 4),
                                  "steady_cases_per_s": round(rate, 4), "startup_s": round(startup, 2),
                                  "startup_measured": measured,
                                  "cpu_seconds": round(cpu, 2), "cpu_seconds_per_case": round(cpu / n, 4),
                                  "startup_cpu_seconds_outside_driver": round(startup_cpu, 2),
                                  "explain_cpu_seconds_per_case": round(explain_cpu / max(len(per_case), 1), 4),
                                  "cases_ok": m["counts"]["cases_ok"], "cases_failed": m["counts"]["cases_failed"],
                                  "load_average_1min": round(os.getloadavg()[0], 1), "folder": folder}
        log(f"bench: {eng}: {secs:.1f} s wall, {n / secs:.3f} cases/s; once started {rate:.3f} cases/s after "
            f"{startup:.1f} s of start-up; {cpu:.1f} CPU s (load {os.getloadavg()[0]:.1f})")
    e = result["engines"]
    if "loop" in e and "local" in e:
        result["local_over_loop"] = round(e["local"]["cases_per_s"] / e["loop"]["cases_per_s"], 3)
        result["local_over_loop_steady"] = round(e["local"]["steady_cases_per_s"] / e["loop"]["steady_cases_per_s"], 3)
        result["local_over_loop_cpu"] = round(e["loop"]["cpu_seconds"] / e["local"]["cpu_seconds"], 3)
        # the rows' own CPU (explaining only: no imports, no package loading), which does not depend on the
        # order the engines ran in (the first one in the process pays for importing transformers)
        result["local_over_loop_explain_cpu"] = round(e["loop"]["explain_cpu_seconds_per_case"]
                                                      / e["local"]["explain_cpu_seconds_per_case"], 3)
    if "ray" in e and "local" in e:
        # local / ray: wall time of ray over wall time of local (> 1: ray slower), at this n, once started, and
        # projected at the size the engines are for (start-up kept in both projections)
        big = int(AFTERNOON_S * e["local"]["steady_cases_per_s"])
        result["afternoon_cases"] = big
        result["local_over_ray"] = round(e["ray"]["seconds"] / e["local"]["seconds"], 3)
        result["local_over_ray_steady"] = round(e["local"]["steady_cases_per_s"] / e["ray"]["steady_cases_per_s"], 3)
        result["local_over_ray_afternoon"] = round(at_size(e["ray"], big) / at_size(e["local"], big), 3)
        result["ray_over_local_cpu"] = round(e["ray"]["cpu_seconds"] / e["local"]["cpu_seconds"], 3)
    # same answers: the largest difference of a calibrated probability between engines, per pair
    tables = {eng: ResultsStore(f).read(["status", "probabilities"]).to_pylist() for eng, f in folders.items()}
    probs = {eng: {(r["case_id"], r["package"]): r["probabilities"] for r in rows if r["status"] == "ok"}
             for eng, rows in tables.items()}
    diffs = {}
    ref = engines[0]
    for eng in engines[1:]:
        keys = probs[ref].keys() & probs[eng].keys()
        diffs[f"{ref}_vs_{eng}"] = max((float(np.max(np.abs(np.subtract(probs[ref][k], probs[eng][k])))) for k in keys),
                                       default=None)
    result["max_probability_difference"] = diffs
    return result


def bench_table(r: Mapping[str, Any]) -> str:
    lines = [f"{r['cases']} cases x {len(r['packages'])} packages, parts {','.join(r['parts'])}, batch {r['batch_size']}, "
             f"{r['torch_threads']} torch threads, {r['cpus']} CPUs",
             f"{'engine':8s} {'seconds':>9s} {'cases/s':>9s} {'start-up s':>11s} {'then cases/s':>13s} "
             f"{'CPU s/case':>11s} {'explaining':>11s} {'load':>6s}"]
    for eng, e in r["engines"].items():
        x = e.get("explain_cpu_seconds_per_case")
        lines.append(f"{eng:8s} {e['seconds']:9.1f} {e['cases_per_s']:9.3f} {e['startup_s']:11.1f} "
                     f"{e['steady_cases_per_s']:13.3f} {e['cpu_seconds_per_case']:11.2f} "
                     f"{'' if x is None else f'{x:.3f}':>11s} {e['load_average_1min']:6.1f}")
    ray = r["engines"].get("ray", {}).get("startup_measured", {})
    if ray.get("actors"):
        a = list(ray["actors"].values())
        lines.append(f"ray start-up: ray.init {ray.get('ray_init_s', 0):.1f} s; actors ready at "
                     + ", ".join(f"{x['ready_s']:.1f}" for x in a) + " s (each: importing the explainer "
                     + ", ".join(f"{x['import_s']:.1f}" for x in a) + " s, loading the packages "
                     + ", ".join(f"{x['load_s']:.1f}" for x in a) + f" s); first rows at {ray.get('first_rows_s', 0):.1f} s")
        if all("boot_cpu_s" in x for x in a):
            lines.append("ray start-up CPU s: each actor up to its constructor (Ray worker, Ray Data, importing core + torch) "
                         + ", ".join(f"{x['boot_cpu_s']:.1f}" for x in a) + ", loading the packages (transformers) "
                         + ", ".join(f"{x['load_cpu_s']:.1f}" for x in a))
    procs = ray.get("ray_processes_cpu_s", {})
    if procs:
        lines.append("local Ray's processes, CPU s over the run: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(procs.items())))
    if "local_over_loop" in r:
        lines.append(f"local / loop: {r['local_over_loop']:.2f}x wall at {r['cases']} cases, "
                     f"{r['local_over_loop_steady']:.2f}x once started, {r['local_over_loop_cpu']:.2f}x CPU"
                     + (f", {r['local_over_loop_explain_cpu']:.2f}x the rows' own CPU (explaining only)"
                        if "local_over_loop_explain_cpu" in r else "") + f" (goal >= {GOALS['local_over_loop']})")
    if "local_over_ray" in r:
        lines.append(f"ray / local wall time ({r['ray_workers']} workers): {r['local_over_ray']:.2f}x at {r['cases']} cases "
                     f"(start-up included), {r['local_over_ray_steady']:.2f}x once started, "
                     f"{r['local_over_ray_afternoon']:.2f}x projected at {r['afternoon_cases']} cases (4 h of local "
                     f"on one thread, start-up included); ray / local CPU {r['ray_over_local_cpu']:.2f}x "
                     f"(goal <= {GOALS['local_over_ray_at_most']})")
    lines.append("start-up s: wall time beyond n cases at the steady rate (fit on the parts' arrival times), "
                 "reported apart, not left out of the wall times; CPU s/case: the process's (Ray: the driver's + the "
                 "actors' explaining); explaining: the rows' own CPU, without imports and package loading")
    lines.append("largest calibrated-probability difference: "
                 + ", ".join(f"{k} {v:.2e}" if v is not None else f"{k} n/a" for k, v in r["max_probability_difference"].items()))
    return "\n".join(lines)
