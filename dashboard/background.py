"""Work done before it is asked for: the case's default explanation per session, and warm packages.

* As soon as a session has a case and a model, one background thread computes the case's **default
  explanation** (what the pages show before the user changes a control: the prediction, modality
  Shapley values, the package's default heatmap with the lesion / context check, its stability, the note /
  table / spectrum attributions) with one encoder pass, part by part in the order the pages come,
  and then the default variant comparison of the Compare page. Right after the prediction (before the
  explanation's parts) it runs the **committee vote** where the suite's ``committee.json`` was fitted for
  the package (the Prediction page's referral flag; ``core.committee``), so the page's headline does not
  wait for it. Every page reads it through ``loaders.predict`` / ``loaders.referral`` / ``loaders.explain``
  / ``loaders.compare``, waiting only for the parts it draws; a vote that failed is kept as one sentence.
  One job per session (bounded memory: one explanation, one comparison); a new case or model cancels
  the old job between two parts. At most ``MAX_CONCURRENT`` jobs run at once in the process.
* Optionally, work done ahead yields to the page the user is looking at: with ``FUSIONLENS_BACKGROUND_NICE=10``
  every background thread lowers its own CPU priority by 10 (``background_priority``; Linux nice is per
  thread), so the page's script and the browser drawing it win the cores while the job goes on. Off by
  default: on a loaded machine it could not be shown to help (it also slows the parts later pages need).
* Few torch threads per computing thread (``torch_threads``; ``FUSIONLENS_TORCH_THREADS``, default half the
  cores, so 1 on a 2-core machine): the
  server computes in several threads at once (the page's script, the session's job, the warm-up and preload
  threads), and each thread that enters torch's OpenMP code brings its own team of ``torch.get_num_threads()``
  workers; on two cores that oversubscribes them, and OpenMP's barriers then wait for descheduled workers.
  Measured on the 2-core machine under load 6-8 (other jobs): derm-00001's cold prediction 0.11-0.15 s with one
  thread against 1.4-5.4 s with two, the committee vote 0.12-0.14 s against 0.7-9.6 s.
* ``warm_up`` runs once per selected package and process, as soon as a session selects it (the first session
  gets the default cohort's; switching to another cohort warms that one, and the newer warm-up supersedes an
  older one still running): the heavy imports, the package and the Compare page's default variants loaded into
  the shared cache, one prediction + committee vote of the cohort's first demo case (allocator and kernel
  warm-up) and, the first time in the process, a small explanation and the figures, while the user is still
  choosing a case. A session's job
  stops it between two steps (the job does the real work then). Streamlit has no hook before the first session,
  so that is the earliest moment.

Pure core calls run in the threads; no Streamlit element is drawn from them.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

from core.explain import EXPLAIN_PARTS
from core.explain.gradcam import resolve_cam
from dashboard import trace

JOB_KEY = "fl_background"          # session_state: the session's Job
ORDER = ("modality", "cam", "lesion_context", "stability", "note", "table", "spectrum")  # the pages' order
DEFAULTS: dict[str, Any] = {"cam_methods": ("auto",), "cam_layer": "auto", "tta": False, "ig_steps": 24,
                            "stability_samples": 8, "shapley_samples": 40}
# which explain_case options each part depends on (besides the target): core's part registry says
PART_OPTIONS = {p: EXPLAIN_PARTS.get(p).options for p in ORDER}
COMPARE_VARIANTS = ("concat", "gated", "mmtm", "hierarchical")
MAX_CONCURRENT = 2
WAIT_S = 300.0

_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)
_LIVE_JOBS: "weakref.WeakSet[Job]" = weakref.WeakSet()   # every job not yet collected (cancelled at exit)
_WARM_THREADS: list[threading.Thread] = []
EXIT_WAIT_S = 60.0


BACKGROUND_NICE_ENV = "FUSIONLENS_BACKGROUND_NICE"
BACKGROUND_NICE = 0     # off by default (see the module's docstring)
TORCH_THREADS_ENV = "FUSIONLENS_TORCH_THREADS"


def default_torch_threads() -> int:
    """Torch threads per computing thread of the server when ``FUSIONLENS_TORCH_THREADS`` is not set: half the
    cores this process may use (at least 1), so that two threads computing at once (the page's script and the
    session's job, or the job and a warm-up) fill the cores without oversubscribing them: 1 on the 2-core machine
    the figures below come from, 4 on 8 cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:       # a container's CPU quota (cgroup v2 cpu.max) below the visible cores
        cores = min(cores, max(1, int(quota)))
    return max(1, cores // 2)


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs this process's cgroup may use ("quota period" in cgroup v2's ``cpu.max``), None when unlimited or
    unreadable."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else float(quota) / float(period)
    except (OSError, ValueError):
        return None


def torch_threads() -> int:
    """Set torch's intra-op threads for the calling thread (and torch's process-wide count) to
    ``FUSIONLENS_TORCH_THREADS`` (default :func:`default_torch_threads`; 0 or unparsable leaves torch's default)
    -> torch's thread count. Called by every page run (``state.setup_page``) and first thing in every background
    thread."""
    import torch

    raw = os.environ.get(TORCH_THREADS_ENV)
    try:
        n = default_torch_threads() if raw is None else int(raw)
    except ValueError:
        n = 0
    if n > 0:
        torch.set_num_threads(n)    # OpenMP keeps the count per thread: set for this one too, even if unchanged
    return torch.get_num_threads()


def _thread_setup() -> int | None:
    """First thing in a background thread: its torch threads (``torch_threads``), then the optional lower CPU
    priority (``background_priority``, whose result is returned)."""
    torch_threads()
    return background_priority()


def background_priority() -> int | None:
    """Lower the calling thread's CPU priority by ``FUSIONLENS_BACKGROUND_NICE`` (default 0: leave it) so
    that work done ahead yields to the page being drawn; the thread's new nice value, or None (not lowered:
    turned off, or no per-thread priority on this system). Call it first thing in a background thread."""
    try:
        step = int(os.environ.get(BACKGROUND_NICE_ENV, BACKGROUND_NICE))
    except ValueError:
        step = BACKGROUND_NICE
    if step <= 0:
        return None
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError):
        return None


