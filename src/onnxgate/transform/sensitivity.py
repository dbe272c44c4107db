"""Which quantized node costs the most accuracy: per-tensor error between the float and the quantized model.

Both models run one feed with every intermediate tensor exposed as an output. The error of a tensor is its relative
L2 error ``||q - f|| / ||f||``, where ``q`` is the quantized model's value *after* its QuantizeLinear/DequantizeLinear
pair (what the next node consumes; the quantizer also drops a Relu after a Conv, so before the pair the value is a
different tensor). Errors accumulate along the graph, so a node is ranked by the error it *adds*: the error at its
output minus the largest error at its activation inputs. Keeping that node in float removes its weight
quantization and the quantization of its inputs — exactly the error measured.

``layer_errors`` is the same measurement over several feeds (the calibration data), as SQNR in dB per layer — the
per-layer error table a quantize report shows (its ten worst layers), and the ranking ``quantize`` uses to choose
the layers kept in float.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..runtimes.intermediates import run_with_intermediates

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


@dataclass
class LayerError:
    """One quantized layer's error against FP32 over the calibration data, as SQNR (signal-to-quantization-noise
    ratio, dB: higher is better): at its output, and at its worst activation input. Per channel: the mean over
    channels of each channel's noise-to-signal power, so a layer whose large channels survive int8 while its small
    ones are rounded away (one outlier weight in a per-tensor range) reads as broken — the next layer, or a
    BatchNorm folded into it, scales the small channels back up."""

    node: str
    op_type: str
    sqnr_db: float  # at its output (after its Q/DQ pair): -10 log10(mean over channels of sum (q - f)^2 / sum f^2)
    input_sqnr_db: float  # at its worst activation input
    added_noise: float  # noise-to-signal power it adds: output NSR minus worst input NSR (the ranking key)

    def to_dict(self) -> dict:
        return asdict(self)

    def as_sensitivity(self) -> "NodeSensitivity":
        """As relative L2 errors (the square root of the noise-to-signal powers), for reports that show those."""
        out, inp = 10 ** (-self.sqnr_db / 20), 10 ** (-self.input_sqnr_db / 20)
        return NodeSensitivity(self.node, self.op_type, out - inp, out)


def layer_errors(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                 *, dynamic: bool) -> list[LayerError]:
    """Every quantized layer of ``quant_model`` with its SQNR against ``float_model`` over ``feeds`` (signal and
    noise power summed over all of them), the layer that adds the most noise first: the layers to keep in float.
    A layer whose output SQNR is low only because its input already was is not blamed (see the module doc)."""
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    weights = {i.name for i in float_model.graph.initializer}
    for feed in feeds:
        floats, quants = _all_values(float_model, feed), _all_values(quant_model, feed)
        for name, ref in floats.items():
            got = quants.get(name + DEQUANT_SUFFIX, quants.get(name))
            if name in weights or got is None or got.shape != ref.shape:
                continue
            ref64 = ref.astype(np.float64)
            sig, err = _per_channel(np.square(ref64)), _per_channel(np.square(got.astype(np.float64) - ref64))
            if name in signal and signal[name].shape != sig.shape:
                continue
            signal[name] = signal.get(name, 0) + sig
            noise[name] = noise.get(name, 0) + err

    def nsr(name: str) -> float:
        base = name.removesuffix(DEQUANT_SUFFIX).removesuffix(QUANT_INPUT_SUFFIX)
        if base not in signal:
            return 0.0
        live = signal[base] > 0
        if not live.any():
            return math.inf if noise[base].sum() > 0 else 0.0
        return float(np.mean(noise[base][live] / signal[base][live]))

    rows = []
    for node in _quantized_nodes(float_model, quant_model, dynamic=dynamic):
        out_nsr = max((nsr(o) for o in node.output if o), default=0.0)
        in_nsr = max((nsr(i) for i in node.input if i), default=0.0)
        rows.append(LayerError(node.name, node.op_type, _db(out_nsr), _db(in_nsr), out_nsr - in_nsr))
    return sorted(rows, key=lambda r: r.added_noise, reverse=True)


def _per_channel(power: np.ndarray) -> np.ndarray:
    """Power summed per channel: axis 1 of an NCHW or [N, features] tensor, the last axis of a [N, S, hidden]
    one, the whole tensor otherwise."""
    if power.ndim == 3:
        return power.reshape(-1, power.shape[-1]).sum(axis=0)
    if power.ndim >= 2:
        return np.moveaxis(power, 1, 0).reshape(power.shape[1], -1).sum(axis=1)
    return np.atleast_1d(power.sum())


def _db(nsr: float) -> float:
    """SQNR in dB from a noise-to-signal power ratio (inf for no noise, capped at 200 dB for the report)."""
    return 200.0 if nsr <= 0 else round(min(200.0, -10 * math.log10(nsr)), 2)


def layer_table(rows: list[LayerError], limit: int = 10) -> list[str]:
    """The ``limit`` worst layers as text lines (for reports)."""
    lines = [f"{'layer':<40} {'op':<18} {'SQNR dB':>8} {'input dB':>9}"]
    lines += [f"{r.node[:40]:<40} {r.op_type[:18]:<18} {r.sqnr_db:>8.1f} {r.input_sqnr_db:>9.1f}"
              for r in rows[:limit]]
    return lines


def channel_means(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tensors: list[str]
                  ) -> dict[str, np.ndarray]:
    """The per-channel mean (axis 1) of each of ``tensors`` that ``model`` computes, over ``feeds``."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    wanted = set(tensors)
    for feed in feeds:
        for name, value in _all_values(model, feed).items():
            if name in wanted and value.ndim >= 2:
                moved = np.moveaxis(value.astype(np.float64), 1, 0).reshape(value.shape[1], -1)
                sums[name] = sums.get(name, 0) + moved.sum(axis=1)
                counts[name] = counts.get(name, 0) + moved.shape[1]
    return {n: sums[n] / counts[n] for n in sums}


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
        ref, got = ref.astype(np.float64), got.astype(np.float64)
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
    """Every float tensor the model computes on ``feed``, by name (``runtimes.intermediates``; as computed: float32
    keeps a large model's intermediates in half the memory; sums are taken in float64 by the callers)."""
    values = run_with_intermediates(model, feed, what="the model with its intermediate tensors exposed")
    return {n: v for n, v in values.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
