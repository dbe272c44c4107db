"""The runner protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs keyed by output name, in the model's output order."""
        ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...
