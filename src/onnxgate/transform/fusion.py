"""Transformer fusions as verified passes: attention, LayerNorm and GELU patterns rewritten into onnxruntime's fused
contrib operators (``com.microsoft``: SkipLayerNormalization, BiasGelu, FastGelu, EmbedLayerNormalization, Attention).

Two maintained tools do the rewriting, each a pass of its own (verified, rolled back on its own):

* ``onnxruntime`` — onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``) with
  the model type (``bert``, ``gpt2``, ``vit``), head count and hidden size **detected** from the graph, or from the
  ``hf:`` config the export recorded (``onnxgate.model.model_type``), never guessed (``detect``). It runs its Python
  fusions only (``opt_level=0``): onnxruntime's own session-time rewrites stay with ``ort-optimize`` and the
  benchmark's optimization levels.
* ``onnxscript`` — onnxscript's ``ort_fusions`` (``optimize_for_ort``), written for what the dynamo exporter emits:
  on opset-23 exports it finds the residual Add + LayerNormalization (SkipLayerNormalization) and MatMul bias + GELU
  (BiasGelu) that onnxruntime's optimizer misses there.

Neither tool fuses the ONNX ``Attention`` operator (opset 23) that the dynamo exporter writes for
``scaled_dot_product_attention`` into onnxruntime's packed-QKV ``Attention``: onnxruntime runs it with its own CPU
kernel. A fused file uses onnxruntime-only operators (``details["ort_only"]``); OpenVINO and other runtimes cannot
load it, so the float file stays the portable one.

A graph without attention is not a transformer: ``optimize`` adds no fusion pass for it (``fusion_passes``), and a
fusion pass given one leaves it unchanged and says why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx

from .passes import PassResult, copy_model, graph_changed

TOOLS = ("onnxruntime", "onnxscript")
MODEL_TYPES = ("bert", "gpt2", "vit")
# Hugging Face ``model_type`` -> onnxruntime optimizer model type (the architectures its fusions were written for).
HF_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
                  "camembert": "bert", "albert": "bert", "mpnet": "bert", "deberta": "bert", "gpt2": "gpt2",
                  "vit": "vit", "deit": "vit", "dinov2": "vit", "beit": "vit"}
_ATTENTION = {("", "Attention"), ("ai.onnx", "Attention"), ("com.microsoft", "Attention"),
              ("com.microsoft", "MultiHeadAttention"), ("com.microsoft", "GroupQueryAttention")}
_LAYER_NORMS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"}


@dataclass(frozen=True)
class TransformerGraph:
    """What ``detect`` found: the optimizer's model type, the head count and hidden size, and how each was told."""

    model_type: str
    num_heads: int
    hidden_size: int
    attention_nodes: int
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "num_heads": self.num_heads, "hidden_size": self.hidden_size,
                "attention_nodes": self.attention_nodes, "evidence": list(self.evidence)}


@dataclass
class Detection:
    graph: TransformerGraph | None
    reason: str | None = None  # why it is not a transformer (or why its sizes could not be told)


def detect(model: onnx.ModelProto) -> Detection:
    """Is ``model`` a transformer the fusions apply to, and with which parameters? Attention is found as an attention
    operator (ONNX opset 23, or onnxruntime's) or as a Softmax over a 4-D score tensor; heads from the operator's
    ``q_num_heads``, the shape of its query (shape inference) or its ``scale`` (1/sqrt(head size)); the hidden size
    from the LayerNormalization scales."""
    attention = [n for n in model.graph.node if (n.domain, n.op_type) in _ATTENTION]
    shapes = _shapes(model) if attention or any(n.op_type == "Softmax" for n in model.graph.node) else {}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax" and len(shapes.get(n.input[0], ())) == 4]
    if not attention and not softmax:
        return Detection(None, "no attention operator and no softmax over 4-D attention scores: not a transformer")
    evidence: list[str] = []
    hidden = _hidden_size(model, evidence)
    heads = _num_heads(attention, softmax, shapes, hidden, evidence)
    if not heads or not hidden or hidden % heads:
        return Detection(None, f"attention found, but its head count ({heads or 'unknown'}) and hidden size "
                               f"({hidden or 'unknown'}) could not be told from the graph")
    model_type = _model_type(model, attention, evidence)
    return Detection(TransformerGraph(model_type, heads, hidden, len(attention) or len(softmax), tuple(evidence)))


@dataclass
class TransformerFusion:
    """A pass: fuse the transformer patterns of the model it is given with ``tool`` (see the module docstring)."""

    tool: str = "onnxruntime"
    detected: dict[str, Any] = field(default_factory=dict)  # the last detection, for reports

    @property
    def name(self) -> str:
        return f"fuse-transformer:{self.tool}"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        found = detect(model)
        if found.graph is None:
            return PassResult(model, False, self.name, {"skipped": found.reason})
        info = found.graph
        self.detected = info.to_dict()
        before = Counter(n.op_type for n in model.graph.node)
        with _quiet():
            out = _ort_fuse(model, info) if self.tool == "onnxruntime" else _onnxscript_fuse(model)
        after = Counter(n.op_type for n in out.graph.node)
        fused = {op: after[op] - before.get(op, 0) for op in sorted(after) if after[op] > before.get(op, 0)}
        domains = sorted({n.domain for n in out.graph.node if n.domain not in ("", "ai.onnx")})
        details = {"tool": self.tool, **info.to_dict(), "fused": fused, "custom_domains": domains,
                   "ort_only": bool(domains)}
        if domains:
            details["note"] = (f"uses onnxruntime-only operators ({', '.join(domains)}): the fused model runs only in "
                               "onnxruntime")
        return PassResult(out, graph_changed(model, out), self.name, details)


