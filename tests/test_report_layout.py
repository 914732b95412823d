"""A report a clinician can read in thirty seconds (issue 19): page 1 carries what a clinician acts on, the
details follow in the same order in the PDF and the HTML, nothing shows an internal key name or a raw
float, and a note in any script survives into the PDF's text.

Page 1 is also rendered to PNG (pypdfium2) into ``tests/.results/report-page-1.png`` for a person to look at.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from pypdf import PdfReader

from core import load_package, save_package
from core.report import make_report
from tiny import LABELS, make_case, make_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / ".results"
CHINESE = "患者背部皮损，瘙痒三个月，边界不规则。"
INTERNAL_KEYS = ("normalised_entropy", "data_variance", "metadata_feature_gates", "modality_weights", "predictive_entropy",
                 "deletion_auc", "insertion_auc", "max_sensitivity", "cam_randomisation", "lesion_only", "gate_polarisation")
PAGE1 = ("Predicted class", "uncertainty", "Why: the strongest reasons per input", "Image", "Clinical note",
         "Patient details", "Spectrum", "Model and training data", "Research use only")
ORDER = ("Why: the strongest reasons per input", "Model and training data", "Details", "How the fusion weighed the inputs",
         "Faithfulness of the explanations", "Model")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    return load_package(save_package(make_model("gated", seed=3), root / "gated", LABELS, name="tiny-gated", mc_samples=4,
                                     training_data={"description": "tiny generated test cases", "synthetic": True}))


@pytest.fixture(scope="module")
def report(pkg):
    from core.explain import explain_case

    case = make_case(0)
    case.note = f"{CHINESE} Itchy lesion 😖 on the back, <b>growing</b>."
    ex = explain_case(pkg, case, parts=("cam", "lesion_context", "note", "table", "spectrum", "modality", "faithfulness"),
                      ig_steps=4, shapley_samples=6)
    return make_report(pkg, case, ex, case_reference="study-7")


@pytest.fixture(scope="module")
def pages(report) -> list[str]:
    return [p.extract_text() for p in PdfReader(io.BytesIO(report.pdf())).pages]


def test_page_one_carries_what_a_clinician_acts_on(report, pages):
    first = pages[0]
    for needle in PAGE1:
        assert needle in first, needle
    sm = report.data["summary"]
    assert sm["referral"].split(":")[0] in first                          # the referral advice itself
    assert sm["uncertainty"]["level"].capitalize() + " uncertainty" in first
    assert "tiny generated test cases" in first and "Synthetic demo data" in first    # provenance
    for r in sm["reasons"]:
        assert 1 <= len(r["reasons"]) <= 3
    # the image with its heatmap and lesion outline is on page 1
    assert len(PdfReader(io.BytesIO(report.pdf())).pages[0].images) >= 1
    # details, internals and faithfulness come after page 1
    assert "Faithfulness" not in first and "How the fusion weighed" not in first and "Deletion score" not in first


def test_no_internal_key_names_no_raw_floats_and_the_same_order_in_pdf_and_html(report, pages):
    text = "\n".join(pages)
    html = report.html()
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)      # plotly's inlined library and figure data
    visible = re.sub(r"<[^>]+>", " ", visible)
    for key in INTERNAL_KEYS:
        assert key not in text, key
        assert key not in visible, key
    assert not re.search(r"\d\.\d{5,}", text), re.search(r".{30}\d\.\d{5,}.{10}", text)
    assert not re.search(r"\d\.\d{5,}", visible)
    assert "{" not in text and "{'" not in visible and '{"' not in visible     # no raw dictionaries
    pdf_pos = [text.index(h) for h in ORDER[:-1]] + [text.rindex("Model\n") if "Model\n" in text else text.rindex("Model")]
    html_pos = [visible.index(h) for h in ORDER[:-1]]
    assert pdf_pos == sorted(pdf_pos), pdf_pos
    assert html_pos == sorted(html_pos), html_pos
    assert visible.index("Research use only") < visible.index("Why: the strongest reasons")
    assert visible.index("Predicted class") < visible.index("Details")


def test_a_chinese_note_survives_pdf_text_extraction(pages):
    text = "".join("\n".join(pages).split())
    assert "".join(CHINESE.split()) in text
    assert "<b>growing</b>" in "\n".join(pages)               # markup in a note prints as text


def test_characters_no_font_has_are_named_not_dropped():
    from core.report.render import pdf_text

    out = pdf_text("x \U0001F9EC y")                          # DNA double helix: in neither DejaVu Sans nor STSong-Light
    assert "[dna double helix]" in out
    assert '<font name="STSong-Light">' in pdf_text(CHINESE)


def test_mechanism_readings_appear_among_the_internals(pkg, monkeypatch):
    import core.explain.mechanisms as mech

    row = {"name": "modality_weights:image", "label": "modality weight of the image", "value": 0.31,
           "reading_sentence": "The modality weight of the image varies from case to case.", "trust_level": "case"}
    monkeypatch.setattr(mech, "readings", lambda package, prediction=None: [row])
    rep = make_report(pkg, make_case(1))
    assert rep.data["readable"]["mechanisms"][0]["sentence"] == row["reading_sentence"]
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(rep.pdf())).pages)
    assert "varies from case to case" in " ".join(text.split())
    assert row["reading_sentence"] in rep.html()


def test_csv_export_neutralises_formulas(pkg):
    case = make_case(2)
    case.metadata = {**case.metadata, "referrer": "=HYPERLINK(\"http://evil.example\",\"x\")"}
    rows = list(csv.reader(io.StringIO(make_report(pkg, case).render("csv").decode("utf-8-sig"))))
    assert rows[0] == ["section", "field", "value"]
    assert ["input: metadata", "referrer", "'=HYPERLINK(\"http://evil.example\",\"x\")"] in rows
    assert any(r[1] == "label" for r in rows) and any("Research use only" in r[2] for r in rows)


def test_page_one_renders_to_png(report):
    pdfium = pytest.importorskip("pypdfium2")
    pdf = pdfium.PdfDocument(report.pdf())
    img = pdf[0].render(scale=1.2).to_pil()
    RESULTS.mkdir(parents=True, exist_ok=True)
    img.save(RESULTS / "report-page-1.png")
    w, h = img.size
    assert h > w > 500                                       # A4 portrait
    grey = img.convert("L")
    assert grey.getextrema()[0] < 60                           # text and the heatmap are drawn, not a blank page
