"""The dashboard's work-ahead job (dashboard/background.py): one default explanation per session, read by
every page, parts published as they are done, cancelled when the case changes."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from core import load_package, save_package
from core.explain import explain_case
from dashboard import background
from tiny import LABELS, make_case, make_model


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    path = tmp_path_factory.mktemp("bg") / "gated"
    return load_package(save_package(make_model("gated", modalities=("image", "note", "metadata")), path, LABELS, name="g"))


def test_default_explanation_answers_every_page_request_and_matches_a_direct_one(pkg):
    case = make_case(0)
    state: dict = {}
    job = background.ensure_job(state, pkg, case, "fp0")
    assert background.ensure_job(state, pkg, case, "fp0") is job            # one job per (package, case)
    first = job.wait(("prediction",))
    assert first is not None and first.prediction.label == pkg.predict(case).label
    # a part the model has no input for (spectrum) is published too: nobody waits for the whole job
    ex = background.explanation_for(job, ("note", "table", "spectrum"), {"target": first.target, "ig_steps": 24,
                                                                         "shapley_samples": 40})
    assert ex is not None and ex.note and ex.table and "spectrum" in ex.skipped
    direct = explain_case(pkg, case, parts=("cam", "modality"), target=first.target)
    got = background.explanation_for(job, ("cam", "lesion_context"), {"target": first.target})
    assert np.allclose(got.cams["gradcam"], direct.cams["gradcam"], atol=1e-5)
    assert got.modality["values"] == pytest.approx(direct.modality["values"], abs=1e-6)
    # other options or another class: not the default explanation, the page computes its own
    assert background.explanation_for(job, ("cam",), {"cam_layer": "early stage"}) is None
    assert background.explanation_for(job, ("note",), {"ig_steps": 8}) is None
    other = (first.target + 1) % len(LABELS)
    assert background.explanation_for(job, ("modality",), {"target": other}) is None
    job.thread.join(60)
    assert job.finished and job.error is None and {"stability", "all"} <= job.done


def test_a_new_case_cancels_the_old_job_between_parts(pkg):
    state: dict = {}
    gate = threading.Event()
    old = background.ensure_job(state, pkg, make_case(1), "fp1")
    new = background.ensure_job(state, pkg, make_case(2), "fp2")
    assert old.cancel.is_set() and not new.cancel.is_set() and state[background.JOB_KEY] is new
    old.thread.join(60)
    new.thread.join(60)
    assert old.finished and "all" not in old.done and old.error is None      # stopped early, quietly
    assert "all" in new.done and background.current_job(state, pkg, make_case(2), "fp2") is new
    assert background.current_job(state, pkg, make_case(1), "fp1") is None
    background.cancel_job(state)
    assert state[background.JOB_KEY] is None and new.cancel.is_set()
    gate.set()


def test_the_auto_cam_job_answers_a_page_that_sends_the_resolved_names(pkg):
    """The Image explanations page sends the package's default as names ('gradcam', 'last stage'); the job
    asked for 'auto'. Before the fix every such request missed the job and the map was computed twice."""
    from core.explain.gradcam import default_cam

    method, layer = default_cam(pkg)
    job = background.Job.__new__(background.Job)
    job.pkg = pkg
    assert background.covers(job, ("cam", "lesion_context"), {"cam_methods": (method,), "cam_layer": layer})
    assert background.covers(job, ("cam",), {"cam_methods": ["auto"], "cam_layer": "auto"})
    assert not background.covers(job, ("cam",), {"cam_methods": ("gradcam++",), "cam_layer": layer})


def test_the_committee_vote_runs_right_after_the_prediction_before_the_explanation_and_a_failure_is_kept(pkg):
    """The Prediction page's referral flag (the committee vote) is made by the job between the prediction and the
    explanation's parts, against the job's own prediction; a vote that fails is kept as one sentence."""
    state: dict = {}
    go, seen = threading.Event(), []

    def vote(pred):
        seen.append((threading.current_thread().name, pred.label))
        go.wait(60)
        return "the vote", None

    job = background.ensure_job(state, pkg, make_case(4), "fp4", vote=vote, vote_key=("committee.json", 1))
    first = job.wait(("prediction",))
    for _ in range(200):          # the vote holds the job: no explanation part is done before it returns
        if seen:
            break
        threading.Event().wait(0.05)
    assert seen == [("fusionlens-default-explanation", first.prediction.label)] and job.done == {"prediction"}
    go.set()
    assert job.wait_vote(("committee.json", 1)) == (True, "the vote", None)
    assert job.wait_vote(("committee.json", 2)) == (False, None, None)   # committee.json rewritten: not this vote
    job.thread.join(60)
    assert {"vote", "all"} <= job.done and len(seen) == 1 and job.error is None
    # a refitted committee.json keeps the job (its explanation stands) but not its vote; a job without a vote
    # answers nothing
    again = background.ensure_job(state, pkg, make_case(4), "fp4", vote=vote, vote_key=("committee.json", 2))
    assert again is job and again.wait_vote(("committee.json", 2)) == (False, None, None)
    plain = background.ensure_job(state, pkg, make_case(5), "fp5")
    assert plain.wait_vote(None) == (False, None, None)

    def broken(pred):
        raise RuntimeError("x.safetensors:\n  the weights file is missing.")

    failed = background.ensure_job(state, pkg, make_case(6), "fp6", vote=broken, vote_key=1)
    assert failed.wait_vote(1) == (True, None, "x.safetensors: the weights file is missing.")
    failed.thread.join(60)
    assert failed.error is None and "all" in failed.done     # the explanation goes on


def test_work_done_ahead_can_yield_to_the_page(pkg, monkeypatch):
    """FUSIONLENS_BACKGROUND_NICE=10: the job's thread lowers its own CPU priority (per-thread nice on Linux) so
    the page being drawn wins the cores; the page's thread keeps its own. Off by default."""
    import os

    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priorities here")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    state: dict = {}
    monkeypatch.delenv(background.BACKGROUND_NICE_ENV, raising=False)
    off = background.ensure_job(state, pkg, make_case(8), "fp8")
    off.thread.join(60)
    assert off.nice is None
    monkeypatch.setenv(background.BACKGROUND_NICE_ENV, "10")
    job = background.ensure_job(state, pkg, make_case(7), "fp7")
    job.thread.join(60)
    assert job.nice == min(19, mine + 10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine      # not this (the page's) thread


# ---- one torch thread per computing thread; the warm-up per selected package -------------------------------------

def test_the_job_computes_with_one_torch_thread_unless_told_otherwise(pkg, monkeypatch):
    """Every thread of the server that enters torch brings its own OpenMP team; with torch's default (one worker per
    core) the page, the job and the warm-up oversubscribed a 2-core machine. The job's thread uses
    FUSIONLENS_TORCH_THREADS (default half the cores: 1 here); the caller's own thread count is left alone."""
    import torch

    mine = torch.get_num_threads()
    seen: list[int] = []

    def vote(pred):
        seen.append(torch.get_num_threads())
        return None, None

    state: dict = {}
    monkeypatch.delenv(background.TORCH_THREADS_ENV, raising=False)
    job = background.ensure_job(state, pkg, make_case(9), "fp9", vote=vote, vote_key=1)
    job.thread.join(60)
    monkeypatch.setenv(background.TORCH_THREADS_ENV, "2")
    job = background.ensure_job(state, pkg, make_case(10), "fp10", vote=vote, vote_key=1)
    job.thread.join(60)
    assert seen == [background.default_torch_threads(), 2]
    assert torch.get_num_threads() == mine


def test_the_default_torch_threads_are_half_the_usable_cores(monkeypatch):
    """1 on the 2-core machine the journey figures come from; more cores give each computing thread more (a
    hospital server should not compute on one core of sixteen)."""
    monkeypatch.setattr(background, "_cgroup_cpu_quota", lambda: None)
    for cores, want in ((1, 1), (2, 1), (3, 1), (8, 4), (16, 8)):
        monkeypatch.setattr(background.os, "sched_getaffinity", lambda pid, c=cores: set(range(c)), raising=False)
        assert background.default_torch_threads() == want
    monkeypatch.setattr(background, "_cgroup_cpu_quota", lambda: 4.0)     # a container limited to 4 CPUs of 16
    assert background.default_torch_threads() == 2


def test_the_cgroup_cpu_quota_is_read(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("400000 100000\n")
    assert background._cgroup_cpu_quota(str(f)) == 4.0
    f.write_text("max 100000\n")
    assert background._cgroup_cpu_quota(str(f)) is None
    assert background._cgroup_cpu_quota(str(tmp_path / "absent")) is None


def _summary(name: str) -> dict:
    return {"path": f"/nowhere/{name}", "sha256": name, "variant": "gated"}


def test_the_warm_up_runs_for_each_selected_package_and_the_newest_or_a_job_stops_an_older_one(pkg):
    """Before, the warm-up ran once per process for the first session's package (the default cohort), so picking
    another cohort left its packages cold for the first case. Now each selected package is warmed once (loaded,
    a prediction, the committee vote and a small explanation of a demo case); a newer selection or a session's job
    stops a warm-up that is still going."""
    gate, calls = threading.Event(), []

    def slow_load(summary):
        calls.append(("load", summary["path"]))
        gate.wait(60)
        return pkg

    def vote(p, case, pred):
        calls.append(("vote", pred.label))
        return None

    a, b = _summary("warm-a"), _summary("warm-b")
    assert background.warm_up(slow_load, a, [a], lambda: make_case(11), vote=vote)
    first = background._WARM["done"]
    assert not background.warm_up(slow_load, a, [a], lambda: make_case(11), vote=vote)   # once per package
    assert background.warm_up(lambda s: pkg, b, [b], lambda: make_case(11), vote=vote)  # another package: warmed too
    second = background._WARM["done"]
    assert second.wait(120) and background.warm_status()["error"] is None
    assert not background.warm_status()["stopped"] and ("vote", pkg.predict(make_case(11)).label) in calls
    assert background._EXPLAIN_WARMED.is_set()          # the explainers' first-call costs: paid once per process
    gate.set()
    assert first.wait(60)
    assert [c for c in calls if c[0] == "vote"] == [("vote", pkg.predict(make_case(11)).label)]  # a stopped: no vote
    # a session's job stops a warm-up still going (it does the real work then)
    gate.clear()
    c = _summary("warm-c")
    assert background.warm_up(slow_load, c, [c], lambda: make_case(11), vote=vote)
    state: dict = {}
    job = background.ensure_job(state, pkg, make_case(12), "fp12")
    gate.set()
    assert background._WARM["done"].wait(60) and background.warm_status()["stopped"]
    job.thread.join(60)


def test_the_warm_up_imports_again_when_another_thread_is_importing_the_same_module(monkeypatch):
    """The first page run imports pandas while the warm-up does: Python then hands the warm-up a partially initialised
    module (AttributeError), which used to end the whole warm-up; it now tries again."""
    import builtins
    import sys

    real, failures = builtins.__import__, []

    def racing(name, *a, **k):
        if name == "core.compare" and not failures:
            failures.append(name)
            raise AttributeError("partially initialized module 'pandas' has no attribute 'Series' "
                                 "(most likely due to a circular import)")
        return real(name, *a, **k)

    monkeypatch.delitem(sys.modules, "core.compare", raising=False)
    monkeypatch.setattr(builtins, "__import__", racing)
    background._import_heavy(threading.Event())
    assert failures == ["core.compare"] and "core.compare" in sys.modules


def test_the_prediction_page_gives_the_job_a_moment_to_finish_its_vote(pkg, monkeypatch):
    """The referral flag is part of the Prediction page's headline: the page waits up to ``wait`` seconds for the
    job's vote before drawing its charts (loaders.referral_ready), so the flag comes first when the vote is quick."""
    from dashboard import loaders

    go = threading.Event()

    def vote(pred):
        go.wait(0.3)
        return "the vote", None

    state: dict = {}
    job = background.ensure_job(state, pkg, make_case(13), "fp13", vote=vote, vote_key=("committee.json", 1))
    monkeypatch.setattr(loaders, "_job", lambda p, c: job)
    monkeypatch.setattr(loaders, "committee_stamp", lambda p: ("committee.json", 1))
    job.wait(("prediction",))
    assert not loaders.referral_ready(pkg, make_case(13))                 # the vote is still on its way
    assert loaders.referral_ready(pkg, make_case(13), wait=30)            # ... and made within the wait
    job.thread.join(60)
