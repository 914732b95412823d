"""``run_cohort``: explain every case of a cohort with every package, locally or on Ray, into a results set.

Engines:

* ``local`` (default, no extra dependency): batches of cases through :class:`CohortExplainer` in this
  process (frozen encoders once per batch for all packages).
* ``ray``: Ray Data ``map_batches`` on a pool of actors, each loading the packages once; on a local Ray
  (``ray.init(num_cpus=workers)``) or a cluster (``address="auto"`` or ``"ray://host:10001"``). The
  driver writes the parts, so the results folder only has to be reachable from the driver
  (a shared or object-store path works the same through pyarrow filesystems). The cases go out in
  blocks of at most ``batch_size`` and at least 4 per actor, one block per actor at a time.
* ``loop``: ``explain_case`` case by case (the naive way; the benchmark's baseline).

Resumable: a case whose rows are already in the folder (status ok, same packages) is skipped.

Each run's entry in the manifest (``runs``) records its start-up apart from its explaining (``startup``):
the seconds to load the packages (local / loop), or to start Ray and each actor's process start, explainer
import, package loading and ready time (ray; on a cluster, read with the nodes' clocks), and when the first
part was written.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import __version__
from ..package import read_package_summary
from .rows import ROW_PARTS, CohortError, item_record
from .store import FORMAT, ResultsStore

ENGINES = ("local", "ray", "loop")
Progress = Callable[[dict[str, Any]], Any]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_records(cohort: str | None = None, data: str | None = None, seed: int = 0, n: int = 2000,
                 split: str = "test") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Case records of a generated cohort or a dataset in a supported layout, and their description."""
    from ..data.cohorts import COHORTS
    from ..training.config import DataConfig
    from ..training.evaluate import select_items
    from ..training.train import load_cohort

    if (cohort is None) == (data is None):
        raise CohortError("give exactly one of --cohort and --data.")
    c = load_cohort(DataConfig(cohort=cohort, n=n, seed=seed) if cohort else DataConfig(path=data))
    items = select_items(c, split)
    sized = cohort is not None and COHORTS.get(cohort).sized
    desc = {"cohort": c.name, "data": data, "seed": seed if cohort else None, "n_generated": n if sized else None,
            "split": split, "synthetic": c.synthetic, "description": c.description, "labels": c.labels}
    return [item_record(it) for it in items], desc


