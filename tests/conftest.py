"""Shared fixtures; the tiny model and case factories live in tiny.py.

Nothing in FusionLens may reach the network at run time, so the whole test suite runs with
non-loopback sockets refused (``_no_network`` below): a test that passes here passes offline.

The browser tests (tests/e2e/test_browser.py, tests/e2e/test_cohort_journey.py) share one site: one tiny
suite, demo case and results set served by one ``streamlit run``, and one Chromium (``e2e_site``,
``e2e_browser``); each test still opens its own browser context, i.e. its own streamlit session.
They live here, not in a tests/e2e/conftest.py, because a second module named ``conftest`` would replace
this one in sys.modules (``from conftest import NetworkBlocked`` in tests/test_reliability.py).
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from tiny import make_case


class NetworkBlocked(OSError):
    """Raised when code under test opens a non-loopback connection."""


def _loopback(address) -> bool:
    if not isinstance(address, tuple) or not address:
        return True                         # AF_UNIX paths and the like
    host = address[0]
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False                        # a host name: would need DNS, refused


_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _guard(fn):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlocked(f"network access is disabled in the tests (tried {address!r})")
        return fn(self, address)
    return connect


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect, socket.socket.connect_ex = _guard(_real_connect), _guard(_real_connect_ex)
    yield
    socket.socket.connect, socket.socket.connect_ex = _real_connect, _real_connect_ex


@pytest.fixture(scope="session")
def cases():
    return [make_case(i) for i in range(4)]


# ---- the browser tests' site (tests/e2e) ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def e2e_site(tmp_path_factory):
    """The tiny suite and demo case of tests/test_app.py plus one results set of both packages over 10 tiny cases,
    served by one `streamlit run` on a free 127.0.0.1 port with FUSIONLENS_MODELS / FUSIONLENS_CASES /
    FUSIONLENS_RESULTS / FUSIONLENS_CACHE pointing there. -> SimpleNamespace(url, models, cases)."""
    import e2e_harness as h                       # tests/e2e is on sys.path once its test modules are collected
    from core.cohort import run_cohort
    from test_app import write_app_suite
    from test_cohort_explorer import write_cohort

    root = tmp_path_factory.mktemp("e2e-site")
    models, cases = write_app_suite(root)
    records = write_cohort(root / "cohort-cases", 10)
    run_cohort([models / "dermatology" / "gated", models / "dermatology" / "mmtm"], records,
               str(root / "results" / "tiny-set"), ("prediction", "modality", "cam_summary", "table_top", "embedding"),
               batch_size=10, source={"cohort": "tiny", "seed": 1, "split": "test", "synthetic": True})
    env = {"FUSIONLENS_MODELS": str(models), "FUSIONLENS_CASES": str(cases), "FUSIONLENS_RESULTS": str(root / "results"),
           "FUSIONLENS_CACHE": str(root / "cache")}
    with h.server(env, root / "streamlit.log") as srv:
        yield SimpleNamespace(url=srv.url, models=models, cases=cases)
        if not srv.alive():
            pytest.fail(f"the streamlit server died during the browser tests:\n{srv.log_tail()}")


@pytest.fixture(scope="session")
def e2e_browser():
    """One headless Chromium (Debian's /usr/bin/chromium under Playwright) for the browser tests."""
    import e2e_harness as h

    if not Path(h.CHROMIUM).exists():
        pytest.fail(f"CI is set but there is no browser at {h.CHROMIUM}: install the apt packages chromium and "
                    "chromium-driver (.ci/run does).")
    with h.chromium() as b:
        yield b
