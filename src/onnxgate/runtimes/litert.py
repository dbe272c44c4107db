"""LiteRT (TFLite) runner: runs a ``.tflite`` file in the LiteRT interpreter (``ai-edge-litert``, the
``[tflite]`` extra), the way a phone would (XNNPACK on CPU), keyed by the ONNX model's input and output names.

A TFLite file converted from an NCHW ONNX model usually takes NHWC inputs (onnx2tf moves channels last, the layout
mobile kernels want). The runner is told each input's and output's permutation (``layouts``: name -> the axes of
the ONNX array in the TFLite array's order, e.g. ``(0, 2, 3, 1)`` for NCHW -> NHWC) so that it can be fed and
compared like the ONNX file; the layout is a property of the artifact that a deployment must honour, and the
deploy report states it. A wrong layout gives wrong numbers (or a shape error) that verification reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError, RuntimeIncompatibleError, first_line, require


class LiteRtRunner:
    """Runs a ``.tflite`` file through its default signature; inputs/outputs keyed by signature names."""

    def __init__(self, path: str | Path, *, layouts: dict[str, tuple[int, ...]] | None = None,
                 threads: int | None = None):
        litert = require("ai_edge_litert.interpreter", "tflite", "The LiteRT (TFLite) runner")
        self.name = "litert"
        self.layouts = {k: tuple(v) for k, v in (layouts or {}).items()}
        try:
            self._interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
            signatures = self._interpreter.get_signature_list()
            self._key = next(iter(signatures))
            self._runner = self._interpreter.get_signature_runner(self._key)
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for a file it cannot read
            raise RuntimeIncompatibleError(f"LiteRT cannot load '{path}': {first_line(exc)}",
                                           hint="Re-convert the model (onnxgate deploy --to tflite).") from exc
        self.input_names = list(signatures[self._key]["inputs"])
        self.output_names = list(signatures[self._key]["outputs"])
        details = self._runner.get_input_details()
        self.input_shapes = {n: tuple(int(s) for s in details[n]["shape"]) for n in self.input_names}
        # -1 where the file keeps a dim dynamic (the signature runner resizes to each feed's shape)
        self.input_signatures = {n: tuple(int(s) for s in details[n].get("shape_signature", details[n]["shape"]))
                                 for n in self.input_names}
        self.input_dtypes = {n: np.dtype(details[n]["dtype"]) for n in self.input_names}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise BadInputError(f"The feed has no value for input(s) {', '.join(missing)}.",
                                hint=f"The model's inputs are: {', '.join(self.input_names)}.")
        feed = {}
        for name in self.input_names:
            array = np.asarray(inputs[name])
            if name in self.layouts:
                array = array.transpose(self.layouts[name])
            feed[name] = np.ascontiguousarray(array.astype(self.input_dtypes[name], copy=False))
        try:
            results = self._runner(**feed)
        except Exception as exc:
            raise RuntimeIncompatibleError(f"LiteRT failed to run the model: {first_line(exc)}",
                                           hint="Feed the shapes the artifact was built for.") from exc
        out = {}
        for name in self.output_names:
            array = np.array(results[name])
            if name in self.layouts:  # back to the ONNX layout: the inverse permutation
                array = array.transpose(np.argsort(self.layouts[name]))
            out[name] = array
        return out

    def __enter__(self) -> "LiteRtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self._runner = None
