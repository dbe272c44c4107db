"""Lazy public names for package ``__init__`` modules (PEP 562).

A package re-exports its public names without importing the modules that define them, so importing a light
module (``onnxgate.bundle.verify`` on a production box) never drags in onnx, torch or the export ladder through
a parent package's ``__init__``. ``lazy_exports(__name__, {"name": ".module", ...})`` returns the ``__getattr__``
and ``__dir__`` functions a package assigns at module level.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    def __getattr__(name: str) -> object:
        try:
            module = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
