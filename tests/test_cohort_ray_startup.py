"""Where a Ray run's start-up goes: CPU of the driver's child processes by kind, each actor's boot and
package-loading CPU, and the benchmark's lines that report them (no Ray needed: the pieces are fed by hand)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_tree_cpu_sees_a_busy_child_and_sorts_ray_processes_by_kind():
    from core.cohort.runner import process_tree_cpu, ray_processes_cpu

    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(5)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 20
        while time.time() < deadline and process_tree_cpu().get(child.pid, ("", 0.0))[1] < 0.25:
            time.sleep(0.2)
        cmd, cpu = process_tree_cpu()[child.pid]
        assert "process_time" in cmd and cpu >= 0.25
        assert ray_processes_cpu({str(child.pid)})["actors"] >= 0.25          # an actor of the run
        assert ray_processes_cpu(set())[Path(sys.executable).name] >= 0.25   # anything else: by its own name
    finally:
        child.kill()
        child.wait()


def test_actor_start_up_keeps_boot_and_load_cpu():
    from core.cohort.runner import _actor_startup

    timing: dict = {}
    t0 = 1000.0
    a = {"pid": 7, "process": 1001.0, "constructor": 1010.0, "imported": 1010.5, "ready": 1014.0, "boot_cpu": 3.2,
         "load_cpu": 2.9}
    _actor_startup(timing, json.dumps(a), t0)
    _actor_startup(timing, json.dumps({**a, "ready": 2000.0}), t0)          # the same actor again: kept once
    got = timing["actors"]["7"]
    assert got["boot_cpu_s"] == 3.2 and got["load_cpu_s"] == 2.9 and got["ready_s"] == 14.0
    assert got["import_s"] == 0.5 and got["load_s"] == 3.5 and timing["actors_ready_s"] == 14.0


def test_bench_table_reports_where_rays_start_up_went():
    from core.cohort.bench import bench_table

    eng = {"seconds": 40.0, "cases_per_s": 2.4, "startup_s": 30.0, "steady_cases_per_s": 9.6, "cpu_seconds_per_case": 0.2,
           "load_average_1min": 3.0}
    r = {"cases": 96, "packages": ["a", "b"], "parts": ["prediction"], "batch_size": 8, "torch_threads": 1, "cpus": 2,
         "engines": {"ray": {**eng, "startup_measured": {
             "ray_init_s": 9.0, "first_rows_s": 31.0,
             "actors": {"1": {"ready_s": 25.0, "import_s": 0.1, "load_s": 6.0, "boot_cpu_s": 3.5, "load_cpu_s": 3.1},
                        "2": {"ready_s": 26.0, "import_s": 0.1, "load_s": 6.5, "boot_cpu_s": 3.6, "load_cpu_s": 3.0}},
             "ray_processes_cpu_s": {"gcs": 0.4, "raylet": 1.1, "idle workers": 1.0, "actors": 20.0}}}},
         "max_probability_difference": {}}
    text = bench_table(r)
    assert "up to its constructor (Ray worker, Ray Data, importing core + torch) 3.5, 3.6" in text
    assert "loading the packages (transformers) 3.1, 3.0" in text
    assert "actors 20.0, gcs 0.4, idle workers 1.0, raylet 1.1" in text


def test_bench_table_gives_the_order_free_explaining_cpu_ratio():
    from core.cohort.bench import bench_table

    eng = {"seconds": 10.0, "cases_per_s": 1.0, "startup_s": 0.0, "steady_cases_per_s": 1.0, "cpu_seconds_per_case": 0.5,
           "load_average_1min": 1.0, "startup_measured": {}}
    r = {"cases": 10, "packages": ["a"], "parts": ["prediction"], "batch_size": 8, "torch_threads": 1, "cpus": 2,
         "engines": {"loop": {**eng, "explain_cpu_seconds_per_case": 0.9}, "local": {**eng, "explain_cpu_seconds_per_case": 0.3}},
         "local_over_loop": 1.0, "local_over_loop_steady": 1.0, "local_over_loop_cpu": 1.0, "local_over_loop_explain_cpu": 3.0,
         "max_probability_difference": {}}
    text = bench_table(r)
    assert "3.00x the rows' own CPU (explaining only)" in text and "      0.900 " in text
