"""Streamlit pages through AppTest."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "Home.py")


def test_home_renders_with_research_notice():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("not a medical device" in w.value for w in at.warning)
    assert at.title[0].value == "FusionLens"