def _packages_info(model_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for d in model_dirs:
        s = read_package_summary(d)
        out.append({"name": s["name"], "variant": s["variant"], "path": str(Path(d).resolve()), "sha256": s["sha256"],
                    "labels": s["labels"], "modalities": s["modalities"], "cohort": s["cohort"]})
    names = [p["name"] for p in out]
    if len(set(names)) < len(names):
        raise CohortError("two of the packages have the same name; give each package once.")
    return out


def _last_status(store: ResultsStore) -> dict[tuple[str, str], str]:
    """(case id, package) -> the status of its last row in the folder (what ``ResultsStore.read`` keeps)."""
    t = store.read(["status"])
    return dict(zip(zip(t.column("case_id").to_pylist(), t.column("package").to_pylist()), t.column("status").to_pylist()))


def _done(last: Mapping[tuple[str, str], str], packages: Sequence[str]) -> set[str]:
    ok: dict[str, set[str]] = {}
    for (c, p), s in last.items():
        if s == "ok":
            ok.setdefault(c, set()).add(p)
    need = set(packages)
    return {c for c, ps in ok.items() if need <= ps}


def done_cases(store: ResultsStore, packages: Sequence[str]) -> set[str]:
    """Case ids that have an ok row for every package."""
    return _done(_last_status(store), packages)


def _counts(last: Mapping[tuple[str, str], str], n_packages: int) -> dict[str, int]:
    status: dict[str, set[str]] = {}
    for (c, _), s in last.items():
        status.setdefault(c, set()).add(s)
    return {"rows": len(last), "cases_ok": sum(s == {"ok"} for s in status.values()),
            "cases_failed": sum("failed" in s for s in status.values()), "packages": n_packages}


def run_cohort(model_dirs: Sequence[str | Path], records: Sequence[Mapping[str, Any]], out: str,
               parts: Sequence[str] = ROW_PARTS, engine: str = "local", batch_size: int = 16, workers: int = 2,
               address: str | None = None, source: Mapping[str, Any] | None = None, progress: Progress | None = None,
               threads: int | None = None, max_cases: int | None = None) -> dict[str, Any]:
    """Explain ``records`` (see ``item_record``) into the results set ``out``; returns the manifest.

    ``progress(info)`` is called after every part with done / total / cases_per_s / seconds_left; when it
    returns False the run stops there (the parts written so far stay, a rerun resumes). ``max_cases``
    stops after that many new cases (to split a run, and for the resume test)."""
    if engine not in ENGINES:
        raise CohortError(f"unknown engine '{engine}'; choose from: {', '.join(ENGINES)}.")
    if not 1 <= batch_size <= 512:
        raise CohortError("--batch-size must be between 1 and 512.")
    if not 1 <= workers <= 1024:
        raise CohortError("--workers must be between 1 and 1024.")
    bad = [p for p in parts if p not in ROW_PARTS]
    if bad:
        raise CohortError(f"unknown part '{bad[0]}'; choose from: {', '.join(ROW_PARTS)}.")
    ids = [r["case_id"] for r in records]
    if len(set(ids)) < len(ids):
        raise CohortError("the case ids of the cohort are not unique; each case needs its own id.")
    pkgs = _packages_info(model_dirs)
    store = ResultsStore(out)
    previous = store.read_manifest()
    if previous is not None:
        before = {(p["name"], p["sha256"]) for p in previous.get("packages", [])}
        if before != {(p["name"], p["sha256"]) for p in pkgs} or list(previous.get("parts", [])) != list(parts):
            raise CohortError(f"'{out}' holds results of other packages or parts; write to a new folder.")
    last = _last_status(store)      # read once; every part written below updates it (no re-reading the folder)
    done = _done(last, [p["name"] for p in pkgs])
    todo = [dict(r) for r in records if r["case_id"] not in done]
    if max_cases is not None:
        todo = todo[:max_cases]
    manifest: dict[str, Any] = dict(previous or {})
    manifest.update({
        "format": FORMAT, "core_version": __version__, "packages": pkgs, "parts": list(parts), "engine": engine,
        "workers": workers if engine == "ray" else 1, "batch_size": batch_size, "source": dict(source or {}),
        "n_cases": len(records), "started": manifest.get("started") or _now(), "finished": None,
        "runs": manifest.get("runs", []) + [{"started": _now(), "engine": engine, "cases": len(todo)}],
        "notice": "Research use only, not a medical device.",
    })
    manifest.setdefault("failures", [])
    store.write_manifest(manifest)
    state = {"done": 0, "index": store.next_part_index(), "stopped": False}
    total = len(todo)
    # start-up, measured apart from the explaining: loading the packages (local / loop), or starting Ray and
    # its actors (ray); "first_rows_s" is when the first part was written (seconds from t0)
    timing: dict[str, Any] = manifest["runs"][-1].setdefault("startup", {})

    def write(rows: list[dict[str, Any]]) -> bool:
        if not rows:
            return True
        timing.setdefault("first_rows_s", round(time.perf_counter() - t0, 3))
        store.write_part(rows, state["index"])
        state["index"] += 1
        new_cases = {r["case_id"] for r in rows}
        state["done"] += len(new_cases)
        fails = {(f["case_id"], f["package"]) for f in manifest["failures"]}
        for r in rows:
            if r["status"] == "failed" and (r["case_id"], r["package"]) not in fails:
                manifest["failures"].append({"case_id": r["case_id"], "package": r["package"], "reason": r["error"]})
            elif r["status"] == "ok" and (r["case_id"], r["package"]) in fails:  # a retried case that now worked
                manifest["failures"] = [f for f in manifest["failures"]
                                        if (f["case_id"], f["package"]) != (r["case_id"], r["package"])]
            last[(r["case_id"], r["package"])] = r["status"]
        manifest["counts"] = _counts(last, len(pkgs))
        store.write_manifest(manifest)
        elapsed = time.perf_counter() - t0
        rate = state["done"] / elapsed if elapsed > 0 else 0.0
        info = {"done": state["done"], "total": total, "cases_per_s": rate,
                "seconds_left": (total - state["done"]) / rate if rate > 0 else None, "elapsed": elapsed}
        if progress is not None and progress(info) is False:
            state["stopped"] = True
            return False
        return True

    t0 = time.perf_counter()
    if todo:
        if engine == "ray":
            _run_ray([p["path"] for p in pkgs], todo, parts, batch_size, workers, address, threads, write, timing, t0)
        else:
            from .engine import CohortExplainer, LoopExplainer

            cls = LoopExplainer if engine == "loop" else CohortExplainer
            explainer = cls([p["path"] for p in pkgs], parts, threads=threads)
            timing["load_s"] = round(time.perf_counter() - t0, 3)
            for start in range(0, len(todo), batch_size):
                if not write(explainer.explain(todo[start:start + batch_size])):
                    break
    elapsed = time.perf_counter() - t0
    manifest["runs"][-1].update(finished=_now(), seconds=round(elapsed, 3), cases_done=state["done"],
                                cases_per_s=round(state["done"] / elapsed, 4) if elapsed > 0 else None)
    manifest["counts"] = _counts(last, len(pkgs))
    complete = manifest["counts"]["cases_ok"] + manifest["counts"]["cases_failed"] >= len(records)
    manifest["finished"] = _now() if complete and not state["stopped"] else None
    store.write_manifest(manifest)
    return manifest


# ---- Ray ----------------------------------------------------------------------------------------------------------------

def _process_started() -> float | None:
    """When this process started (epoch seconds, from Linux's /proc), else None."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class _RayWorker:
    """An actor of the pool: loads the packages once, explains one batch (a pyarrow table) per call.

    Each batch it returns carries its start-up times (an ``_actor`` column the driver takes off before writing:
    process start, explainer imported, packages loaded, in epoch seconds), so the run reports them."""

    def __init__(self, model_dirs: Sequence[str], parts: Sequence[str], threads: int | None):
        import json

        started, boot_cpu = time.time(), time.process_time()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from .engine import CohortExplainer

        imported = time.time()
        self.explainer = CohortExplainer(model_dirs, parts, threads=threads or 1)
        # CPU seconds of this process: up to the constructor (booting a Ray worker, Ray Data's map worker and
        # unpickling this class, which imports core and torch), then for loading the packages (transformers)
        self.startup = json.dumps({"pid": os.getpid(), "process": _process_started(), "constructor": started,
                                   "imported": imported, "ready": time.time(), "boot_cpu": boot_cpu,
                                   "load_cpu": time.process_time() - boot_cpu})

    def __call__(self, batch):
        import pyarrow as pa

        from .store import rows_table

        t = rows_table(self.explainer.explain(batch.to_pylist()))
        return t.append_column("_actor", pa.array([self.startup] * t.num_rows, pa.string()))


def _actor_startup(timing: dict[str, Any], startup: str, t0_epoch: float) -> None:
    """Adds one actor's start-up (seconds from the run's start) to ``timing["actors"]`` once."""
    import json

    a = json.loads(startup)
    actors = timing.setdefault("actors", {})
    if str(a["pid"]) in actors:
        return
    rel = {k: round(a[k] - t0_epoch, 3) for k in ("process", "constructor", "imported", "ready") if a.get(k) is not None}
    actors[str(a["pid"])] = {**{f"{k}_s": v for k, v in rel.items()},
                             "import_s": round(a["imported"] - a["constructor"], 3),
                             "load_s": round(a["ready"] - a["imported"], 3),
                             **{f"{k}_s": round(a[k], 3) for k in ("boot_cpu", "load_cpu") if a.get(k) is not None}}
    timing["actors_ready_s"] = max(v["ready_s"] for v in actors.values())


_RAY_KINDS = (("gcs_server", "gcs"), ("raylet/raylet", "raylet"), ("dashboard.py", "dashboard"),
              ("log_monitor.py", "log monitor"), ("monitor.py", "autoscaler monitor"),
              ("DashboardAgent", "dashboard agent"), ("RuntimeEnvAgent", "runtime-env agent"), ("ray::IDLE", "idle workers"))


def process_tree_cpu(root: int | None = None) -> dict[int, tuple[str, float]]:
    """{pid: (command line, CPU seconds so far)} of every process below ``root`` (default: this one), read
    from Linux's /proc; {} elsewhere."""
    root = os.getpid() if root is None else root
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, float, str]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            procs[pid] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmd)
        except (OSError, ValueError, IndexError):
            continue
    out: dict[int, tuple[str, float]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cpu, cmd) in procs.items():
            if ppid == parent and pid not in out:
                out[pid] = (cmd, cpu)
                frontier.append(pid)
    return out


