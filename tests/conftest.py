"""Shared fixtures; the tiny model and case factories live in tiny.py."""
from __future__ import annotations

import pytest

from tiny import make_case


@pytest.fixture(scope="session")
def cases():
    return [make_case(i) for i in range(4)]
