"""Driving the dashboard in a real browser: start `streamlit run` on a free port, launch Debian's
Chromium through Playwright, walk the pages without losing the session, take full-page screenshots.

Shared by ``tests/e2e/test_browser.py`` (tiny generated suite) and ``scripts/screenshots.py`` (the
shipped assets). Never runs ``playwright install``: the browser is ``/usr/bin/chromium``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "Home.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
# sidebar link paths of the pages (streamlit's url path: the file name without its number prefix)
PAGES = {"Home": "", "Case": "Case", "Prediction": "Prediction", "Fusion internals": "Fusion_internals",
         "Image explanations": "Image_explanations", "Attributions": "Attributions", "Compare": "Compare"}


def ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `streamlit run dashboard/Home.py` process on 127.0.0.1; its output goes to ``log``."""

    def __init__(self, env: Mapping[str, str], log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(self.port),
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--server.runOnSave", "false"]
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                return r.status == 200 and r.read().strip() == b"ok"
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"streamlit exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()


@contextmanager
def server(env: Mapping[str, str], log: Path, timeout: float = 120.0) -> Iterator[Server]:
    srv = Server(env, log)
    try:
        srv.wait_ready(timeout)
        yield srv
    finally:
        srv.stop()


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Debian's /usr/bin/chromium) under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# ---- page helpers ---------------------------------------------------------------------------------------------------

def main(page):
    """The app's main area (not the sidebar)."""
    return page.locator('[data-testid="stMain"]')


def keyed(page, key: str):
    """The element drawn with ``key=...`` (streamlit adds the class st-key-<key>)."""
    return page.locator(f".st-key-{key}")


def wait_idle(page, timeout: float = 90_000) -> None:
    """Wait until no script run is going on (streamlit's own marker on the app root). Call it after
    waiting for an element the run draws: right after a click the new run may not have started yet."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(state="attached",
                                                                                          timeout=timeout)


_SETTLED_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (document.querySelector('[data-testid="stSpinner"], [data-testid="stSkeleton"], '
                               + '[data-testid="stProgress"], [data-stale="true"]')) return false;
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    if (!charts.every(c => c.querySelector('.main-svg'))) return false;
    return document.querySelectorAll('[data-testid="stElementContainer"]').length;
}"""


def wait_settled(page, timeout: float = 300_000, quiet_ms: int = 800) -> None:
    """Wait until the page is done for any page content: no script run, no spinner / progress bar /
    skeleton / stale element, every plotly chart drawn, and the element count steady for ``quiet_ms``."""
    end = time.monotonic() + timeout / 1000
    while True:
        left = max(1.0, (end - time.monotonic()) * 1000)
        count = page.wait_for_function(_SETTLED_JS, timeout=left, polling=100).json_value()
        page.wait_for_timeout(quiet_ms)
        if page.evaluate(_SETTLED_JS) == count:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"the page did not settle within {timeout / 1000:.0f} s")


def choose(page, key: str, option: str, timeout: float = 60_000) -> None:
    """Pick ``option`` in the selectbox drawn with ``key`` (skipped when it already shows it)."""
    if selected(page, key, timeout) == option:
        return
    keyed(page, key).locator('button[aria-haspopup="listbox"]').click(timeout=timeout)
    page.get_by_role("option", name=option, exact=True).click(timeout=timeout)


def selected(page, key: str, timeout: float = 60_000) -> str:
    """What the selectbox drawn with ``key`` shows (streamlit's react-aria combobox)."""
    return keyed(page, key).locator('input[role="combobox"]').input_value(timeout=timeout)


def open_app(page, url: str, timeout: float = 120_000) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=timeout)
    page.locator('[data-testid="stSidebarNav"]').wait_for(timeout=timeout)
    main(page).locator("h1").first.wait_for(timeout=timeout)


def goto_page(page, name: str, timeout: float = 90_000) -> None:
    """Switch page through the sidebar link (a client-side switch: the session and its case survive;
    loading the page's URL would start a new session)."""
    path = PAGES[name]
    links = page.locator('[data-testid="stSidebarNav"] [data-testid="stSidebarNavLink"]')
    link = links.and_(page.locator(f'[href$="/{path}"]')) if path else links
    link.first.click(timeout=timeout)
    main(page).locator("h1", has_text=name if name != "Home" else "FusionLens").wait_for(timeout=timeout)


def no_exception(page) -> None:
    n = page.locator('[data-testid="stException"]').count()
    if n:
        raise AssertionError("the app shows an exception: "
                             + page.locator('[data-testid="stException"]').first.inner_text()[:2000])


def full_page_screenshot(page, path: Path) -> None:
    """A PNG of the whole page: streamlit scrolls inside its main section, so the viewport is grown to
    the content's height for the shot and restored after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or VIEWPORT
    page.mouse.move(size["width"] - 10, 10)  # off the sidebar (its collapse button shows on hover) and the charts
    height = page.evaluate(
        """() => Math.max(...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]',
                             '[data-testid="stSidebarContent"]']
                 .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight),
                 document.documentElement.scrollHeight)""")
    grown = int(min(max(height, size["height"]), 12_000))
    if grown > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": grown})
        page.wait_for_timeout(400)  # plotly charts relayout on resize
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        if grown > size["height"]:
            page.set_viewport_size(size)
