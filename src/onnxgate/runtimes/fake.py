"""A runner that runs no model, for tests: its outputs come from a function of the feed or are fixed arrays.

It keeps the runner protocol (``runtimes.base.Runner``) as the real runners do — a missing input is a
``BadInputError``, outputs are fresh arrays the caller owns, in ``output_names`` order — so code that takes a runner
can be tested without onnxruntime, OpenVINO or PyTorch, and without a model file::

    reference = FakeRunner(lambda feed: {"y": feed["x"] * 2}, input_names=["x"])
    candidate = FakeRunner({"y": np.zeros((1, 4), np.float32)}, input_names=["x"], name="broken")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..errors import BadInputError

Outputs = Mapping[str, np.ndarray]


class FakeRunner:
    """``outputs``: a function ``feed -> {name: array}``, or a dict of fixed arrays returned for every feed.

    ``input_names`` (default: whatever the feed holds) are the inputs it requires and passes on; extra feed entries
    are dropped, as ``OrtRunner`` drops them. ``output_names`` default to the fixed dict's keys, else to the
    function's first result's keys; a later result with other names is an error. ``calls`` records every feed it
    received; ``closed`` tells whether its ``with`` block has ended (a closed runner refuses to run).
    """

    def __init__(self, outputs: Callable[[dict[str, np.ndarray]], Outputs] | Outputs, *,
                 input_names: list[str] | None = None, output_names: list[str] | None = None, name: str = "fake"):
        self.name = name
        self._fn = outputs if callable(outputs) else None
        self._fixed = None if callable(outputs) else {k: np.asarray(v) for k, v in outputs.items()}
        self.input_names = list(input_names) if input_names is not None else None
        self.output_names = (list(output_names) if output_names is not None
                             else list(self._fixed) if self._fixed is not None else None)
        self.calls: list[dict[str, np.ndarray]] = []
        self.closed = False

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise RuntimeError(f"the runner '{self.name}' was used after its `with` block ended")
        if self.input_names is None:
            feed = dict(inputs)
        else:
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise BadInputError(f"The feed has no value for input(s) {', '.join(missing)}.",
                                    hint=f"The model's inputs are: {', '.join(self.input_names)}.")
            feed = {n: inputs[n] for n in self.input_names}
        self.calls.append(feed)
        result = dict(self._fn(feed)) if self._fn is not None else self._fixed
        if self.output_names is None:
            self.output_names = list(result)
        if set(result) != set(self.output_names):
            raise ValueError(f"the fake runner '{self.name}' produced outputs {sorted(result)}, "
                             f"not its output names {self.output_names}")
        return {n: np.array(result[n], copy=True) for n in self.output_names}

    def __enter__(self) -> "FakeRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True
