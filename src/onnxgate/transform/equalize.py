"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): the FP32-equivalent rescaling that lets
per-tensor int8 weights hold on depthwise nets.

Folding BatchNorm into a depthwise convolution leaves its output channels with weight ranges that differ by orders
of magnitude; one int8 range per tensor then rounds the small channels away. For two convolutions in a row,
``conv2(act(conv1(x)))`` with a positively homogeneous ``act`` (ReLU: ``act(x / s) = act(x) / s`` for s > 0),
dividing conv1's output channel i (weights and bias) by ``s_i`` and multiplying conv2's input channel i by ``s_i``
computes the same function. ``s_i = sqrt(r1_i / r2_i)`` (``r``: the channel's largest absolute weight) gives both
the same range ``sqrt(r1_i * r2_i)``. Chains (expand -> depthwise -> project) are equalized pair by pair, a few
sweeps until the scales settle.

ReLU6 (``Clip(0, 6)``) is not homogeneous: its cap moves with the scale. It is rewritten as ``Min(Relu(x), cap)``
with a per-channel cap ``6 / s_i`` — still exactly the FP32 function (Nagel et al. replace ReLU6 by ReLU instead,
which changes the model). Pairs are equalized only where the tensor between them has no other reader, conv2 reads
every channel of conv1 (``group`` 1, or depthwise with one input channel per group), and both weights are
initializers with a bias or none.

``equalize`` is a transform like the others: the caller verifies the result against the input model on real data
and rolls it back when it does not match (``quantize``'s ``equalize=True`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

HOMOGENEOUS = ("Relu",)  # act(x / s) = act(x) / s for s > 0
EPS = 1e-8


@dataclass
class Equalized:
    model: onnx.ModelProto
    pairs: list[tuple[str, str]]  # (conv1, conv2) node names rescaled
    clips: int  # Clip(0, cap) rewritten as Min(Relu, per-channel cap)
    spread_before: float  # median over pairs of (largest / smallest channel range) of conv1's weights, before
    spread_after: float  # ... and after


def equalize(model: onnx.ModelProto, *, sweeps: int = 4) -> Equalized:
    """A copy of ``model`` with every eligible convolution pair equalized (see the module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    arrays = {name: numpy_helper.to_array(t).astype(np.float32).copy() for name, t in inits.items()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    pairs = [p for p in (_pair(n, consumers, outputs, arrays) for n in graph.node if n.op_type == "Conv") if p]
    if not pairs:
        return Equalized(out, [], 0, 1.0, 1.0)
    caps: dict[str, np.ndarray] = {}  # Clip node name -> per-channel cap
    before = _spread(pairs, arrays)
    for _ in range(sweeps):
        for conv1, act, conv2 in pairs:
            w1, w2 = arrays[conv1.input[1]], arrays[conv2.input[1]]
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = _input_ranges(conv2, w2)
            scale = np.where((r1 > EPS) & (r2 > EPS), np.sqrt(r1 / np.maximum(r2, EPS)), 1.0).astype(np.float32)
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            arrays[conv1.input[1]] = w1 / scale.reshape(shape1)
            if len(conv1.input) > 2 and conv1.input[2]:
                arrays[conv1.input[2]] = arrays[conv1.input[2]] / scale
            if _group(conv2) == 1:
                arrays[conv2.input[1]] = w2 * scale.reshape((1, -1) + (1,) * (w2.ndim - 2))
            else:
                arrays[conv2.input[1]] = w2 * scale.reshape(shape1)
            if act is not None and act.op_type == "Clip":
                caps[act.name] = caps.get(act.name, np.full(len(scale), _clip_cap(act, arrays), np.float32)) / scale
    after = _spread(pairs, arrays)
    changed = {name for conv1, _, conv2 in pairs for conv in (conv1, conv2) for name in conv.input[1:3]}
    for name, init in inits.items():
        if name in changed:
            init.CopyFrom(numpy_helper.from_array(arrays[name].astype(numpy_helper.to_array(init).dtype), name))
    _rewrite_clips(graph, caps)
    return Equalized(out, [(a.name, c.name) for a, _, c in pairs], len(caps), before, after)


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _pair(conv1, consumers, outputs, arrays):
    """(conv1, activation or None, conv2) when conv1 feeds conv2 alone, through at most one eligible activation."""
    w1 = arrays.get(conv1.input[1]) if len(conv1.input) > 1 else None
    if w1 is None or (len(conv1.input) > 2 and conv1.input[2] and conv1.input[2] not in arrays):
        return None
    if _group(conv1) != 1 and not (_group(conv1) == w1.shape[0] and w1.shape[1] == 1):
        return None  # a grouped (not depthwise) conv1: its output channels mix only within groups — fine, but rare
    tensor, act = conv1.output[0], None
    readers = consumers.get(tensor, [])
    if len(readers) != 1 or tensor in outputs:
        return None
    if readers[0].op_type in HOMOGENEOUS or _is_relu6(readers[0], arrays):
        act, tensor = readers[0], readers[0].output[0]
        readers = consumers.get(tensor, [])
        if len(readers) != 1 or tensor in outputs:
            return None
    conv2 = readers[0]
    if conv2.op_type != "Conv" or conv2.input[0] != tensor or conv2.input[1] not in arrays:
        return None
    w2 = arrays[conv2.input[1]]
    if _group(conv2) == 1 and w2.shape[1] == w1.shape[0]:
        return conv1, act, conv2
    if _group(conv2) == w1.shape[0] and w2.shape[1] == 1 and w2.shape[0] == w1.shape[0]:
        return conv1, act, conv2  # depthwise with multiplier 1
    return None


def _is_relu6(node, arrays) -> bool:
    """A Clip from 0 to a positive cap, its bounds initializers (shared between Clips is fine: they are read, and
    each rewritten Clip gets its own cap)."""
    if node.op_type != "Clip" or len(node.input) < 3 or node.input[1] not in arrays or node.input[2] not in arrays:
        return False
    low, high = arrays[node.input[1]], arrays[node.input[2]]
    return low.size == 1 and high.size == 1 and float(low) == 0.0 and float(high) > 0


def _clip_cap(node, arrays) -> float:
    return float(arrays[node.input[2]])


def _input_ranges(conv2, w2: np.ndarray) -> np.ndarray:
    """The largest absolute weight conv2 applies to each of its input channels."""
    if _group(conv2) == 1:
        return np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(w2.shape[1], -1).max(axis=1)
    return np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)


def _spread(pairs, arrays) -> float:
    spreads = []
    for conv1, _, _ in pairs:
        r = np.abs(arrays[conv1.input[1]]).reshape(arrays[conv1.input[1]].shape[0], -1).max(axis=1)
        spreads.append(float(r.max() / max(r.min(), EPS)))
    return float(np.median(spreads))


def _rewrite_clips(graph: onnx.GraphProto, caps: dict[str, np.ndarray]) -> None:
    """Each rescaled Clip(0, c) as Relu then Min with its per-channel cap [1, C, 1, 1] (the same function)."""
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        if node.name not in caps:
            graph.node.append(node)
            continue
        cap = caps[node.name].astype(np.float32).reshape(1, -1, 1, 1)
        cap_name, relu_out = f"{node.name}_cle_cap", f"{node.output[0]}_cle_relu"
        graph.initializer.append(numpy_helper.from_array(cap, cap_name))
        graph.node.append(onnx.helper.make_node("Relu", [node.input[0]], [relu_out], name=f"{node.name}_relu"))
        graph.node.append(onnx.helper.make_node("Min", [relu_out, cap_name], [node.output[0]], name=f"{node.name}_cap"))


__all__ = ["Equalized", "equalize"]
