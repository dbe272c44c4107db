"""onnxruntime's offline graph optimization: the graph onnxruntime would build at session start, saved to a file.

Levels (onnxruntime's names): ``basic`` — semantics-preserving rewrites into standard ONNX operators (constant
folding, redundant node removal); the result runs anywhere. ``extended`` — fusions into onnxruntime's contrib
operators (``com.microsoft``: FusedConv, FusedGemm, Attention, ...); the result runs only in onnxruntime.
``layout`` — also the NCHWc layout transforms (``com.microsoft.nchwc``), tuned to this machine's CPU; the result
runs only in onnxruntime and only on comparable hardware. Saving an optimized file mostly saves session start-up
time: onnxruntime applies the same rewrites at load by default.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import BadInputError
from .passes import PassResult, graph_changed

LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT"}
DEFAULT_LEVEL = "basic"


@dataclass
class OrtOptimize:
    level: str = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BadInputError(f"Optimization level '{self.level}' is not one of onnxruntime's levels.",
                                hint=f"Use one of: {', '.join(LEVELS)}, or none.")

    @property
    def name(self) -> str:
        return f"ort-optimize:{self.level}"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="onnxgate-ortopt-") as tmp:
            path = Path(tmp) / "optimized.onnx"
            so = ort.SessionOptions()
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[self.level])
            so.optimized_model_filepath = str(path)
            so.log_severity_level = 3  # the hardware-specific warning is recorded in ``details`` instead
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            out = onnx.load(str(path))
        domains = sorted({n.domain for n in out.graph.node if n.domain not in ("", "ai.onnx")})
        details = {"level": self.level, "onnxruntime": ort.__version__, "custom_domains": domains,
                   "ort_only": bool(domains), "hardware_specific": "com.microsoft.nchwc" in domains}
        if domains:
            details["note"] = (f"uses onnxruntime-only operators ({', '.join(domains)}): the model runs only in "
                               "onnxruntime" + (", on CPUs like this one" if details["hardware_specific"] else ""))
        return PassResult(out, graph_changed(model, out), self.name, details)