def _drain_at_exit(timeout: float = EXIT_WAIT_S) -> None:
    """Cancel every job and let the background threads end before the interpreter finalises.

    The threads are daemons so that a stuck computation never blocks a shutdown, but a daemon thread
    still inside torch when Python finalises is killed by a forced unwind; with Ray's C++ terminate
    handler loaded (the Cohort page's Ray engine) that aborts the whole process. atexit runs before
    finalisation, so cancelled jobs stop at their next part boundary and are joined here."""
    for job in list(_LIVE_JOBS):
        job.cancel.set()
    deadline = time.monotonic() + timeout
    for thread in [job.thread for job in list(_LIVE_JOBS)] + list(_WARM_THREADS):
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_drain_at_exit)


def default_compare_paths(summary: Mapping[str, Any], same: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Compare page's default side-by-side choice: the current package and up to two of the main
    fused variants of its cohort (``same``: the cohort's packages in the page's order)."""
    preferred = [summary["path"]] + [s["path"] for s in same if s["variant"] in COMPARE_VARIANTS and s["path"] != summary["path"]]
    return preferred[:3] if len(preferred) >= 3 else [s["path"] for s in same][:3]


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


class Job:
    """The default explanation (and comparison) of one case under one package, computed in a thread."""

    def __init__(self, key: tuple, pkg: Any, case: Any, compare_pkgs: Callable[[], list] | None = None,
                 compare_key: tuple | None = None, vote: Callable[[Any], tuple[Any, str | None]] | None = None,
                 vote_key: Any = None):
        self.key, self.pkg, self.case = key, pkg, case
        self.cancel = threading.Event()
        self.cond = threading.Condition()
        self.done: set[str] = set()
        self.explanation: Any = None
        self.comparison: Any = None
        self.compare_key = compare_key            # ((sha256, folder), ...) of the default comparison
        self.vote: Any = None                     # core.committee.CommitteeVote, when one was fitted and computed
        self.vote_failure: str | None = None      # why the vote fitted for this package could not be computed
        self.vote_key = vote_key                  # what the vote depends on besides the job's key (committee.json)
        self._vote = vote
        self.error: BaseException | None = None
        self.nice: int | None = None              # the thread's nice value once lowered (background_priority)
        self.finished = False
        self.started = time.perf_counter()
        self._compare_pkgs = compare_pkgs
        self.thread = threading.Thread(target=self._run, name="fusionlens-default-explanation", daemon=True)
        _LIVE_JOBS.add(self)

    def start(self, attach: Callable[[threading.Thread], None] | None = None) -> "Job":
        if attach is not None:
            attach(self.thread)
        self.thread.start()
        return self

    # -- the thread -----------------------------------------------------------------------------
    def _progress(self, part: str, ex: Any) -> None:
        trace.event(f"job part {part}")
        with self.cond:
            self.explanation = ex
            self.done.add(part)
            self.cond.notify_all()
        if part == "prediction" and self._vote is not None and not self.cancel.is_set():
            self._run_vote(ex.prediction)

    def _run_vote(self, prediction: Any) -> None:
        """The committee vote against the prediction just made (the Prediction page's referral flag), before
        the explanation's parts: ``vote(prediction) -> (CommitteeVote | None, why it failed | None)``."""
        trace.event("job vote start")
        try:
            vote, failure = self._vote(prediction)
        except Exception as e:  # noqa: BLE001  (kept as one sentence; the page falls back to the package's own flag)
            vote, failure = None, " ".join(str(e).split()) or type(e).__name__
        with self.cond:
            self.vote, self.vote_failure = vote, failure
            trace.event("job vote done")
            self.done.add("vote")
            self.cond.notify_all()

    def _run(self) -> None:
        from core.compare import compare_variants
        from core.explain import explain_case
        from core.explain.engine import ExplainCancelled

        self.nice = _thread_setup()
        trace.event("job thread start")
        try:
            with _SLOTS:
                trace.event("job slot acquired")
                if self.cancel.is_set():
                    return
                explain_case(self.pkg, self.case, parts=ORDER, progress=self._progress, cancel=self.cancel, **DEFAULTS)
                self._progress("all", self.explanation)
                pkgs = self._compare_pkgs() if self._compare_pkgs is not None else []
                if len(pkgs) >= 2 and not self.cancel.is_set():
                    cmp = compare_variants(pkgs, self.case, explain=True, reuse=[self.explanation])
                    trace.event("job comparison done")
                    with self.cond:
                        self.comparison = cmp if tuple((p.sha256, str(p.path)) for p in pkgs) == self.compare_key else None
        except ExplainCancelled:
            pass
        except Exception as e:  # noqa: BLE001  (a page asking for the part computes it itself and shows the error)
            self.error = e
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    # -- the pages ------------------------------------------------------------------------------
    def wait(self, parts: Sequence[str], timeout: float = WAIT_S) -> Any | None:
        """The explanation once ``parts`` are done; None when the job ended without them."""
        need = set(parts)
        with self.cond:
            self.cond.wait_for(lambda: self.finished or need <= self.done, timeout)
            return self.explanation if need <= self.done else None

    def wait_vote(self, vote_key: Any, timeout: float = WAIT_S) -> tuple[bool, Any, str | None]:
        """(answered, the vote, why it failed) once the job has voted; answered is False when this job does
        not vote, voted under another ``vote_key`` (committee.json was rewritten) or ended without voting."""
        if self._vote is None or vote_key != self.vote_key:
            return False, None, None
        with self.cond:
            self.cond.wait_for(lambda: self.finished or "vote" in self.done, timeout)
            if "vote" not in self.done:
                return False, None, None
            return True, self.vote, self.vote_failure

    def wait_comparison(self, key: tuple, timeout: float = WAIT_S) -> Any | None:
        if key != self.compare_key:
            return None
        with self.cond:
            self.cond.wait_for(lambda: self.finished or self.comparison is not None, timeout)
            return self.comparison if self.compare_key == key else None


def current_job(session_state: Mapping[str, Any], pkg: Any, case: Any, fingerprint: str) -> Job | None:
    job = session_state.get(JOB_KEY)
    if job is None or job.cancel.is_set() or job.key != (pkg.sha256, str(pkg.path), fingerprint):
        return None
    return job


def ensure_job(session_state: Any, pkg: Any, case: Any, fingerprint: str,
               compare_pkgs: Callable[[], list] | None = None, compare_key: tuple | None = None,
               attach: Callable[[threading.Thread], None] | None = None,
               vote: Callable[[Any], tuple[Any, str | None]] | None = None, vote_key: Any = None) -> Job:
    """The session's job for (package, case), started if needed; any other job of the session is cancelled.
    ``vote``: the committee vote to run right after the prediction (see ``Job._run_vote``); ``vote_key``:
    what it depends on besides the package and the case (a job that voted under another one is kept for its
    explanation; ``wait_vote`` does not answer for the new key, so the page votes itself)."""
    key = (pkg.sha256, str(pkg.path), fingerprint)
    job = session_state.get(JOB_KEY)
    if job is not None and job.key == key and not job.cancel.is_set():
        return job
    if job is not None:
        job.cancel.set()
    stop_warm_up()                                 # the job does the real work now
    job = session_state[JOB_KEY] = Job(key, pkg, case, compare_pkgs, compare_key, vote, vote_key).start(attach)
    return job


_PRELOADED: set[Any] = set()
_PRELOAD_LOCK = threading.Lock()


def preload(key: Any, load: Callable[[], Any], attach: Callable[[threading.Thread], None] | None = None) -> bool:
    """Run ``load`` once per process and ``key`` in a background thread (e.g. the committee members of the
    selected package, loaded into the shared cache while the user is still choosing a case); True when started.
    Warming only: a failure is left for the page that needs the result to report."""
    with _PRELOAD_LOCK:
        if key in _PRELOADED:
            return False
        _PRELOADED.add(key)

    def run() -> None:
        _thread_setup()
        trace.event(f"preload start {key}")
        try:
            load()
        except Exception:  # noqa: BLE001  (an optimisation; the page reports real errors)
            pass
        trace.event("preload done")

    return _start_warm_thread(run, "fusionlens-preload", attach)


def _start_warm_thread(run: Callable[[], None], name: str, attach: Callable[[threading.Thread], Any] | None) -> bool:
    """Start a daemon warm-up thread (kept in ``_WARM_THREADS``; ``attach``: e.g. Streamlit's script-run
    context) -> True."""
    thread = threading.Thread(target=run, name=name, daemon=True)
    _WARM_THREADS.append(thread)
    if attach is not None:
        attach(thread)
    thread.start()
    return True


def cancel_job(session_state: Any) -> None:
    job = session_state.get(JOB_KEY)
    if job is not None:
        job.cancel.set()
        session_state[JOB_KEY] = None


def covers(job: Job, parts: Sequence[str], options: Mapping[str, Any]) -> bool:
    """Whether the default explanation answers a request for ``parts`` with ``options`` (target checked later)."""
    if not set(parts) <= set(PART_OPTIONS):
        return False
    unknown = set(options) - set(DEFAULTS) - {"target"}
    if unknown:
        return False
    asked = {k: _norm(options.get(k, v)) for k, v in DEFAULTS.items()}
    default = {k: _norm(v) for k, v in DEFAULTS.items()}
    # the CAM options compared as resolved for this package ("auto" = its default method / layer), so a page
    # that sends the resolved names is answered by the job that asked for "auto"
    asked["cam_methods"], asked["cam_layer"] = resolve_cam(job.pkg, asked["cam_methods"], asked["cam_layer"])
    default["cam_methods"], default["cam_layer"] = resolve_cam(job.pkg, default["cam_methods"], default["cam_layer"])
    for part in parts:
        for opt in PART_OPTIONS[part]:
            if asked[opt] != default[opt]:
                return False
    return True


def explanation_for(job: Job, parts: Sequence[str], options: Mapping[str, Any]) -> Any | None:
    """The default explanation when it answers the request (waiting for its parts), else None."""
    if not covers(job, parts, options):
        return None
    target = options.get("target")
    if target is not None:
        first = job.wait(("prediction",))
        if first is None or first.target != (first.prediction.labels.index(target) if isinstance(target, str) else int(target)):
            return None
    return job.wait(tuple(parts))


# ---- server warm-up -------------------------------------------------------------------------------------------------

_WARM_LOCK = threading.Lock()
_WARMED: set[tuple[str, str]] = set()    # (package folder, sha256) warmed or being warmed in this process
# the latest warm-up: started, done (an Event set when it ended), seconds, error (repr), key, stopped (superseded
# or a job started before it was through)
_WARM: dict[str, Any] = {"started": False, "done": threading.Event(), "seconds": None, "error": None, "key": None,
                         "stopped": False}
_WARM_STOP: list[threading.Event] = [threading.Event()]   # the running warm-up's stop signal
_EXPLAIN_WARMED = threading.Event()   # a warm-up got through its explanation and figures (once per process is enough)
IMPORT_TRIES = 5


class _WarmStopped(Exception):
    pass


def stop_warm_up() -> None:
    """Stop the running warm-up at its next step (a session's job does the real work now)."""
    _WARM_STOP[0].set()


def _import_heavy(stop: threading.Event) -> None:
    """The heavy imports (captum, pytorch-grad-cam, plotly, pandas through core.compare / report), tried again
    when another thread is importing the same module right now: Python then hands this thread a partially
    initialised module (seen on the first page run: "partially initialized module 'pandas' has no attribute
    'Series'"), and before this retry the whole warm-up ended there."""
    for attempt in range(IMPORT_TRIES):
        try:
            import core.compare
            import core.explain
            import core.plots
            import core.report  # noqa: F401  (every page's report panel)
            return
        except (ImportError, AttributeError):
            if attempt == IMPORT_TRIES - 1 or stop.wait(0.3):
                raise


def warm_up(load: Callable[[Mapping[str, Any]], Any], summary: Mapping[str, Any], same: Sequence[Mapping[str, Any]],
            demo_case: Callable[[], Any] | None = None, attach: Callable[[threading.Thread], None] | None = None,
            vote: Callable[[Any, Any, Any], Any] | None = None) -> bool:
    """Warm the selected package once per process (see the module's docstring): the package and the Compare
    page's default variants (``same``: the cohort's packages), one prediction of ``demo_case()`` with each, the
    committee vote ``vote(pkg, case, prediction)`` where one was fitted, and (first time in the process) a small
    explanation and the figures.
    True when this call started it; a warm-up still running for another package is stopped."""
    key = (str(summary["path"]), str(summary.get("sha256")))
    with _WARM_LOCK:
        if key in _WARMED:
            return False
        _WARMED.add(key)
        _WARM_STOP[0].set()                      # an older warm-up (another package) stops at its next step
        stop = _WARM_STOP[0] = threading.Event()
        done = threading.Event()
        _WARM.update(started=True, done=done, seconds=None, error=None, key=key, stopped=False)

    def step() -> None:
        if stop.is_set():
            raise _WarmStopped

    def run() -> None:
        from core.explain.engine import ExplainCancelled

        _thread_setup()
        t0 = time.perf_counter()
        trace.event(f"warm-up start {summary['path']}")
        error, stopped = None, False
        try:
            _import_heavy(stop)
            step()
            from core.explain import explain_case

            by_path = {s["path"]: s for s in same}
            loaded = []
            for s in [summary] + [by_path[p] for p in default_compare_paths(summary, same)[1:] if p in by_path]:
                loaded.append(load(s))
                step()
            trace.event("warm-up loaded")
            case = demo_case() if demo_case is not None else None
            if case is not None:
                with _SLOTS:
                    trace.event("warm-up slot acquired")
                    preds = []
                    for pkg in loaded:
                        step()
                        preds.append(pkg.predict(case))
                    step()
                    if vote is not None:
                        vote(loaded[0], case, preds[0])
                        trace.event("warm-up voted")
                    # the explainers' and the figures' first-call costs are the process's, paid once; a later
                    # package (another cohort) needs its encoders run, which the prediction did
                    ex = None if _EXPLAIN_WARMED.is_set() else explain_case(
                        loaded[0], case, parts=ORDER, cancel=stop,
                        **{**DEFAULTS, "stability_samples": 2, "ig_steps": 4, "shapley_samples": 4})
                if ex is not None:
                    trace.event("warm-up explained")
                    step()
                    _warm_figures(ex, case)
                    _EXPLAIN_WARMED.set()
        except (_WarmStopped, ExplainCancelled):
            stopped = True
        except Exception as e:  # noqa: BLE001  (warming is an optimisation; the pages report real errors)
            error = repr(e)
            trace.event(f"warm-up error {e!r}")
        finally:
            # a stopped or failed warm-up is not tried again for this package: a job came first (it warms what it
            # uses) or the user moved on; the pages report real errors
            with _WARM_LOCK:                      # a newer warm-up may be replacing _WARM's fields right now
                if _WARM["done"] is done:         # the latest warm-up's figures (an older one only ends)
                    _WARM.update(seconds=round(time.perf_counter() - t0, 2), error=error, stopped=stopped)
            trace.event(f"warm-up done stopped={stopped}")
            done.set()

    return _start_warm_thread(run, "fusionlens-warm-up", attach)


def _warm_figures(ex: Any, case: Any) -> None:
    """Build (and serialise) the figures the pages draw once: plotly validates lazily, and the first
    figure of each kind in a process costs far more than the next."""
    from core import plots

    p = ex.prediction
    figs = [lambda: plots.probability_bars(p.labels, p.calibrated, p.mc_samples.std(0)),
            lambda: plots.mc_distribution(p.labels, p.mc_samples),
            lambda: plots.modality_bars({"a": 0.5, "b": 0.5}, "weights", reference=0.5),
            lambda: plots.shapley_bars(ex.modality), lambda: plots.counterfactual_bars(ex.modality)]
    if ex.cams and case.image is not None:
        cam = next(iter(ex.cams.values()))
        lc = ex.lesion_context or {}
        figs += [lambda: plots.cam_overlay(case.image, cam, 0.5, lc.get("mask"), lc.get("ring"), "warm-up")]
        if lc:
            figs += [lambda: plots.region_shares(next(iter(lc["shares"].values()))),
                     lambda: plots.confidence_check(lc["confidence"], p.label),
                     lambda: plots.heatmap_pair(lc["lesion_only_map"], lc["context_only_map"])]
        if ex.stability:
            figs.append(lambda: plots.stability_figure(ex.stability))
    if ex.table:
        figs.append(lambda: plots.table_attribution_bars(ex.table["features"], "integrated_gradients"))
    for make in figs:
        try:
            make().to_json()
        except Exception:  # noqa: BLE001  (a figure that fails here fails on its page with a message)
            continue


def warm_status() -> dict[str, Any]:
    """The latest warm-up: started, done, seconds, error, stopped (superseded or a job came first)."""
    with _WARM_LOCK:
        return {"started": _WARM["started"], "done": _WARM["done"].is_set(), "seconds": _WARM["seconds"],
                "error": _WARM["error"], "stopped": _WARM["stopped"]}
