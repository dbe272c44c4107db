"""The runner protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """What every runner offers: a name, the model's input and output names (``output_names`` may be None where
    they are known only once the model has run), and ``run(feed) -> outputs``; a context manager releases it."""

    name: str
    input_names: list[str]
    output_names: list[str] | None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs keyed by output name, in the model's output order."""
        ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...
