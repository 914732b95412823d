"""Shared fixtures; the tiny model and case factories live in tiny.py.

Nothing in FusionLens may reach the network at run time, so the whole test suite runs with
non-loopback sockets refused (``_no_network`` below): a test that passes here passes offline.
"""
from __future__ import annotations

import ipaddress
import socket

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
