"""The cohort journey in a real browser: open Cohort, pick the worst slice, open a case from the error
browser, change a metadata value in the what-if section and see the prediction change.

The site is the session's browser-test site (``e2e_site`` in tests/conftest.py, shared with
tests/e2e/test_browser.py): the tiny suite and demo case plus one results set of both packages over 10 tiny
cases, served by one `streamlit run` with FUSIONLENS_MODELS / FUSIONLENS_CASES / FUSIONLENS_RESULTS pointing
there. Skipped only when /usr/bin/chromium is absent and ``CI`` is not set.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import e2e_harness as h

pytestmark = pytest.mark.e2e

if not Path(h.CHROMIUM).exists() and not h.ci():
    pytest.skip(f"no browser at {h.CHROMIUM} (install Debian's `chromium`; under CI=true this test fails instead)",
                allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

SHOTS = Path(__file__).resolve().parent / "screenshots"
WAIT = 120_000
expect.set_options(timeout=WAIT)


def test_cohort_worst_slice_to_a_case_to_a_what_if(e2e_browser, e2e_site):
    app_url = e2e_site.url
    context = e2e_browser.new_context(viewport=h.VIEWPORT)
    context.set_default_timeout(WAIT)
    page = context.new_page()
    try:
        h.open_app(page, app_url)
        # Cohort (a client-side switch through the sidebar link keeps the session)
        page.locator('[data-testid="stSidebarNav"] [data-testid="stSidebarNavLink"][href$="/Cohort"]').first.click()
        h.main(page).locator("h1", has_text="Cohort").wait_for()
        expect(h.main(page).get_by_text("Focus on a slice (worst first)")).to_be_visible()
        h.wait_settled(page)
        h.no_exception(page)

        # the worst slice: the first option after "whole cohort"
        h.keyed(page, "co_focus").locator('button[aria-haspopup="listbox"]').click()
        worst = page.get_by_role("option").nth(1)
        worst_text = worst.inner_text()
        worst.click()
        expect(h.keyed(page, "co_focus").locator('input[role="combobox"]')).to_have_value(worst_text)
        h.wait_settled(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        h.full_page_screenshot(page, SHOTS / "cohort.png")

        # a case of that slice from the error browser (wrong predictions only by default; fall back to all)
        page.get_by_role("tab", name="Errors").click()
        h.wait_settled(page)
        if h.keyed(page, "co_open_0").count() == 0:
            h.keyed(page, "co_only_wrong").locator("label").click()
            h.wait_settled(page)
        h.keyed(page, "co_open_0").locator("button").click()
        h.main(page).locator("h1", has_text="Prediction").wait_for()
        expect(page.locator('[data-testid="stSidebar"]').get_by_text(re.compile(r"^case-\d\d$"))).to_be_visible()

        # what-if: change the age and see the prediction change
        expect(h.main(page).get_by_text("What if?")).to_be_visible()
        h.wait_settled(page)
        age = page.locator('[class*="st-key-wi_meta_age_"] input').first
        age.fill("119")
        age.press("Tab")
        h.main(page).get_by_role("button", name="Show what changes").click()
        changes = h.main(page).locator('[data-testid="stMarkdownContainer"]', has_text="Changes:").first
        expect(changes).to_contain_text("age")
        expect(changes).to_contain_text("re-encoded: metadata")
        h.wait_settled(page)
        deltas = h.main(page).locator('[data-testid="stMetricDelta"]')
        texts = [deltas.nth(i).inner_text() for i in range(deltas.count())]
        moved = [t for t in texts if t.endswith("points")]
        assert moved and all(not re.fullmatch(r"[+-]0\.0 points", t) for t in moved), texts
        h.no_exception(page)
        h.full_page_screenshot(page, SHOTS / "whatif.png")
    finally:
        context.close()
