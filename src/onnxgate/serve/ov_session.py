"""Serving on OpenVINO: a session with onnxruntime's ``run(output_names, feed)`` face, so the executor, the batch
probe and the golden self-check run on it unchanged.

It is compiled the way ``onnxgate bench`` measured and verified an OpenVINO configuration (``bench/runners.py``):
CPU, ``EXECUTION_MODE_HINT=PERFORMANCE``, ``PERFORMANCE_HINT=LATENCY``, the configuration's thread count, and
``INFERENCE_PRECISION_HINT`` pinned to the precision it was verified at (so this machine cannot pick another one,
e.g. bf16 where f32 was verified). Each executor thread gets its own infer request (a request is not safe to share
between threads); outputs are copies the caller owns.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import RuntimeIncompatibleError, first_line, require


class OpenVinoSession:
    def __init__(self, model_path: str | Path, *, threads: int | None, precision: str):
        ov = require("openvino", "openvino", "`onnxgate serve --runtime openvino`")
        self.version = ov.get_version().split("-")[0]
        config: dict[str, object] = {"EXECUTION_MODE_HINT": "PERFORMANCE", "PERFORMANCE_HINT": "LATENCY",
                                     "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises a generic RuntimeError for every failure
            raise RuntimeIncompatibleError(f"OpenVINO {self.version} cannot compile '{model_path}' for CPU with "
                                           f"{config}: {first_line(exc)}",
                                           hint="Serve it with --runtime onnxruntime.") from exc
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.threads = int(threads or 0)
        self.config = config
        self._ports = {port.get_any_name(): port for port in self.compiled.outputs}
        self._local = threading.local()

    def describe(self) -> str:
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return (f"OpenVINO {self.version} CPU, PERFORMANCE mode, LATENCY hint, INFERENCE_PRECISION_HINT="
                f"{self.precision}{threads}")

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        return [np.array(result[self._ports[name]], copy=True) for name in output_names]
