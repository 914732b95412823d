"""The Streamlit dashboard through AppTest on a tiny package suite, and its case-bundle reader.

The suite (dermatology/gated and dermatology/mmtm: image + note + metadata) and one demo case are
written to a temporary folder once per module; FUSIONLENS_MODELS / FUSIONLENS_CASES point the app there.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import case_io as bundles
from dashboard.cases import validate_metadata_fields
from tiny import SCHEMA, make_case, save_suite, write_demo_case

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "Home.py")
# the pages of the case journey, from the pages folder (the Cohort page opens no case: tests/test_cohort_explorer.py)
PAGES = [f"pages/{p.name}" for p in sorted((ROOT / "dashboard" / "pages").glob("*.py")) if "Cohort" not in p.stem]

NOTICE = "not a medical device"


def write_app_suite(root: Path) -> tuple[Path, Path]:
    """The tiny suite (with metrics) and the demo case under ``root``: -> (models folder, cases folder).
    Also the site of the browser tests (tests/conftest.py, ``e2e_site``)."""
    models = root / "models"
    for pkg in save_suite(models, ("gated", "mmtm"), metrics={"balanced_accuracy": {"value": 0.5, "ci95": [0.4, 0.6]}}):
        (pkg / "metrics.json").write_text(json.dumps({
            "n": 30, "balanced_accuracy": {"value": 0.5 + 0.1 * pkg.name.startswith("m"), "ci95": [0.4, 0.7]},
            "accuracy_vs_referred": {"fractions": [0.0, 0.1, 0.2, 0.3], "accuracy": [0.6, 0.65, 0.7, 0.72],
                                     "thresholds": [1.0, 0.9, 0.8, 0.7]}}))
    write_demo_case(root / "cases" / "dermatology" / "demo-1")
    return models, root / "cases"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_app_suite(tmp_path_factory.mktemp("fusionlens"))


@pytest.fixture
def app(suite, monkeypatch):
    models, demo_cases = suite
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(demo_cases))
    return AppTest.from_file(APP, default_timeout=120)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert any(NOTICE in w.value for w in at.warning), "the research-use notice is missing"
    return at


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.switch_page(page).run())


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def load_demo(at: AppTest) -> AppTest:
    goto(at, PAGES[0])
    at.radio(key="case_mode").set_value("Demo case").run()
    return ok(at.button(key="demo_load").click().run())


# ---- AppTest --------------------------------------------------------------------------------------------------------

def test_home_lists_packages_and_every_page_renders_on_a_fresh_session(app):
    at = ok(app.run())
    assert at.title[0].value == "FusionLens"
    table = at.dataframe[0].value
    assert sorted(table["variant"]) == ["gated", "mmtm"]
    assert all(t.startswith("synthetic demo data") for t in table["training data"])
    assert at.selectbox(key="w_cohort").value == "dermatology"
    # the selected cohort's balanced accuracy per package (also loads the browser's chart code before the results pages)
    (bars,) = charts(at)
    # labelled like Compare's columns (core.plots.prediction.package_labels: distinct even when two suites share a name)
    assert sorted(bars["data"][0]["x"]) == ["tiny-gated (gated)", "tiny-mmtm (mmtm)"]
    assert "balanced accuracy" in bars["layout"]["title"]["text"]
    for page in PAGES:
        goto(at, page)
    assert any("No case is loaded yet" in i.value for i in at.info)


def test_demo_case_on_every_page_and_switching_the_variant(app):
    at = load_demo(app.run())
    case = at.session_state["fl_case"]
    assert case.case_id == "demo-1" and case.mask is not None and at.session_state["fl_case_label"] == "malignant"
    at.session_state["ig_steps"] = 8            # keep the Captum runs short
    at.session_state["shapley_samples"] = 10
    at.session_state["stability_samples"] = 4

    goto(at, PAGES[1])
    assert any("tiny-gated" in c.value.replace("\\", "") for c in at.caption)
    assert any("True label" in i.value and "malignant" in i.value for i in at.info)
    figs = charts(at)
    assert [f["data"][0]["type"] for f in figs] == ["bar", "box", "scatter"]  # probabilities, MC samples, referral curve
    gated_probs = figs[0]["data"][0]["y"]

    at.selectbox(key="w_variant").set_value("mmtm").run()
    ok(at)
    assert at.session_state["fl_model"].endswith("mmtm")
    assert any("tiny-mmtm" in c.value.replace("\\", "") for c in at.caption)
    assert charts(at)[0]["data"][0]["y"] != gated_probs

    goto(at, PAGES[2])  # mmtm: gates, temperature + measured polarisation, scale weights, attention, Shapley
    assert at.selectbox(key="w_variant").value == "mmtm"  # the choice survives the page switch
    assert any(m.label == "Measured gate polarisation" for m in at.metric)
    titles = [(f["layout"].get("title") or {}).get("text", "") for f in charts(at)]
    assert any(t.startswith("Attention of the") for t in titles) and any("Shapley" in t for t in titles)
    assert any(t.startswith("Scale weights") for t in titles)
    # default query: the note's word pieces, whose keys are image patches and table features
    att = next(f for f in charts(at) if (f["layout"].get("title") or {}).get("text", "").startswith("Attention of the note"))
    assert {s["name"] for s in att["layout"]["shapes"] if s["type"] == "rect"} == {"image", "metadata"}
    assert "table age" in att["layout"]["xaxis"]["ticktext"] and "image r0 c0" in att["layout"]["xaxis"]["ticktext"]
    assert any(t.endswith("on image patches (mean over rows)") for t in titles)

    goto(at, PAGES[3])  # Grad-CAM overlay with the lesion outline, shares, confidence check, split maps, stability
    figs = charts(at)
    assert len(figs) == 5
    assert any(s["type"] == "path" for s in figs[0]["layout"]["shapes"])
    assert any(m.label == "Mean pairwise correlation" for m in at.metric)
    # the per-case faithfulness panel: the cohort table's measures, each beside its chance level
    assert any("relevance mass ratio" in c.value and "a random point" in c.value for c in at.caption)

    goto(at, PAGES[4])  # note words and table bars (this model has no spectrum)
    assert any("fl-note" in m.value and "<span" in m.value for m in at.markdown)
    assert len(charts(at)) == 1


def test_compare_page_side_by_side_table_and_cohort_view(app):
    at = load_demo(app.run())
    at = goto(at, PAGES[5])
    assert at.multiselect(key="cmp_variants").value and len(at.multiselect(key="cmp_variants").value) == 2
    labels = {m.label: m.value for m in at.metric}
    assert labels["Label agreement"] in ("all agree", "1 of 2")
    assert "nats" in labels["Variant disagreement"] and labels["Heatmap overlap (IoU, top 20%)"] != "n/a"
    cmp = next(v for k, v in at.session_state["fl_results"].items() if k[0] == "compare")
    assert [c.package.variant for c in cmp.columns] == ["gated", "mmtm"]
    # one shared pass of each frozen encoder (image, note) for both variants; the table encoders are per package
    assert cmp.encoder_passes["image"] == 1 and cmp.encoder_passes["note"] == 1 and cmp.encoder_passes["metadata"] == 4
    figs = charts(at)
    probs = figs[0]["data"][0]
    assert probs["type"] == "bar" and probs["y"] == ["tiny-gated (gated)", "tiny-mmtm (mmtm)"]  # package (variant type)
    assert sum(1 for f in figs if any(t["type"] == "heatmap" for t in f["data"])) == 2  # a Grad-CAM per column
    assert at.dataframe[-1].value["model"].tolist() == ["gated", "mmtm"]
    bars = next(f for f in figs if f["data"][0].get("error_y"))  # cohort view: sorted by the metric, with intervals
    assert bars["data"][0]["x"] == ["mmtm", "gated"]

    at.radio(key="cmp_mode").set_value("Every variant as a table").run()
    ok(at)
    table = at.dataframe[0].value
    assert table["variant"].tolist() == ["gated", "mmtm"] and table["probability"].between(0, 1).all()


@pytest.fixture(scope="module")
def same_type_suite(tmp_path_factory):
    """Two packages of ONE fusion variant type under different names (as HAM10000 gated and gated_kan)."""
    from core import save_package
    from tiny import LABELS, make_model

    root = tmp_path_factory.mktemp("same_type")
    save_suite(root / "models", ("gated",))
    save_package(make_model("gated", modalities=("image", "note", "metadata"), seed=1),
                 root / "models" / "dermatology" / "gated_kan", LABELS, name="tiny-gated_kan", cohort="dermatology",
                 mc_samples=8, training_data={"synthetic": True, "description": "tiny generated cases"})
    write_demo_case(root / "cases" / "dermatology" / "demo-1")
    return root / "models", root / "cases"


def test_compare_page_keeps_two_packages_of_one_variant_type_apart(same_type_suite, monkeypatch):
    # labelled by the variant type both columns were headed "gated" and plotly stacked the two bars into one (> 100%)
    models, demo_cases = same_type_suite
    monkeypatch.setenv("FUSIONLENS_MODELS", str(models))
    monkeypatch.setenv("FUSIONLENS_CASES", str(demo_cases))
    at = goto(load_demo(AppTest.from_file(APP, default_timeout=120).run()), PAGES[5])
    assert len(at.multiselect(key="cmp_variants").value) == 2
    cmp = next(v for k, v in at.session_state["fl_results"].items() if k[0] == "compare")
    assert [c.package.variant for c in cmp.columns] == ["gated", "gated"]
    names = [f"{c.package.name} (gated)" for c in cmp.columns]
    assert sorted(names) == ["tiny-gated (gated)", "tiny-gated_kan (gated)"]
    probs = charts(at)[0]["data"][0]
    assert probs["type"] == "bar" and probs["y"] == names and len(probs["x"]) == 2 and max(probs["x"]) <= 1.0
    heads = [m.value.replace("\\", "") for m in at.markdown]
    assert all(f"**{n}**" in heads for n in names)


def test_report_panel_prepares_pdf_html_json_in_memory(app, tmp_path):
    from pypdf import PdfReader

    at = load_demo(app.run())
    at.session_state["ig_steps"] = 8
    at = goto(at, PAGES[1])
    at.text_input(key="prediction_report_reference").input("study-12").run()
    ok(at.button(key="prediction_report_prepare").click().run())
    (key, ready), = at.session_state["fl_reports"].items()
    pkg_sha = key[0]
    assert len([b for b in at.get("download_button")]) == 3
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(ready["pdf"])).pages)
    assert pkg_sha in text and "study-12" in text and "not a medical device" in text
    report = json.loads(ready["json"])
    assert report["model"]["sha256"] == pkg_sha and report["case"]["case_reference"] == "study-12"
    assert b"plotly" in ready["html"] and b"data:image/png;base64" in ready["html"]
    # a name-length reference is refused with one sentence and nothing is prepared
    at.text_input(key="prediction_report_reference").input("x" * 100).run()
    ok(at)
    assert any("keep it to 80" in e.value for e in at.error)


def test_case_form_refuses_a_bad_value_next_to_it_and_keeps_the_rest(app):
    at = goto(app.run(), PAGES[0])
    at.number_input(key="meta_age").set_value(200)
    at.selectbox(key="meta_sex").set_value("male")
    at.text_area(key="up_note_text").input("Itchy lesion on the back.")
    ok(at.button(key="case_submit").click().run())
    errors = [e.value for e in at.error]
    assert errors == ["age (years) = 200 is outside the allowed range (0 to 120 years)."]
    case = at.session_state["fl_case"]
    assert case.metadata == {"sex": "male"} and case.note == "Itchy lesion on the back."
    assert at.number_input(key="meta_age").value == 200  # the form keeps what was typed, to fix it
    at.number_input(key="meta_age").set_value(62)
    ok(at.button(key="case_submit").click().run())
    assert not at.error and at.session_state["fl_case"].metadata == {"age": 62.0, "sex": "male"}


def test_bad_image_is_one_sentence_and_the_escaped_note_stays(app):
    at = goto(app.run(), PAGES[0])
    at.file_uploader(key="up_image").set_value(("lesion.png", b"this is not a png", "image/png"))
    at.file_uploader(key="up_note_file").set_value(("note.txt", b"<script>alert(1)</script> itchy rash", "text/plain"))
    ok(at.button(key="case_submit").click().run())
    assert len(at.error) == 1 and "image" in at.error[0].value and at.error[0].value.count(";") <= 1
    case = at.session_state["fl_case"]
    assert case.image is None and case.note == "<script>alert(1)</script> itchy rash"
    shown = [m.value for m in at.markdown if "fl-note" in m.value]
    assert shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown[0]
    assert not any("<script" in m.value for m in at.markdown)

    at.session_state["ig_steps"] = 8
    goto(at, PAGES[4])  # the highlighted note is escaped too
    shown = [m.value for m in at.markdown if "fl-note" in m.value]
    assert shown and "&lt;" in shown[0] and not any("<script" in m.value for m in at.markdown)


def test_bundle_errors_are_one_sentence_in_the_app(app):
    at = goto(app.run(), PAGES[0])
    at.radio(key="case_mode").set_value("Case bundle").run()
    at.file_uploader(key="bundle_file").set_value(("case.json", b"[1, 2, 3]", "application/json")).run()
    ok(at.button(key="bundle_load").click().run())
    assert [e.value for e in at.error] == ["The file 'case.json' must be a JSON object of name: value pairs, not a list."]
    assert at.session_state["fl_case"] is None
    at.file_uploader(key="bundle_file").set_value(
        ("case.json", json.dumps({"note": "Bleeding nodule.", "metadata": {"age": 300, "site": "face"}}).encode(),
         "application/json")).run()
    ok(at.button(key="bundle_load").click().run())
    case = at.session_state["fl_case"]
    assert case.note == "Bleeding nodule." and case.metadata == {"site": "face"}
    assert any("metadata.age" in e.value and "0 to 120 years" in e.value for e in at.error)


# ---- case bundles (no streamlit) ---------------------------------------------------------------------------------------

from hostile import _zip  # noqa: E402  (the same deflated-zip builder as the hostile corpus)


def _png() -> bytes:
    buf = io.BytesIO()
    make_case(0).image.save(buf, "PNG")
    return buf.getvalue()


def test_zip_bundle_in_a_folder_is_read_and_unknown_files_are_ignored():
    data = _zip({"case-7/image.png": _png(), "case-7/note.txt": b"Itchy.", "case-7/extra.docx": b"x",
                 "case-7/metadata.json": json.dumps({"age": 40, "label": "benign"}).encode()})
    got = bundles.read_bundle("upload.zip", data)
    assert got.case_id == "case-7" and got.image and got.note == b"Itchy." and got.label == "benign"
    assert got.metadata == {"age": 40} and "extra.docx" in got.warnings[0]


@pytest.mark.parametrize("name, members, message", [
    ("t.zip", {"../evil.txt": b"x"}, "climbs out"),
    ("t.zip", {"case/../../note.txt": b"x"}, "climbs out"),
    ("t.zip", {"/etc/note.txt": b"x"}, "unsafe name"),
    ("t.zip", {"C:\\note.txt": b"x"}, "unsafe name"),
    ("t.zip", {"inner.zip": b"PK\x03\x04"}, "nested archives"),
    ("t.zip", {"note.txt": _zip({"a.txt": b"x"})}, "nested archives"),
    ("t.zip", {"note.txt": b"\0" * (3 * 2**20)}, "zip bomb"),
    ("t.zip", {"metadata.json": b"[1]"}, "must be a JSON object"),
    ("t.zip", {"readme.md": b"x"}, "holds none of"),
    ("t.zip", {"image.png": b"x", "image.jpg": b"y"}, "more than one image"),
    ("t.zip", {}, "holds none of"),
    ("bad.zip", None, "not a readable .zip"),
    ("t.json", b'"just text"', "must be a JSON object"),
    ("t.json", b"{not json", "not valid JSON"),
    ("t.json", b'{"metadata": [1, 2]}', "must be a JSON object"),
    ("t.json", b'{"other": 1}', "neither 'note' nor 'metadata'"),
    ("t.exe", b"MZ", "not a case bundle"),
])
def test_bad_bundles_are_refused_with_one_sentence(name, members, message):
    data = members if isinstance(members, bytes) else (b"PK\x03\x04 broken" if members is None else _zip(members))
    with pytest.raises(ValueError) as e:
        bundles.read_bundle(name, data)
    text = str(e.value)
    assert message in text and "\n" not in text and (text[0].isupper() or text[0] == "'")


def test_oversize_members_and_totals_are_refused_from_declared_sizes(monkeypatch):
    monkeypatch.setattr(bundles, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(ValueError, match="the limit per file is"):
        bundles.read_bundle("t.zip", _zip({"note.txt": bytes(range(256)) * 8}))
    monkeypatch.setattr(bundles, "MAX_MEMBER_BYTES", 10_000)
    monkeypatch.setattr(bundles, "MAX_TOTAL_BYTES", 3000)
    with pytest.raises(ValueError, match="unpacks to more than"):
        bundles.read_bundle("t.zip", _zip({"note.txt": bytes(range(256)) * 8, "spectrum.csv": bytes(range(256)) * 8}))


def test_links_in_a_bundle_are_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("note.txt")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="link"):
        bundles.read_bundle("t.zip", buf.getvalue())


def test_metadata_fields_are_validated_one_by_one():
    from core.encoders.tabular import TabularSchema

    valid, errors = validate_metadata_fields(TabularSchema(SCHEMA), {"age": 200, "sex": "Male", "site": None})
    assert valid == {"sex": "male"}
    assert errors == {"metadata.age": "age (years) = 200 is outside the allowed range (0 to 120 years)."}


def test_image_explanation_maps_are_drawn_at_most_112_cells_a_side_over_the_same_pixels():
    """The maps drawn on the Image explanations page (the heatmap over the image, the lesion-only / context-only pair,
    the stability maps) go to the browser area-averaged to at most 112 cells a side as float32: at full size each
    figure was 0.5-1.2 MB for the browser to decode and draw before it showed anything (the encoder's finest grid
    is 28 x 28 cells for a 224-pixel image, so nothing is lost)."""
    import numpy as np

    from core import plots
    from dashboard.figures import DISPLAY_MAP_SIDE, display_map, light_overlay

    rng = np.random.default_rng(0)
    cam = np.kron(rng.random((28, 28)), np.ones((8, 8)))              # a 28 x 28 map stretched to 224 x 224
    small = display_map(cam)
    assert small.shape == (112, 112) and small.dtype == np.float32
    assert np.allclose(small, np.kron(cam[::8, ::8], np.ones((4, 4))), atol=1e-6)   # area means: the same map
    assert display_map(cam[:40, :48]).shape == (40, 48)                  # small maps are left as they are
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    full = plots.cam_overlay(image, cam, 0.5, None, None, "t")
    fig = light_overlay(plots.cam_overlay(image, cam, 0.5, None, None, "t"))
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert np.asarray(heat.z).shape == (DISPLAY_MAP_SIDE, DISPLAY_MAP_SIDE)
    # cell j covers image pixels 2j and 2j+1: its centre is 2j + 0.5 in the image trace's pixel coordinates
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (0.5, 2.0, 0.5, 2.0)
    assert len(fig.to_json()) < 0.6 * len(full.to_json())
    # the image itself goes as a lossless PNG (plotly.js would otherwise make that PNG from z in the page's main thread)
    import base64
    import io

    from PIL import Image

    (img,) = [t for t in fig.data if t.type == "image"]
    assert img.z is None and img.source.startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(img.source.split(",", 1)[1])))), image)
