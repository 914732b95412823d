"""The clinician journey in a real browser (Debian's Chromium under Playwright) against `streamlit run`.

The session's browser-test site (``e2e_site`` in tests/conftest.py) holds the tiny package suite and demo
case of ``tests/test_app.py`` in a temporary folder and serves them with one `streamlit run` on a free
127.0.0.1 port (FUSIONLENS_MODELS / FUSIONLENS_CASES pointing there); the server and the one Chromium are
shared with tests/e2e/test_cohort_journey.py, and every test opens its own browser context (its own
streamlit session). Screenshots and the measured upload-to-explanations time go to
``tests/e2e/screenshots/`` (gitignored; the time is recorded, not asserted).

Skipped only when /usr/bin/chromium is absent and ``CI`` is not set; under CI a missing browser fails.
"""
from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import pytest

import e2e_harness as h

pytestmark = pytest.mark.e2e

if not Path(h.CHROMIUM).exists() and not h.ci():
    pytest.skip(f"no browser at {h.CHROMIUM} (install Debian's `chromium`; under CI=true this test fails instead)",
                allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402  (requirements-dev.txt; never `playwright install`)

from core import RESEARCH_NOTICE  # noqa: E402
from tiny import make_case  # noqa: E402

SHOTS = Path(__file__).resolve().parent / "screenshots"
NOTE = "Itchy lesion on the back, growing for three months."
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
WAIT = 90_000  # ms: the first render imports torch and loads the package on a busy 2-core machine
expect.set_options(timeout=WAIT)


@pytest.fixture
def suite(e2e_site):
    """(models folder, demo cases folder) the server reads."""
    return e2e_site.models, e2e_site.cases


@pytest.fixture
def app_url(e2e_site):
    return e2e_site.url


@pytest.fixture
def browser(e2e_browser):
    return e2e_browser


@pytest.fixture
def page(browser, app_url):
    """A fresh browser context (a new streamlit session) with a recorder of any dialog."""
    context = browser.new_context(viewport=h.VIEWPORT)
    context.set_default_timeout(WAIT)
    pg = context.new_page()
    pg.dialogs = []

    def on_dialog(d):
        pg.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    pg.on("dialog", on_dialog)
    h.open_app(pg, app_url)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "lesion.png"
    make_case(0).image.save(path)
    return path


def fill_case_form(page, image: Path | None, note: str, age: str | None = None) -> None:
    """On the Case page ("Upload files"): the image, the note, one metadata field."""
    h.goto_page(page, "Case")
    h.keyed(page, "case_mode").get_by_text("Upload files").click()
    if image is not None:
        h.keyed(page, "up_image").locator('input[type="file"]').set_input_files(str(image))
        expect(h.keyed(page, "up_image").get_by_text(image.name)).to_be_visible()
    h.keyed(page, "up_note_text").locator("textarea").fill(note)
    if age is not None:
        box = h.keyed(page, "meta_age").locator("input")
        box.fill(age)
        box.press("Tab")


def note_display(page):
    return h.main(page).locator(".fl-note")


def errors(page):
    return h.main(page).locator('[data-testid="stAlertContentError"]')


class Stopwatch:
    """Seconds since ``start()``, not counting the time spent taking screenshots."""

    def __init__(self):
        self.t0: float | None = None
        self.paused = 0.0
        self.marks: dict[str, float] = {}

    def start(self) -> None:
        self.t0, self.paused = time.perf_counter(), 0.0

    def mark(self, name: str) -> None:
        if self.t0 is not None:
            self.marks[name] = round(time.perf_counter() - self.t0 - self.paused, 2)

    def shot(self, page, name: str) -> None:
        t = time.perf_counter()
        h.full_page_screenshot(page, SHOTS / f"{name}.png")
        self.paused += time.perf_counter() - t


def test_clinician_journey_upload_to_every_explanation(page, image_file):
    clock = Stopwatch()

    # Home: the research-use notice and the packages table
    expect(h.main(page).locator('[data-testid="stAlertContentWarning"]').first).to_contain_text(RESEARCH_NOTICE)
    expect(h.main(page).locator('[data-testid="stDataFrame"]').first).to_be_visible()  # the packages table
    h.wait_idle(page)
    h.no_exception(page)
    clock.shot(page, "home")

    # Case: upload an image, type a note, fill the age, submit
    fill_case_form(page, image_file, NOTE, age="62")
    clock.start()
    h.keyed(page, "case_submit").locator("button").click()
    expect(h.main(page).get_by_text("uploaded case · from uploaded files")).to_be_visible()
    expect(note_display(page)).to_have_text(NOTE)
    expect(h.main(page).locator('[data-testid="stImage"] img').first).to_be_visible()
    expect(h.main(page).locator('[data-testid="stDataFrame"]')).to_have_count(1)  # the metadata table
    h.wait_idle(page)
    h.no_exception(page)
    assert errors(page).count() == 0, errors(page).all_inner_texts()
    clock.mark("case_stored")
    clock.shot(page, "case")

    # Prediction: a label and the probabilities
    h.goto_page(page, "Prediction")
    metric = page.locator('[data-testid="stMetric"]')
    expect(metric.filter(has_text="Predicted class").locator('[data-testid="stMetricValue"]')).to_have_text(
        re.compile(r"^(benign|malignant|other)$"))
    expect(metric.filter(has_text="Calibrated probability").locator('[data-testid="stMetricValue"]')).to_have_text(
        re.compile(r"^\d+(\.\d)?%$"))
    for key in ("prob_chart", "mc_chart", "referral_chart"):
        expect(h.keyed(page, key).locator(".main-svg").first).to_be_visible()
    prob = h.keyed(page, "prob_chart")
    expect(prob.locator(".xtick text")).to_have_count(3)          # one bar per class
    expect(prob.locator(".xtick text").first).to_have_text("benign")
    h.wait_idle(page)
    h.no_exception(page)
    clock.mark("prediction")
    clock.shot(page, "prediction")

    # Fusion internals: modality weights, gates, modality Shapley values
    h.goto_page(page, "Fusion internals")
    for key in ("modality_weights_chart", "shapley_chart", "without_chart"):
        expect(h.keyed(page, key).locator(".main-svg").first).to_be_visible()
    expect(h.main(page).locator('[data-testid="stDataFrame"]').last).to_be_visible()  # the Shapley table
    h.wait_idle(page)
    h.no_exception(page)
    clock.mark("fusion_internals")
    clock.shot(page, "fusion_internals")

    # Image explanations: the Grad-CAM overlay (image + heatmap raster), shares, confidence check, stability
    h.goto_page(page, "Image explanations")
    cam = h.keyed(page, "cam_chart")
    expect(cam.locator(".main-svg").first).to_be_visible()
    expect(cam.locator("svg image")).to_have_count(2)  # plotly draws the image and the heatmap as <image> rasters
    for key in ("shares_chart", "confidence_chart", "split_chart", "stability_chart"):
        expect(h.keyed(page, key).locator(".main-svg").first).to_be_visible()
    h.wait_idle(page)
    h.no_exception(page)
    clock.mark("image_explanations")
    clock.shot(page, "image_explanations")

    # Attributions: the note's words highlighted, the metadata bars
    h.goto_page(page, "Attributions")
    expect(note_display(page).locator("span[title]").first).to_be_attached()
    expect(note_display(page)).to_have_text(NOTE)
    expect(h.keyed(page, "table_chart").locator(".main-svg").first).to_be_visible()
    h.wait_idle(page)
    h.no_exception(page)
    clock.mark("attributions")
    clock.shot(page, "attributions")

    (SHOTS / "timing.json").write_text(json.dumps({
        "what": "seconds from clicking 'Use this case' (image + note + age) until each page's panels had rendered, "
                "walking Case -> Prediction -> Fusion internals -> Image explanations -> Attributions through the "
                "sidebar (cumulative; screenshot time excluded); tiny generated models",
        "submit_to_all_panels_s": clock.marks["attributions"],
        "cumulative_s": clock.marks,
        "screenshots_s": round(clock.paused, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1min": round(os.getloadavg()[0], 2)},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    assert not page.dialogs, page.dialogs


def assert_inert(page) -> None:
    """The note's markup shown as text: no element made from it, nothing ran."""
    shown = note_display(page)
    expect(shown).to_be_visible()
    page.wait_for_timeout(300)                  # time for an injected onerror handler to have fired
    assert shown.locator("script, img, iframe, svg, [onerror]").count() == 0, shown.inner_html()
    assert h.main(page).locator('img[src="x"], img[onerror], [onerror]').count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined", page.evaluate("window.__pwned")
    assert not page.dialogs, page.dialogs
    expect(shown).to_contain_text(XSS)          # the markup is shown literally, as text


def test_markup_in_the_note_is_inert(page):
    note = f"Itchy lesion. {XSS} Bleeding."
    fill_case_form(page, None, note)
    h.keyed(page, "case_submit").locator("button").click()
    expect(h.main(page).get_by_text("uploaded case · from uploaded files")).to_be_visible()
    h.wait_idle(page)
    h.no_exception(page)
    assert_inert(page)
    # the attributions page draws the note again, with highlight spans around its words
    h.goto_page(page, "Attributions")
    expect(note_display(page).locator("span[title]").first).to_be_attached()
    h.wait_idle(page)
    h.no_exception(page)
    assert_inert(page)


def test_empty_image_gives_one_sentence_and_keeps_the_note(page, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    fill_case_form(page, empty, NOTE)
    h.keyed(page, "case_submit").locator("button").click()
    expect(errors(page)).to_have_count(1)
    expect(errors(page)).to_have_text(re.compile(r"^\W*The image file is empty; upload a PNG, JPEG or TIFF image\.\s*$"))
    h.wait_idle(page)
    h.no_exception(page)
    # the note stays: in its box and in the stored case, which has no image
    expect(h.keyed(page, "up_note_text").locator("textarea")).to_have_value(NOTE)
    expect(note_display(page)).to_have_text(NOTE)
    expect(h.main(page).get_by_text("1 input(s) were left out")).to_be_visible()
    expect(h.main(page).locator('[data-testid="stImage"]')).to_have_count(0)
    # the app keeps running: the case predicts from the note and metadata
    h.goto_page(page, "Prediction")
    expect(page.locator('[data-testid="stMetric"]').filter(has_text="Predicted class")).to_be_visible()
    expect(h.main(page).get_by_text("Missing inputs, replaced by")).to_contain_text("image")
    h.no_exception(page)
    assert not page.dialogs, page.dialogs


def test_compare_variants_and_download_the_report(page, suite, tmp_path):
    """A demo case through both variants side by side, then the PDF report downloaded from that page."""
    import io

    from pypdf import PdfReader

    h.goto_page(page, "Case")
    h.keyed(page, "case_mode").get_by_text("Demo case").click()
    h.keyed(page, "demo_load").locator("button").click()
    expect(h.main(page).get_by_text("demo-1").first).to_be_visible()
    h.wait_idle(page)
    h.goto_page(page, "Compare")
    expect(h.keyed(page, "cmp_probs").locator(".main-svg").first).to_be_visible()
    expect(h.keyed(page, "cmp_cam_0").locator("svg image")).to_have_count(2)   # a Grad-CAM overlay per column
    expect(h.keyed(page, "cmp_cam_1").locator("svg image")).to_have_count(2)
    metric = page.locator('[data-testid="stMetric"]')
    expect(metric.filter(has_text="Label agreement").locator('[data-testid="stMetricValue"]')).to_have_text(
        re.compile(r"^(all agree|1 of 2)$"))
    expect(h.keyed(page, "cmp_cohort_chart").locator(".main-svg").first).to_be_visible()
    h.wait_idle(page)
    h.no_exception(page)
    h.full_page_screenshot(page, SHOTS / "compare.png")

    h.keyed(page, "cmp_report_reference").locator("input").fill("study-12")
    h.keyed(page, "cmp_report_reference").locator("input").press("Enter")
    h.wait_idle(page)
    h.keyed(page, "cmp_report_prepare").locator("button").click()
    button = h.keyed(page, "cmp_report_download_pdf").locator("button")
    expect(button).to_be_visible()
    h.wait_idle(page)
    with page.expect_download() as info:
        button.click()
    download = info.value
    assert download.suggested_filename.startswith("fusionlens-report-demo-1-") and download.suggested_filename.endswith(".pdf")
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
    sha = json.loads((Path(suite[0]) / "dermatology" / "gated" / "config.json").read_text())["weights"]["sha256"]
    assert sha in text and "study-12" in text and "Variant comparison" in text and "not a medical device" in text
    h.no_exception(page)
    assert not page.dialogs, page.dialogs


def test_several_sessions_at_once_each_get_their_own_result(browser, app_url, suite, image_file):
    """Two browser contexts (two streamlit sessions) submit different notes at the same time; each
    shows its own note and the prediction the core API gives for its own case. Two are enough to show any
    state shared between sessions (the later submit would show in both); tests/e2e/test_soak.py runs three
    sessions side by side for two rounds each with the same checks."""
    from core import Case, load_package

    notes = [f"Case {i}: itchy lesion, growing for {i + 2} months." for i in range(2)]
    contexts = [browser.new_context(viewport=h.VIEWPORT) for _ in notes]
    try:
        pages = []
        for ctx in contexts:
            ctx.set_default_timeout(WAIT)
            pg = ctx.new_page()
            h.open_app(pg, app_url)
            pages.append(pg)
        for pg, note in zip(pages, notes):
            fill_case_form(pg, image_file, note, age="62")
        for pg in pages:                                         # submit all before waiting for any
            h.keyed(pg, "case_submit").locator("button").click()
        for pg, note in zip(pages, notes):
            expect(note_display(pg)).to_have_text(note)
        for pg in pages:
            h.goto_page(pg, "Prediction")
        pkg = load_package(Path(suite[0]) / "dermatology" / "gated")
        for pg, note in zip(pages, notes):
            case = Case.from_inputs(image=image_file.read_bytes(), note=note, metadata={"age": 62})
            pred = pkg.predict(case)
            value = pg.locator('[data-testid="stMetric"]').filter(has_text="Calibrated probability")
            expect(value.locator('[data-testid="stMetricValue"]')).to_have_text(f"{pred.calibrated[pred.label_index]:.1%}")
            expect(pg.locator('[data-testid="stMetric"]').filter(has_text="Predicted class")
                   .locator('[data-testid="stMetricValue"]')).to_have_text(pred.label)
            h.no_exception(pg)
    finally:
        for ctx in contexts:
            ctx.close()


def test_an_upload_over_the_size_limit_is_refused_in_the_browser(page, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (26 * 2**20))
    h.goto_page(page, "Case")
    h.keyed(page, "case_mode").get_by_text("Upload files").click()
    h.keyed(page, "up_image").locator('input[type="file"]').set_input_files(str(big))
    expect(h.keyed(page, "up_image")).to_contain_text(re.compile(r"File must be 25(\.0)?\s*MB or smaller"))
    h.no_exception(page)