def available_tools() -> tuple[str, ...]:
    """The fusion tools importable here (onnxscript comes with the torch extra)."""
    import importlib.util

    return tuple(t for t in TOOLS if t == "onnxruntime" or importlib.util.find_spec("onnxscript") is not None)


def fusion_passes(model_path) -> list[TransformerFusion]:
    """One pass per available tool when the file at ``model_path`` is a transformer (``detect``), else none: a
    conv net's transform report gets no fusion records."""
    from .. import serde

    if detect(serde.load(model_path, load_external_data=False)).graph is None:
        return []
    return [TransformerFusion(tool) for tool in available_tools()]


def _ort_fuse(model: onnx.ModelProto, info: TransformerGraph) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    # the optimizer rewrites the proto it is given in place: give it a copy, so the change can be judged
    optimized = optimize_model(copy_model(model), model_type=info.model_type, num_heads=info.num_heads,
                               hidden_size=info.hidden_size, opt_level=0, use_gpu=False)
    return optimized.model


def _onnxscript_fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    fused, _counts = optimize_for_ort(ir.from_proto(model))
    return ir.to_proto(fused)


@contextlib.contextmanager
def _quiet():
    """The tools print progress on stdout (which would corrupt ``--json``) and log shape-inference failures that
    onnxgate's verification makes moot."""
    names = ("onnxruntime.transformers", "onnxscript", "onnx_ir", "fusion_base", "onnx_model", "optimizer")
    loggers = [logging.getLogger(n) for n in names] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 10)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Value name -> inferred shape (dims as ints or names), from ONNX shape inference on the graph only."""
    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(model)
    # weights carry their shape in dims and shape inference does not need their data; small tensors (shape
    # constants of Reshape) stay, data propagation reads them
    for init in graph_only.graph.initializer:
        if math.prod(init.dims) <= 64:
            continue
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.DEFAULT
        init.ClearField("external_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(graph_only, data_prop=True).graph
    except Exception:  # an unreadable graph has no shapes; detection falls back to attributes
        inferred = graph_only.graph
    shapes: dict[str, tuple] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                       for d in value.type.tensor_type.shape.dim)
    return shapes


def _hidden_size(model: onnx.ModelProto, evidence: list[str]) -> int | None:
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    sizes = Counter(inits[n.input[1]][-1] for n in model.graph.node
                    if n.op_type in _LAYER_NORMS and len(n.input) > 1 and len(inits.get(n.input[1], [])) == 1)
    if not sizes:
        return None
    hidden, count = sizes.most_common(1)[0]
    evidence.append(f"hidden size {hidden}: the scale of {count} layer normalizations")
    return int(hidden)


def _num_heads(attention, softmax, shapes, hidden, evidence: list[str]) -> int | None:
    for node in attention:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for key in ("q_num_heads", "num_heads"):
            if attrs.get(key):
                evidence.append(f"{attrs[key]} heads: the {key} of {node.op_type} node '{node.name}'")
                return int(attrs[key])
        query = shapes.get(node.input[0], ())
        if len(query) == 4 and isinstance(query[1], int) and query[1] > 0:
            evidence.append(f"{query[1]} heads: the query of {node.op_type} node '{node.name}' is {list(query)}")
            return int(query[1])
        if attrs.get("scale") and hidden:
            head_size = round(1.0 / float(attrs["scale"]) ** 2)
            if head_size and math.isclose(float(attrs["scale"]), 1 / math.sqrt(head_size), rel_tol=1e-4) \
                    and hidden % head_size == 0:
                evidence.append(f"{hidden // head_size} heads: the scale {attrs['scale']:.4g} of {node.op_type} node "
                                f"'{node.name}' is 1/sqrt({head_size})")
                return hidden // head_size
    for node in softmax:
        scores = shapes[node.input[0]]
        if isinstance(scores[1], int) and scores[1] > 0:
            evidence.append(f"{scores[1]} heads: the attention scores of Softmax '{node.name}' are {list(scores)}")
            return int(scores[1])
    return None


def _model_type(model: onnx.ModelProto, attention, evidence: list[str]) -> str:
    recorded = {p.key: p.value for p in model.metadata_props}.get("onnxgate.model.model_type")
    if recorded in HF_MODEL_TYPES:
        evidence.append(f"model type {HF_MODEL_TYPES[recorded]}: the Hugging Face config says '{recorded}'")
        return HF_MODEL_TYPES[recorded]
    images = [i.name for i in model.graph.input if len(i.type.tensor_type.shape.dim) == 4
              and i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    if images and any(n.op_type == "Conv" for n in model.graph.node):
        evidence.append(f"model type vit: image input '{images[0]}' and a convolution (patch embedding)")
        return "vit"
    causal = [n.name for n in attention if any(a.name in ("is_causal", "unidirectional") and a.i for a in n.attribute)]
    causal += [n.name for n in model.graph.node if n.op_type == "Trilu"]
    if causal:
        evidence.append(f"model type gpt2: causal attention ('{causal[0]}')")
        return "gpt2"
    producers = {o: n for n in model.graph.node for o in n.output}
    packed = [n.name for n in attention if any(_through_layout(producers, i) == "Split" for i in n.input[:3])]
    if packed:
        evidence.append(f"model type gpt2: query, key and value split from one packed projection ('{packed[0]}')")
        return "gpt2"
    evidence.append("model type bert: bidirectional attention with separate query, key and value projections")
    return "bert"


def _through_layout(producers: dict, name: str) -> str | None:
    """The op type that produced ``name``, looking through Reshape/Transpose (head splitting)."""
    for _ in range(4):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type not in ("Reshape", "Transpose", "Squeeze", "Unsqueeze"):
            return node.op_type
        name = node.input[0]
    return None
