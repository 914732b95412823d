"""``python -m core bench`` in its quick mode on the shipped demo packages: it runs and reports every
figure the README table needs. No timing is asserted (speed is read from the benchmark, not tests), so one
demo case per cohort is enough: the first dermatology case carries image, mask, note and metadata and the
first diabetes case metadata and a spectrum, so every stage still runs (the README's figures come from a
full run with more cases and repeats)."""
from __future__ import annotations

import json
import math

import pytest

from core.bench import FULL_PARTS, GOALS
from core.cli import main

pytestmark = pytest.mark.slow

STAGES = ["load_cold", "load_warm", "forward_plain", "preprocess", "fusion_and_head", "predict_T30", "predict_T30_naive",
          "explain_full", "explain_full_naive", "compare_2", "compare_2_naive", "compare_4", "compare_4_naive",
          "compare_all", "compare_all_naive", "report_pdf", "report_html", "explain_part:modality",
          "explain_part:faithfulness", "explain_part:table_with_shapley_sampling_40", "forward_plain_int8", "predict_T30_int8"]


def test_bench_quick_mode_reports_every_stage_ratio_and_memory(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--cases", "1", "--repeats", "1", "--memory-cases", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["cohorts"]) == {"dermatology", "diabetes"} and result["machine"]["cpus"] >= 1
    for cohort, r in result["cohorts"].items():
        assert r["cases"] == 1 and cohort in printed
        missing = [s for s in STAGES if s not in r["stages"]]
        assert not missing, (cohort, missing)
        for name, s in r["stages"].items():
            assert s["n"] >= 1 and 0 < s["median_ms"] <= s["p90_ms"] + 1e-6, (cohort, name, s)
        assert set(GOALS) <= set(r["ratios"]) and all(math.isfinite(v) for v in r["ratios"].values()), r["ratios"]
        # every speed ratio is a positive number (memory growth may be zero or negative)
        assert all(v > 0 for k, v in r["ratios"].items() if k != "memory_growth_percent"), r["ratios"]
        assert set(r["goals"]) == set(GOALS)
        cpu = r["ratios_cpu_time"]   # the time ratios again in CPU time, each goal's beside its wall-time value
        assert set(cpu) == set(r["ratios"]) - {"memory_growth_percent"} and all(v > 0 and math.isfinite(v) for v in cpu.values())
        assert all(r["goals"][k]["value_cpu_time"] == cpu[k] for k in GOALS if k in cpu)
        m = r["memory_mib"]
        assert m["holding_every_package"] >= m["before_loading"] > 0 and m["explained_cases"] == 2
    derm = result["cohorts"]["dermatology"]["stages"]
    assert {"encoder:image", "encoder:note", "encoder:metadata", "explain_part:cam:gradcam", "explain_part:image_ig",
            "explain_part:note", "explain_part:lesion_context"} <= set(derm)
    assert "encoder:spectrum" in result["cohorts"]["diabetes"]["stages"]
    assert "image_ig" in FULL_PARTS


@pytest.mark.parametrize("args, message", [
    (["--cases", "0"], "--cases must be between"),
    (["--memory-cases", "1"], "--memory-cases must be between"),
    (["--json", "/no/such/folder/b.json"], "does not exist"),
    (["--cohort", "radiology"], "invalid choice"),
])
def test_bench_flags_are_validated(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
