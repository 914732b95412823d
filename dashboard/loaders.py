"""Where packages and demo cases come from, and the caches around core's expensive calls.

* Model packages are found below the operator's folders only: ``FUSIONLENS_MODELS`` (comma-separated),
  default ``<repo>/assets/models``. The UI lists what is found; it never takes a typed model path.
* Each package is loaded once per process (``st.cache_resource``) and shared read-only by every
  session; core freezes its weights and explainers hook private copies.
* Predictions and explanations are cached per session, keyed by (package sha256 and folder, case
  fingerprint, options): a case's data never leaves its session.
* ``referral``: the referral flag of a prediction, decided like ``core.committee.decide_referral`` (the
  committee vote where the suite's ``committee.json`` was fitted for the package), from the session's
  background job when it voted (dashboard/background.py), else computed here once per session and case.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from core import Case, Package, PackageError, Prediction, discover_packages, load_package, read_package_summary
from core.case_io import DemoCase, list_demo_cases
from core.committee import COMMITTEE_FILE, CommitteeVote, ReferralDecision, fitted_spec, referral_signal, vote_for
from core.errors import FusionLensError
from core.explain import Explanation, explain_case
from dashboard import background, trace
from dashboard.session_cache import SessionCache

REPO = Path(__file__).resolve().parents[1]
MODELS_ENV = "FUSIONLENS_MODELS"
CASES_ENV = "FUSIONLENS_CASES"
DEFAULT_MODELS = REPO / "assets" / "models"
DEFAULT_CASES = REPO / "assets" / "cases"
RESULTS = SessionCache("fl_results", 24)   # predictions, explanations and comparisons of this session
# (package sha, folder, case fingerprint, committee.json stamp) -> (CommitteeVote | None, why it failed | None):
# votes the background job did not make (a failure is kept too: not retried on every rerun)
VOTES = SessionCache("fl_committee", 8)


def _roots(env: str, default: Path) -> list[Path]:
    value = os.environ.get(env, "").strip()
    if not value:
        return [default]
    return [Path(p.strip()).expanduser().resolve() for p in value.split(",") if p.strip()]


def models_roots() -> list[Path]:
    return _roots(MODELS_ENV, DEFAULT_MODELS)


def cases_roots() -> list[Path]:
    return _roots(CASES_ENV, DEFAULT_CASES)


@st.cache_data(ttl=60, show_spinner=False)
def _summaries(roots: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    found, problems = [], []
    for root in roots:
        for path in discover_packages(root):
            try:
                s = read_package_summary(path)
            except PackageError as e:
                problems.append(str(e))
                continue
            s["root"] = root
            s["path"] = str(Path(path).resolve())
            found.append(s)
    return found, problems


def package_summaries() -> tuple[list[dict[str, Any]], list[str]]:
    """Every package found below the models folders (config facts only, no weights) and the
    sentences for folders that could not be read."""
    return _summaries(tuple(str(r) for r in models_roots()))


# a whole suite at once (the dermatology suite has 18 packages, and the committee vote of its mmtm and the
# Compare page's "all variants" load every one): room for two suites, so switching case or page does not
# reload packages from disk; each holds only its fusion + head (frozen encoders are shared by the pool)
@st.cache_resource(show_spinner=False, max_entries=40)
def _load(path: str, root: str, sha256: str) -> Package:
    # sha256 is part of the key: a package replaced on disk is loaded again
    trace.event(f"load start {Path(path).name}")
    try:
        return load_package(path, root=root)
    finally:
        trace.event(f"load done {Path(path).name}")


def load(summary: dict[str, Any]) -> Package:
    """The shared, read-only Package of a summary (PackageError if it can't be used)."""
    return _load(summary["path"], summary["root"], str(summary.get("sha256")))


@st.cache_data(ttl=60, show_spinner=False)
def package_metrics(path: str) -> dict[str, Any] | None:
    """``metrics.json`` of a package folder, or None."""
    f = Path(path) / "metrics.json"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def demo_cases() -> list[DemoCase]:
    return list_demo_cases(cases_roots())


# ----------------------------------------------------------------------------------------------------------------------
# the per-session result cache

def _key(kind: str, pkg: Package, case: Case, options: tuple) -> tuple:
    return (kind, pkg.sha256, str(pkg.path), case.fingerprint(), options)


def _job(pkg: Package, case: Case):
    """This session's background job for (package, case) (dashboard/background.py), or None."""
    return background.current_job(st.session_state, pkg, case, case.fingerprint())


def predict(pkg: Package, case: Case, tta: bool = False) -> Prediction:
    job = None if tta else _job(pkg, case)
    trace.event(f"page predict wait (job {job is not None})")
    ex = job.wait(("prediction",)) if job is not None else None
    trace.event("page predict got")
    if ex is not None:
        return ex.prediction
    if tta:
        return RESULTS.get_or_compute(_key("predict_tta", pkg, case, ()), lambda: pkg.predict_tta(case))
    return RESULTS.get_or_compute(_key("predict", pkg, case, ()), lambda: pkg.predict(case))


def explain(pkg: Package, case: Case, parts: Sequence[str], only_cached: bool = False, **options: Any) -> Explanation | None:
    """``core.explain.explain_case`` once per (package, case, parts, options) in this session;
    ``only_cached``: None instead of computing (for slow methods that wait for a button)."""
    job = _job(pkg, case)
    if job is not None:
        ex = background.explanation_for(job, parts, options)   # the session's default explanation answers it
        if ex is not None:
            return ex
    opts = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()))
    compute = None if only_cached else (lambda: explain_case(pkg, case, parts=tuple(parts), **options))
    return RESULTS.get_or_compute(_key("explain", pkg, case, (tuple(parts), opts)), compute)


