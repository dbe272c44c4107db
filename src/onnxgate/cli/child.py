"""The console script's child process: ``python -m onnxgate.cli.child ARGV``, started by ``isolate.run_isolated``
below a keeper. Its own module (not ``isolate``'s ``__main__``) so that isolate never imports ``main``: ``main``'s
console script hands off to ``isolate``, and this module is the only one that needs both."""

from __future__ import annotations

import sys

from .isolate import child_prologue

if __name__ == "__main__":
    child_prologue()  # before anything slow: die with the keeper
    from .main import main

    sys.exit(main())
