"""The one base class of FusionLens's own errors.

Every error that core raises for a reason a user can fix (a bad case, package, cohort, config, flag or
report request) derives from ``FusionLensError`` and carries a message written for that user, so the
dashboard and the CLI catch this one class instead of bare ``ValueError`` / ``KeyError``. Subclasses keep
their historical second base (``ValueError`` / ``KeyError``) so callers that caught those still work.
"""
from __future__ import annotations


class FusionLensError(Exception):
    """Base of every error core raises with a one-sentence, user-facing message."""
