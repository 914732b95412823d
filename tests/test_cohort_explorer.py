"""``python -m core explain-cohort`` and the Cohort page, on a tiny suite and a tiny generated cohort.

The batched engine is checked against ``explain_case`` case by case (the ``loop`` engine), the Ray
engine against the local one (2 CPUs at most, shut down after), a resumed run against an
uninterrupted one, and a corrupted case is recorded as failed while the others are written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny import LABELS, make_case, save_suite

ROOT = Path(__file__).resolve().parents[1]


def write_cohort(root: Path, n: int = 10, corrupt: int | None = None) -> list[dict]:
    """n tiny cases on disk (image, mask, note, metadata) as explain-cohort records."""
    from core.cohort import item_record
    from core.data import CohortItem

    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        c = make_case(i)
        img = root / f"c{i}.png"
        c.image.save(img)
        mask = np.zeros((40, 48), np.uint8)
        mask[8 + i % 5:28, 10:30 + i % 7] = 255
        Image.fromarray(mask).save(root / f"m{i}.png")
        if i == corrupt:
            img.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        items.append(CohortItem(case_id=f"case-{i:02d}", label=LABELS[i % 3], split="test", image_path=img,
                                mask_path=root / f"m{i}.png", note=c.note, metadata=dict(c.metadata),
                                evidence=["lesion", "note", "metadata"][i % 3]))
    return [item_record(it) for it in items]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    pkgs = save_suite(root / "models", ("gated", "mmtm"))
    return pkgs, root


def rows_by_key(store) -> dict:
    t = store.read().to_pylist()
    return {(r["case_id"], r["package"]): r for r in t}


def assert_same_rows(a: dict, b: dict, atol: float = 2e-4) -> None:
    assert a.keys() == b.keys()
    skip = {"seconds", "cpu_seconds", "thumbnail"}
    for key in a:
        ra, rb = a[key], b[key]
        for col, va in ra.items():
            vb = rb[col]
            if col in skip:
                continue
            if isinstance(va, float) or (isinstance(va, list) and va and isinstance(va[0], float)):
                np.testing.assert_allclose(np.asarray(va, float), np.asarray(vb, float), atol=atol, rtol=1e-3,
                                           err_msg=f"{key} {col}")
            elif col in ("note_top_words", "table_top_features", "table_top_values", "top_modality"):
                # ranks of near-equal scores may swap by float noise; the sets of top entries must agree
                if isinstance(va, list):
                    assert va[:3] == vb[:3] or set(va) == set(vb), (key, col, va, vb)
                else:
                    assert va == vb, (key, col, va, vb)
            else:
                assert va == vb, (key, col, va, vb)


def test_batched_engine_gives_the_rows_of_explain_case_case_by_case(suite, tmp_path):
    from core.cohort import ResultsStore, run_cohort

    pkgs, root = suite
    records = write_cohort(root / "cases-a", 4)
    m1 = run_cohort(pkgs, records, str(tmp_path / "local"), engine="local", batch_size=3)
    m2 = run_cohort(pkgs, records, str(tmp_path / "loop"), engine="loop", batch_size=3)
    assert m1["counts"] == m2["counts"] == {"rows": 8, "cases_ok": 4, "cases_failed": 0, "packages": 2}
    a, b = rows_by_key(ResultsStore(str(tmp_path / "local"))), rows_by_key(ResultsStore(str(tmp_path / "loop")))
    assert_same_rows(a, b)
    row = a[("case-00", "tiny-mmtm")]
    # every part of the issue is in the row
    assert row["status"] == "ok" and row["label"] == "benign" and row["pred_label"] in LABELS
    assert math.isclose(sum(row["probabilities"]), 1.0, abs_tol=1e-5)
    assert row["fusion_temperature"] is not None and row["level_weights"]            # mmtm: tau and scale weights
    assert math.isclose(sum(row[f"shapley_{m}"] for m in ("image", "note", "metadata")),
                        row["shapley_full"] - row["shapley_none"], abs_tol=1e-5)     # efficiency of exact Shapley
    assert math.isclose(row["cam_lesion"] + row["cam_context"] + row["cam_background"], 1.0, abs_tol=1e-4)
    assert len(row["cam_small"]) == 64 and len(row["fused"]) == 32
    assert row["note_top_words"] and row["table_top_features"] and row["thumbnail"][:2] == b"\xff\xd8"
    assert row["sex"] in ("female", "male") and row["site"] in ("back", "face", "leg") and row["age"] > 0
    man = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert [p["name"] for p in man["packages"]] == ["tiny-gated", "tiny-mmtm"] and man["finished"]
    assert all(len(p["sha256"]) == 64 for p in man["packages"]) and man["engine"] == "local"


def test_resumed_run_equals_an_uninterrupted_one(suite, tmp_path):
    from core.cohort import ResultsStore, run_cohort

    pkgs, root = suite
    records = write_cohort(root / "cases-b", 5)
    fast = ("prediction", "modality", "embedding")
    run_cohort(pkgs, records, str(tmp_path / "whole"), fast, batch_size=2)
    seen = []

    def stop_after_first_part(info):  # the interruption: a progress callback returning False stops the run
        seen.append(info)
        return False

    m = run_cohort(pkgs, records, str(tmp_path / "resumed"), fast, batch_size=2, progress=stop_after_first_part)
    assert m["finished"] is None and m["counts"]["cases_ok"] == 2          # stopped after the first part
    assert seen[0]["done"] == 2 and seen[0]["total"] == 5 and seen[0]["cases_per_s"] > 0 and seen[0]["seconds_left"] > 0
    m = run_cohort(pkgs, records, str(tmp_path / "resumed"), fast, batch_size=2)
    assert m["runs"][-1]["cases"] == 3 and m["finished"]                   # only the 3 missing cases ran
    assert_same_rows(rows_by_key(ResultsStore(str(tmp_path / "whole"))), rows_by_key(ResultsStore(str(tmp_path / "resumed"))),
                     atol=1e-6)
    m = run_cohort(pkgs, records, str(tmp_path / "resumed"), fast, batch_size=2)
    assert m["runs"][-1]["cases"] == 0                                     # nothing left to do


def test_a_corrupted_case_is_recorded_as_failed_and_the_others_are_written(suite, tmp_path):
    from core.cohort import ResultsStore, run_cohort

    pkgs, root = suite
    records = write_cohort(root / "cases-c", 5, corrupt=2)
    m = run_cohort(pkgs, records, str(tmp_path / "r"), ("prediction", "modality"), batch_size=5)
    assert m["counts"]["cases_ok"] == 4 and m["counts"]["cases_failed"] == 1
    assert {f["case_id"] for f in m["failures"]} == {"case-02"} and len(m["failures"]) == 2
    reason = m["failures"][0]["reason"]
    assert "image" in reason and "could not be read" in reason and "\n" not in reason
    rows = rows_by_key(ResultsStore(str(tmp_path / "r")))
    assert sum(r["status"] == "ok" for r in rows.values()) == 8


def test_a_results_folder_of_other_packages_is_refused(suite, tmp_path):
    from core.cohort import CohortError, run_cohort

    pkgs, root = suite
    records = write_cohort(root / "cases-d", 2)
    run_cohort(pkgs[:1], records, str(tmp_path / "r"), ("prediction",))
    with pytest.raises(CohortError, match="other packages"):
        run_cohort(pkgs, records, str(tmp_path / "r"), ("prediction",))


@pytest.mark.skipif(not __import__("core.cohort", fromlist=["x"]).ray_available(), reason="ray is not installed")
def test_ray_engine_gives_the_rows_of_the_local_engine(suite, tmp_path):
    import ray

    from core.cohort import ResultsStore, run_cohort

    pkgs, root = suite
    records = write_cohort(root / "cases-e", 4)
    parts = ("prediction", "modality", "embedding")   # the gradient parts are checked against the loop above
    run_cohort(pkgs, records, str(tmp_path / "local"), parts, batch_size=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        m = run_cohort(pkgs, records, str(tmp_path / "ray"), parts, engine="ray", batch_size=2, workers=2)
    finally:
        ray.shutdown()
    assert m["engine"] == "ray" and m["workers"] == 2 and m["counts"]["cases_ok"] == 4
    startup = m["runs"][-1]["startup"]          # the actors' start-up, reported apart from the explaining
    assert startup["actors"] and min(a["ready_s"] for a in startup["actors"].values()) <= startup["first_rows_s"]
    for a in startup["actors"].values():
        assert 0 <= a["import_s"] and 0 < a["load_s"] and a["constructor_s"] <= a["imported_s"] <= a["ready_s"]
        assert a["boot_cpu_s"] > 0 and a["load_cpu_s"] > 0    # the actor's CPU: booting + importing, loading
    assert_same_rows(rows_by_key(ResultsStore(str(tmp_path / "local"))), rows_by_key(ResultsStore(str(tmp_path / "ray"))),
                     atol=1e-5)


# ---- the Cohort page (AppTest) ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """The tiny app suite and demo case, and one results set of both packages over 10 tiny cases."""
    from core.cohort import run_cohort
    from test_whatif import _app_suite

    root = tmp_path_factory.mktemp("cohort-app")
    models, cases = _app_suite(root)
    records = write_cohort(root / "cohort-cases", 10)
    pkgs = [models / "dermatology" / "gated", models / "dermatology" / "mmtm"]
    run_cohort(pkgs, records, str(root / "results" / "tiny-set"), ("prediction", "modality", "cam_summary", "table_top",
                                                                    "embedding"), batch_size=10,
               source={"cohort": "tiny", "seed": 1, "split": "test", "synthetic": True})
    return {"FUSIONLENS_MODELS": str(models), "FUSIONLENS_CASES": str(cases),
            "FUSIONLENS_RESULTS": str(root / "results"), "FUSIONLENS_CACHE": str(root / "cache")}


@pytest.fixture
def cohort_app(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from test_app import APP

    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    return AppTest.from_file(APP, default_timeout=180)


def test_cohort_page_shows_slices_map_errors_explanations_and_comparison(cohort_app):
    from test_app import charts, goto

    at = goto(cohort_app.run(), "pages/7_Cohort.py")
    assert at.title[0].value == "Cohort"
    assert at.selectbox(key="co_set").value.endswith("tiny-set")
    assert at.selectbox(key="co_package").options == ["tiny-gated", "tiny-mmtm"]
    table = next(d.value for d in at.dataframe if "much worse" in d.value)
    assert table["slice"][0] == "all" and table["n"][0] == 10
    assert (table["CI low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["CI high"]).all()
    focus = at.selectbox(key="co_focus")
    assert focus.options[0] == "whole cohort" and len(focus.options) > 3
    titles = [c.get("layout", {}).get("title", {}).get("text", "") for c in charts(at)]
    assert any(t.startswith("Reliability") for t in titles) and any(t.startswith("Confusion") for t in titles)
    assert any("Fused vectors (PCA)" in t for t in titles)              # 10 cases: PCA (UMAP needs 20)
    assert sum(t.startswith("cluster") for t in titles) >= 2            # the shortcut finder's CAM clusters
    assert any("|shapley| image" in d.value for d in at.dataframe)       # explanations per class
    assert any("Disagree on" in m.label for m in at.metric)             # two packages side by side
    # slicing by sex, and focusing on the worst slice, redraw the views
    at.radio(key="co_slicing").set_value("sex").run()
    assert set(next(d.value for d in at.dataframe if "much worse" in d.value)["slice"]) >= {"female", "male"}
    at.selectbox(key="co_focus").select_index(1).run()                  # the worst slice
    assert not at.exception
    rel = next(c["layout"]["title"]["text"] for c in charts(at) if c["layout"]["title"]["text"].startswith("Reliability"))
    assert "whole cohort" not in rel and " = " in rel


def test_error_browser_opens_a_case_on_the_prediction_page(cohort_app):
    from test_app import goto, ok

    at = goto(cohort_app.run(), "pages/7_Cohort.py")
    at.selectbox(key="co_package").set_value("tiny-mmtm").run()
    buttons = [b for b in at.button if b.key and b.key.startswith("co_open_")]
    assert buttons, "the error browser shows no case"
    ok(buttons[0].click().run())
    assert at.title[0].value == "Prediction"                             # switched pages
    case = at.session_state["fl_case"]
    assert case.case_id.startswith("case-") and case.image is not None and case.mask is not None
    assert at.session_state["fl_model"].endswith("mmtm")                 # the package of the row is selected
    assert any(case.case_id in t.value for t in at.sidebar.text)
    assert any(s.value == "What if?" for s in at.subheader)


def test_cohort_page_computes_a_small_cohort_in_the_app(cohort_app, monkeypatch, tmp_path):
    from core.cohort import runner
    from test_app import goto, ok

    records = write_cohort(tmp_path / "in-app", 4)
    monkeypatch.setattr(runner, "load_records", lambda *a, **k: (records, {"cohort": "tiny", "seed": 2, "split": "all"}))
    at = goto(cohort_app.run(), "pages/7_Cohort.py")
    at.radio(key="co_mode").set_value("Compute a small cohort here").run()
    assert at.number_input(key="co_n").max == 500
    ok(at.button(key="co_compute").click().run())
    assert not at.error, [e.value for e in at.error]
    assert "-s4242-n60-" in at.selectbox(key="co_set").value             # the new set is shown
    assert next(d.value for d in at.dataframe if "much worse" in d.value)["n"][0] == 4


def test_explain_cohort_command_on_a_generic_csv(suite, tmp_path, capsys):
    """`python -m core explain-cohort --data CSV`: the summary line, the progress bar, resuming, bad flags."""
    from core.cli import main

    pkgs, _ = suite
    records = write_cohort(tmp_path / "files", 3)
    lines = ["case_id,label,image_path,mask_path,note,age,sex,site,split"]
    for r in records:
        meta = json.loads(r["metadata_json"])
        lines.append(f"{r['case_id']},{r['label']},{Path(r['image_path']).name},{Path(r['mask_path']).name},"
                     f"\"{r['note']}\",{meta['age']},{meta['sex']},{meta['site']},test")
    csv = tmp_path / "files" / "cases.csv"
    csv.write_text("\n".join(lines) + "\n")
    args = ["explain-cohort", "--model", str(pkgs[0]), "--data", str(csv), "--out", str(tmp_path / "out"),
            "--parts", "prediction,modality", "--batch-size", "2"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("3 cases explained, 0 failed (3 rows, 1 packages)") and "not a medical device" in out
    assert "3/3" in err and "case/s" in err                               # tqdm: cases/s and time left
    assert main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][-1]["cases"] == 0  # resumed: nothing left to do
    assert main(args[:-4] + ["--parts", "prediction,bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown part 'bogus'")
    assert main(["explain-cohort", "--model", str(tmp_path), "--data", str(csv), "--out", str(tmp_path / "o2")]) == 2


# ---- the batched engine's shortcuts (P1, issue 18 benchmark) ------------------------------------------------------------

def test_image_features_from_the_stage_maps_equal_the_image_encoder_forward(suite):
    """The last-stage Grad-CAM of the batched engine starts from the stage maps: the features built from
    them must be those of ImageEncoder.forward."""
    import torch

    from core.cohort.gradients import fast_cam_encoder, image_features, image_stages
    from core.package import load_package

    pkgs, _ = suite
    enc = load_package(pkgs[0]).model.encoders["image"]
    assert fast_cam_encoder(enc)
    pixels = enc.prepare([make_case(i).image for i in range(3)])["pixels"]
    with torch.no_grad():
        a, maps = enc(pixels=pixels), image_stages(enc, pixels)
        b = image_features(enc, maps)
        c = image_features(enc, maps[-1:], [f.mean(dim=(2, 3)) for f in maps[:-1]])
    for f in (b, c):
        torch.testing.assert_close(f.pooled, a.pooled)
        torch.testing.assert_close(f.tokens, a.tokens)
        for x, y in zip(f.levels, a.levels):
            torch.testing.assert_close(x, y)


def test_packages_sharing_the_note_encoder_run_it_once_per_case_for_the_note_ig(suite, tmp_path):
    from core.cohort import CohortExplainer

    pkgs, root = suite
    records = write_cohort(root / "cases-f", 3)
    ex = CohortExplainer(pkgs, ("prediction", "note_top"))
    a, b = ex.packages
    assert a.encoder_fingerprint("note") == b.encoder_fingerprint("note") and a.model.encoders["note"] is b.model.encoders["note"]
    calls = []
    hook = a.model.encoders["note"].register_forward_hook(lambda m, args, out: calls.append(out.pooled.shape[0]))
    try:
        rows = ex.explain(records)
    finally:
        hook.remove()
    assert all(r["status"] == "ok" and r["note_top_words"] for r in rows) and len(rows) == 6
    # the batch's notes once (for both packages), then each note's 24 interpolation steps once (for both packages)
    assert calls == [3, 24, 24, 24]


def test_ray_blocks_leave_no_actor_idle():
    from core.cohort.runner import ray_block_size

    assert ray_block_size(24, 8, 2) == 3 and ray_block_size(48, 8, 2) == 6
    assert ray_block_size(1000, 16, 2) == 16 and ray_block_size(1, 16, 2) == 1


def test_the_ray_actors_import_path_skips_pytorch_grad_cam():
    """A Ray actor imports core.cohort.runner (its class) and draws the plain encoders' Grad-CAM without
    pytorch-grad-cam, whose package pulls in torchvision and scikit-learn (~3 CPU s per actor)."""
    import subprocess
    import sys

    code = ("import sys, core.cohort.runner, core.explain; "
            "print(sorted(m for m in ('pytorch_grad_cam', 'torchvision', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    from core.explain.gradcam import CAM_METHODS, cam_class

    assert cam_class("gradcam").__name__ == "GradCAM" and len(CAM_METHODS) == 7
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam_class("bogus")


def test_bench_separates_the_start_up_from_the_steady_rate():
    from core.cohort.bench import at_size, steady_state

    # an engine that starts in 10 s, then explains 2 cases/s, written in parts of 8 (the first part overlaps
    # the start-up's end); and one with no start-up at 1 case/s
    arrivals = [(10 + d / 2, d) for d in range(8, 49, 8)]
    rate, startup = steady_state(arrivals, 48, 34.0)
    assert abs(rate - 2.0) < 1e-9 and abs(startup - 10.0) < 1e-9
    rate, startup = steady_state([(d, d) for d in range(8, 49, 8)], 48, 48.0)
    assert abs(rate - 1.0) < 1e-9 and abs(startup) < 1e-9
    assert at_size({"startup_s": 10.0, "steady_cases_per_s": 2.0}, 1000) == 510.0
    assert steady_state([(5.0, 4)], 4, 5.0) == (0.8, 0.0)        # one part: no rate to separate
