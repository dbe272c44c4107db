"""Shared test setup. Helpers that several test files use live in ``helpers.py`` beside this file, as plain
functions and constants (``from helpers import bundle_of, make_model``): a test file never imports another test
file. This conftest makes ``helpers`` importable whatever pytest's import mode (the default "prepend" mode already
puts this folder on ``sys.path``; ``--import-mode=importlib`` does not)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
