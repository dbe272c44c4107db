"""Which quantized node costs the most accuracy: per-tensor error between the float and the quantized model.

Both models run one feed with every intermediate tensor exposed as an output. The error of a tensor is its relative
L2 error ``||q - f|| / ||f||``, where ``q`` is the quantized model's value *after* its QuantizeLinear/DequantizeLinear
pair (what the next node consumes; the quantizer also drops a Relu after a Conv, so before the pair the value is a
different tensor). Errors accumulate along the graph, so a node is ranked by the error it *adds*: the error at its
output minus the largest error at its activation inputs. Keeping that node in float removes its weight
quantization and the quantization of its inputs — exactly the error measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .verifier import session_for

DEQUANT_SUFFIX = "_DequantizeLinear_Output"  # onnxruntime.quantization's naming of a DequantizeLinear's output
QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"  # ... and of a graph output's value before its Q/DQ pair
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class NodeSensitivity:
    node: str
    op_type: str
    added_error: float  # relative L2 error the node adds (output error minus worst input error)
    output_error: float  # relative L2 error at its output, against the float model

    def to_dict(self) -> dict:
        return asdict(self)


def node_sensitivity(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, feed: dict[str, np.ndarray], *,
                     dynamic: bool) -> list[NodeSensitivity]:
    """The quantized nodes of ``quant_model``, most sensitive first. Node names are those of ``float_model``, so
    they can be passed to the quantizer's ``nodes_to_exclude``."""
    floats, quants = _all_values(float_model, feed), _all_values(quant_model, feed)
    weights = {i.name for i in float_model.graph.initializer}

    def error(name: str) -> float:
        base = name.removesuffix(DEQUANT_SUFFIX).removesuffix(QUANT_INPUT_SUFFIX)
        ref = floats.get(base)
        got = quants.get(base + DEQUANT_SUFFIX, quants.get(base))
        if base in weights or ref is None or got is None or ref.shape != got.shape:
            return 0.0  # weights are not activations; a tensor the quantizer renamed away cannot be compared
        norm = float(np.linalg.norm(ref))
        return float(np.linalg.norm(got - ref)) / norm if norm > 0 else float(np.linalg.norm(got))

    ranked = []
    for node in _quantized_nodes(float_model, quant_model, dynamic=dynamic):
        out_err = max((error(o) for o in node.output if o), default=0.0)
        in_err = max((error(i) for i in node.input if i), default=0.0)
        ranked.append(NodeSensitivity(node.name, node.op_type, out_err - in_err, out_err))
    return sorted(ranked, key=lambda s: s.added_error, reverse=True)


def _quantized_nodes(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, *, dynamic: bool):
    """Nodes that kept their name and read a DequantizeLinear output (static QDQ; a dynamically quantized Gather's
    table) and, for dynamic quantization, float nodes the quantizer replaced (MatMul -> DynamicQuantizeLinear +
    MatMulInteger + Mul), wired as in the float model. Static quantization also removes the Relu after a Conv;
    that Relu is not a candidate, its Conv is."""
    float_names = {n.name for n in float_model.graph.node}
    dequantized = {o for n in quant_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    nodes = [n for n in quant_model.graph.node
             if n.op_type not in QDQ_OPS and n.name in float_names and any(i in dequantized for i in n.input)]
    if dynamic:
        quant_names = {n.name for n in quant_model.graph.node}
        nodes += [n for n in float_model.graph.node if n.name and n.name not in quant_names]
    return nodes


def _all_values(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float tensor the model computes on ``feed``, by name (as float64)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in present:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
    session = session_for(exposed, what="the model with its intermediate tensors exposed")
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    values = session.run(None, {k: v for k, v in feed.items() if k in inputs})
    return {n: v.astype(np.float64) for n, v in zip(names, values)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