def cam_layers(pkg: Package) -> list[str]:
    """The image encoder's CAM layers and the layer products (core.explain.gradcam.cam_layer_names)."""
    from core.explain.gradcam import cam_layer_names

    return cam_layer_names(pkg.model.encoders["image"]) if "image" in pkg.model.encoders else []


def compare(pkgs: Sequence[Package], case: Case, explain: bool, only_cached: bool = False) -> Any:
    """``core.compare.compare_variants`` once per (packages, case, explain) in this session."""
    from core.compare import compare_variants

    key = ("compare", tuple((p.sha256, str(p.path)) for p in pkgs), case.fingerprint(), explain)
    job = _job(pkgs[0], case) if explain and pkgs else None
    done = job.wait_comparison(key[1]) if job is not None else None
    if done is not None:
        return RESULTS.put(key, done)          # the same object the job holds: no copy
    compute = None if only_cached else (lambda: compare_variants(list(pkgs), case, explain=explain))
    return RESULTS.get_or_compute(key, compute)


# ----------------------------------------------------------------------------------------------------------------------
# the referral flag (core/committee.py): the committee vote where committee.json was fitted for the package

def committee_stamp(pkg: Package) -> tuple[str, int] | None:
    """What a vote depends on besides the package and the case: the suite's committee.json and its mtime
    (a refitted file must not be answered from a vote made under the old one); None without a file."""
    f = Path(pkg.path).parent / COMMITTEE_FILE
    try:
        return str(f), f.stat().st_mtime_ns
    except OSError:
        return None


def member_loader(pkg: Package, summaries: Sequence[dict[str, Any]] | None = None):
    """Folder name -> the shared Package of that committee member in ``pkg``'s suite (None: not found)."""
    suite = Path(pkg.path).parent
    if summaries is None:
        summaries = package_summaries()[0]
    by_name = {Path(s["path"]).name: s for s in summaries if Path(s["path"]).parent == suite}
    return lambda name: load(by_name[name]) if name in by_name else None


def committee_vote(pkg: Package, case: Case, prediction: Prediction,
                   summaries: Sequence[dict[str, Any]] | None = None) -> tuple[CommitteeVote | None, str | None]:
    """(the committee vote fitted for ``pkg`` against ``prediction`` (a plain one), or None; why it failed).
    (None, None) where no committee.json was fitted for ``pkg`` (its own flag applies, nothing is said)."""
    spec, failure = fitted_spec(pkg)
    if spec is None:
        return None, failure
    try:
        return vote_for(pkg, case, spec, prediction, member_loader(pkg, summaries)), None
    except FusionLensError as e:
        return None, str(e)


def referral_ready(pkg: Package, case: Case, wait: float = 0.0) -> bool:
    """Whether ``referral`` answers without waiting (no vote fitted for ``pkg``, or its vote already made);
    ``wait``: seconds to give the session's background job to finish a vote it is making."""
    stamp = committee_stamp(pkg)
    if stamp is None:
        return True
    job = _job(pkg, case)
    if job is not None and job.vote_key == stamp:
        if wait > 0 and job._vote is not None:
            job.wait_vote(stamp, timeout=wait)
        if "vote" in job.done or job.finished:
            return True
    return (pkg.sha256, str(pkg.path), case.fingerprint(), stamp) in VOTES


def referral(pkg: Package, case: Case, prediction: Prediction | None = None) -> ReferralDecision:
    """The referral flag of ``prediction`` (default: the plain prediction): the committee vote's where
    committee.json was fitted for ``pkg`` (the session's background vote when the job made it, else computed
    here once per session and case), else the package's own entropy flag."""
    plain = predict(pkg, case)
    prediction = prediction or plain
    spec, failure = fitted_spec(pkg)
    if spec is None:
        return ReferralDecision(referral_signal(prediction, None, None, failure), None, bool(prediction.refer))
    stamp = committee_stamp(pkg)
    job = _job(pkg, case)
    trace.event(f"page referral wait (job {job is not None})")
    answered, vote, failure = job.wait_vote(stamp) if job is not None else (False, None, None)
    trace.event(f"page referral got answered={answered}")
    if not answered:
        key = (pkg.sha256, str(pkg.path), case.fingerprint(), stamp)
        vote, failure = VOTES.get(key) or VOTES.put(key, committee_vote(pkg, case, plain))
    return ReferralDecision(referral_signal(prediction, spec, vote, failure), vote, bool(prediction.refer))
