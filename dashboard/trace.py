"""Opt-in timeline of the server's work (``FUSIONLENS_TRACE=<file>``): one line per event, wall-clock time,
thread name and what happened, so a browser-timed journey can be lined up with what the server did.
Off (a no-op) unless the variable is set."""
from __future__ import annotations

import os
import threading
import time

_PATH = os.environ.get("FUSIONLENS_TRACE", "").strip()
_LOCK = threading.Lock()


def enabled() -> bool:
    return bool(_PATH)


def event(what: str) -> None:
    """Append ``what`` to the trace file (wall-clock seconds, thread name); nothing when tracing is off."""
    if not _PATH:
        return
    line = f"{time.time():.3f} {threading.current_thread().name} {what}\n"
    with _LOCK, open(_PATH, "a") as f:
        f.write(line)
