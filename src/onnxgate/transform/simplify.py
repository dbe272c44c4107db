"""Graph simplification (onnxslim or onnxsim) and constant folding (the onnxscript optimizer).

Both simplifiers fold constants, remove dead and identity nodes and fuse simple patterns. Measured on the transform
corpus (``benchmarks/transform_table.py --simplifiers``: digits CNN, resnet18, mobilenet_v3_large, a BERT encoder;
dynamo and TorchScript exports) both passed verification everywhere and reached the same node counts except on BERT
(onnxsim removed 2 more mask nodes); per call onnxsim was as fast or faster. onnxslim is the default all the same:
it is pure Python and does not import torch, while importing onnxsim imports torch when it is installed — which
breaks this package's torch-free promise and made ``onnxgate optimize`` take 3.5 s instead of 1.3 s end to end on
the BERT encoder. onnxsim stays selectable.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import onnx

from ..errors import BadInputError, require
from .passes import PassResult, graph_changed

SIMPLIFIERS = ("onnxslim", "onnxsim")
DEFAULT_SIMPLIFIER = "onnxslim"


@dataclass
class Simplify:
    """Simplify the graph with ``tool`` (onnxslim or onnxsim). The verifier checks the result; neither tool's own
    check is run (onnxsim's compares on random data only, at the traced shapes)."""

    tool: str = DEFAULT_SIMPLIFIER

    def __post_init__(self) -> None:
        if self.tool not in SIMPLIFIERS:
            raise BadInputError(f"Simplifier '{self.tool}' is not supported.",
                                hint=f"Use one of: {', '.join(SIMPLIFIERS)}, or none.")
        require(self.tool, "optimize", f"Simplifying with {self.tool}")  # a missing package is an error, not a rollback

    @property
    def name(self) -> str:
        return f"simplify:{self.tool}"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        before = len(model.graph.node)
        tool = importlib.import_module(self.tool)
        out = tool.slim(model) if self.tool == "onnxslim" else tool.simplify(model, check_n=0)[0]
        return PassResult(out, graph_changed(model, out), self.name, {
            "tool": self.tool, "version": str(tool.__version__), "removed_nodes": before - len(out.graph.node)})


@dataclass
class FoldConstants:
    """Constant folding, dead-code elimination and onnxscript's default rewrites. Exports from the dynamo exporter
    have had this already (it is part of ``torch.onnx.export(dynamo=True)``); TorchScript exports gain most."""

    name: str = "fold-constants"

    def __post_init__(self) -> None:
        require("onnxscript.optimizer", "optimize", "Constant folding")

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        import onnxscript.optimizer

        out = onnxscript.optimizer.optimize(model)
        return PassResult(out, graph_changed(model, out), self.name, {"tool": "onnxscript.optimizer"})
