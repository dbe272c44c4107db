"""onnxruntime's offline graph optimization: the graph onnxruntime would build at session start, saved to a file.

Levels (onnxruntime's names): ``basic`` — semantics-preserving rewrites into standard ONNX operators (constant
folding, redundant node removal); the result runs anywhere. ``extended`` — fusions into onnxruntime's contrib
operators (``com.microsoft``: FusedConv, FusedGemm, Attention, ...); the result runs only in onnxruntime.
``layout`` — also the NCHWc layout transforms (``com.microsoft.nchwc``), tuned to this machine's CPU; the result
runs only in onnxruntime and only on comparable hardware. Saving an optimized file mostly saves session start-up
time: onnxruntime applies the same rewrites at load by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .. import serde
from ..errors import BadInputError
from ..fsutil import staging_dir
from ..runtimes.ort import OPT_LEVELS, optimize_offline
from .passes import PassResult, graph_changed

# The offline levels, named as in runtimes.ort.OPT_LEVELS (the one table of onnxruntime's levels).
LEVELS = {name: OPT_LEVELS[name] for name in ("basic", "extended", "layout")}
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

        with staging_dir("ortopt") as tmp:
            # the hardware-specific warning (log severity 3 hides it) is recorded in ``details`` instead
            out = serde.load(optimize_offline(model, self.level, tmp / "optimized.onnx"))
        domains = sorted({n.domain for n in out.graph.node if n.domain not in ("", "ai.onnx")})
        details = {"level": self.level, "onnxruntime": ort.__version__, "custom_domains": domains,
                   "ort_only": bool(domains), "hardware_specific": "com.microsoft.nchwc" in domains}
        if domains:
            details["note"] = (f"uses onnxruntime-only operators ({', '.join(domains)}): the model runs only in "
                               "onnxruntime" + (", on CPUs like this one" if details["hardware_specific"] else ""))
        return PassResult(out, graph_changed(model, out), self.name, details)