def ray_processes_cpu(actor_pids: set[str]) -> dict[str, float]:
    """CPU seconds of a local Ray's processes (children of this driver) by kind; the actors (``actor_pids``)
    apart, as the rest: daemons and idle workers are start-up and housekeeping, never explaining."""
    kinds: dict[str, float] = {}
    for pid, (cmd, cpu) in process_tree_cpu().items():
        if str(pid) in actor_pids:
            kind = "actors"
        else:
            # else the process's own name (Ray titles its actors "ray::Class"), so nothing hides under "other"
            kind = next((k for key, k in _RAY_KINDS if key in cmd), None) or (cmd.split()[0].rsplit("/", 1)[-1][:40]
                                                                              if cmd else "other")
        kinds[kind] = round(kinds.get(kind, 0.0) + cpu, 2)
    return kinds


def ray_available() -> bool:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def ray_block_size(n: int, batch_size: int, workers: int) -> int:
    """Cases per Ray block: at most ``batch_size``, and small enough for 4 blocks per actor."""
    return max(1, min(batch_size, -(-n // (4 * workers))))


def _run_ray(model_dirs: Sequence[str], todo: Sequence[Mapping[str, Any]], parts: Sequence[str], batch_size: int,
             workers: int, address: str | None, threads: int | None, write: Callable[[list[dict[str, Any]]], bool],
             timing: dict[str, Any], t0: float) -> None:
    if not ray_available():
        raise CohortError("the ray engine needs Ray: pip install -r requirements-scale.txt (or use --engine local).")
    import pyarrow as pa
    import ray

    t0_epoch = time.time() - (time.perf_counter() - t0)
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
        else:
            # a local Ray's workers inherit this process's environment: no runtime environment to set up
            # (that cost each actor ~2 s before its constructor ran)
            saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
            os.environ.update({k: "1" for k in saved})
            try:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        started = True
    timing["ray_init_s"] = round(time.perf_counter() - t0, 3)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False   # parts are written as they come (rows do not depend on order)
        # one block per batch, put by the driver: no read / repartition tasks compete with the actors for CPUs.
        # Blocks of at most batch_size cases and at least 4 per actor, handed out one at a time, so that no
        # actor idles at the end while another still has a queue (rows do not depend on the batch).
        size = ray_block_size(len(todo), batch_size, workers)
        ds = ray.data.from_arrow([pa.Table.from_pylist([dict(r) for r in todo[i:i + size]])
                                  for i in range(0, len(todo), size)])
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
        out = ds.map_batches(_RayWorker, fn_constructor_args=(list(model_dirs), list(parts), threads),
                             batch_size=size, batch_format="pyarrow", compute=pool, num_cpus=1)
        for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            for startup in set(batch.column("_actor").to_pylist()):
                _actor_startup(timing, startup, t0_epoch)
            if not write(batch.drop_columns(["_actor"]).to_pylist()):
                break
    finally:
        if started:
            # where a local Ray's CPU went (its daemons and idle workers are ours alone): read before they exit
            timing["ray_processes_cpu_s"] = ray_processes_cpu(set(timing.get("actors", {})))
            ray.shutdown()
