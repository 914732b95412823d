"""``python -m core <verb>``. Bad input: exit code 2 and one line on stderr starting ``error:``
(``python -m core --debug <verb>``: the traceback instead).

``common``: the shared error, parser and case flags; ``case``: predict / explain / compare / report;
``models``: train / train-suite / evaluate / bench / faithfulness / variants; ``main``: the parser and ``main``.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .common import Parser, UsageError, add_case_arguments
from .main import build_parser, main

__all__ = ["Parser", "UsageError", "add_case_arguments", "build_parser", "main"]
