"""Layer-wise localization: when parity fails, name the first PyTorch module whose output diverges.

Forward hooks capture every submodule's output; each module is mapped to the ONNX nodes it became, the last value
of that node set is exposed as an extra graph output, and both are compared in execution order. Hooks fire when a
module *finishes*, so children precede their parents and the first failure is the innermost culprit. Mapping:
dynamo exports carry ``pkg.torch.onnx.name_scopes`` node metadata (``['', 'layer1', 'layer1.0', 'op']``: qualified
module names between the first and the last entry); TorchScript node names are scope paths
(``/layer1/layer1.0/conv1/Conv``) whose segments are qualified names from the last non-numeric atom on
(``mid.blocks.0`` -> ``blocks.0``), ``_1`` added for a repeated call, resolved one level at a time.

Fusion across module boundaries must not read as a divergence: a module may own no node (it is unmatched);
TorchScript folds an eval BatchNorm into the Conv before it under the Conv's name, so a value that fails against
its module but matches the next, unmatched, module is that fusion; the dynamo optimizer may merge a module's last op
into a later node (``FuseSuccessiveRelu``), so such rewritten consumers are tried too. Values frozen by tracing may
make onnxruntime *fail* rather than compute a wrong value; then pruned prefixes of the module list are run alone to
find the first module that does not run. Torch is imported inside functions only.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import serde
from ..errors import BadInputError, first_line, user_code
from ..runtimes.intermediates import run_with_intermediates
from . import engine
from .compare import OutputComparison, sci
from .tolerance import Tolerance

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
RULE_KEY = "pkg.onnxscript.rewriter.rule_name"
MAX_NODES_LISTED = 10
MAX_CANDIDATES = 6  # values tried per module, latest first: the last node's output is almost always the one


@dataclass
class LayerDivergence:
    """One matched module: its PyTorch output against the ONNX value that stands for it."""

    module: str
    module_type: str
    onnx_value: str
    onnx_nodes: list[str]
    max_abs_err: float | None
    max_rel_err: float | None
    passed: bool
    note: str | None = None


@dataclass
class LocalizationReport:
    strategy: str  # "dynamo-metadata" | "torchscript-names" | "none"
    layers: list[LayerDivergence]
    first_divergent: LayerDivergence | None
    matched: int
    unmatched_modules: list[str]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        first = self.first_divergent
        if first is not None:
            what = f"max abs err {sci(first.max_abs_err)}" if first.max_abs_err is not None else first.note
            nodes = ", ".join(first.onnx_nodes[-3:]) or "-"
            return f"first divergence at module '{first.module}' ({first.module_type}): {what}; ONNX nodes: {nodes}"
        if not self.layers:
            return f"no layer-wise localization: {self.note}"
        text = f"all {self.matched} matched modules agree with PyTorch ({self.strategy})"
        return f"{text}; {self.note}" if self.note else text


@dataclass
class _Capture:
    module_type: str
    outputs: list[np.ndarray] = field(default_factory=list)  # one per call
    n_tensors: int = 1  # tensors in the output; with more than one only the first is compared


def localize(module, onnx_path: str | Path, feed: dict[str, np.ndarray], *, input_names: list[str] | None = None,
             tolerance: Tolerance | None = None, max_layers: int = 500) -> LocalizationReport:
    """Compare every PyTorch submodule's output with its ONNX counterpart on ``feed``; see the module docstring.

    ``input_names`` orders the feed for ``forward()`` (default: the ONNX graph inputs). ``tolerance`` defaults to
    the per-dtype default of the comparer (``compare.compare_outputs``). At most ``max_layers`` modules are compared, in execution order.
    """
    model = serde.load(onnx_path)  # external data resolved relative to the file, never outside its folder
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    names = list(input_names) if input_names else [i.name for i in graph.input if i.name not in initializers]
    captured, module_names = _capture_module_outputs(module, feed, names)
    strategy, owners = _map_nodes(graph, module_names)
    unmatched = [name for name in captured if name not in owners]
    plans = [(name, owners[name]) for name in captured if name in owners]
    if not plans:
        return LocalizationReport("none", [], None, 0, unmatched, note="no ONNX node maps to an executed module "
                                  "(neither dynamo scope metadata nor TorchScript scope names)")
    notes = [f"only the first {max_layers} of {len(plans)} matched modules were compared"] * (len(plans) > max_layers)
    plans = plans[:max_layers]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for value in node.input:
            consumers.setdefault(value, []).append(index)
    candidates = {name: _candidates(graph, nodes) for name, nodes in plans}
    rewritten = {name: _rewritten_consumers(graph, nodes, candidates[name], consumers) for name, nodes in plans}
    values, failed_at, error = _run_values(model, [candidates[n] + rewritten[n] for n, _ in plans], feed)
    if failed_at is None and error is not None:
        notes.append(f"onnxruntime fails outside every module: {error}")
    order, layers = list(captured), []
    for index, (name, nodes) in enumerate(plans):
        node_names = [graph.node[i].name or f"{graph.node[i].op_type}#{i}" for i in nodes[:MAX_NODES_LISTED]]
        row = LayerDivergence(name, captured[name].module_type, (candidates[name] or [""])[0], node_names,
                              None, None, False)
        if failed_at is not None and index >= failed_at:
            row.note = (f"fails to run in onnxruntime: {error}" if index == failed_at
                        else f"not run: onnxruntime fails at module '{plans[failed_at][0]}'")
        else:
            later = itertools.takewhile(lambda n: n not in owners, order[order.index(name) + 1:])
            _compare_row(row, captured[name], candidates[name], rewritten[name], [(n, captured[n]) for n in later],
                         values, tolerance, graph, nodes)
        layers.append(row)
    first = next((row for row in layers if not row.passed), None)
    return LocalizationReport(strategy, layers, first, len(layers), unmatched, "; ".join(notes) or None)


def _capture_module_outputs(module, feed: dict[str, np.ndarray], input_names: list[str]):
    """Run ``module`` (eval mode, no autograd, as the parity reference does) with a forward hook on every
    submodule. Returns the first tensor of each output per call, ordered by first completion, and all module names."""
    import torch

    from ..runtimes.torch_runner import TorchRunner, _to_numpy

    was_training = getattr(module, "training", False)
    runner = TorchRunner(module, input_names=input_names)  # eval mode, CPU, positional-or-keyword decision
    if missing := [n for n in input_names if n not in feed]:
        raise BadInputError(f"The feed has no value for input(s) {', '.join(missing)}.",
                            hint=f"The model's inputs are: {', '.join(input_names)}.")
    captured: dict[str, _Capture] = {}

    def hook_for(name: str, sub):
        def hook(_module, _args, output):
            if tensors := list(_tensors(output, torch.Tensor)):
                entry = captured.setdefault(name, _Capture(type(sub).__name__))
                entry.outputs.append(np.array(_to_numpy(tensors[0]), copy=True))  # later in-place ops must not leak
                entry.n_tensors = len(tensors)
        return hook

    named = [(name, sub) for name, sub in runner.module.named_modules() if name]
    handles = [sub.register_forward_hook(hook_for(name, sub)) for name, sub in named]
    try:
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names]
        with torch.no_grad(), user_code("running the PyTorch reference with layer hooks"):
            runner.module(**dict(zip(input_names, args))) if runner.by_keyword else runner.module(*args)
    finally:
        for handle in handles:
            handle.remove()
        if was_training:
            with contextlib.suppress(NotImplementedError):
                module.train()
    return captured, {name for name, _ in named}


def _tensors(obj, tensor_type):
    if isinstance(obj, tensor_type):
        yield obj
    elif isinstance(obj, (tuple, list)) or (hasattr(obj, "items") and hasattr(obj, "keys")):  # dicts, ModelOutput
        for item in obj.values() if hasattr(obj, "keys") else obj:
            yield from _tensors(item, tensor_type)


def _map_nodes(graph, module_names: set[str]) -> tuple[str, dict[str, list[int]]]:
    """Module name -> indices of the nodes it (or a descendant) became, in graph (topological) order."""
    by_unqualified: dict[str, list[str]] = {}
    for name in module_names:
        by_unqualified.setdefault(_unqualified(name), []).append(name)
    owners: dict[str, list[int]] = {}
    dynamo = False
    for index, node in enumerate(graph.node):
        if (scopes := _dynamo_scopes(node)) is not None:
            dynamo = True
            chain = [s for s in (re.sub(r"@\d+$", "", s) for s in scopes[1:-1]) if s in module_names]
        else:
            chain = _torchscript_chain(node.name, module_names, by_unqualified)
        for name in chain:
            owners.setdefault(name, []).append(index)
    return ("dynamo-metadata" if dynamo else "torchscript-names"), owners


def _dynamo_scopes(node) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            with contextlib.suppress(ValueError, SyntaxError):
                if isinstance(scopes := ast.literal_eval(prop.value), list):
                    return [str(s) for s in scopes]
    return None


def _unqualified(name: str) -> str:
    """The TorchScript exporter's scope segment for a module: its qualified name from the last non-numeric atom."""
    atoms = name.split(".")
    last = max((i for i, atom in enumerate(atoms) if not atom.isnumeric()), default=0)
    return ".".join(atoms[last:])


def _torchscript_chain(node_name: str, module_names: set[str], by_unqualified: dict[str, list[str]]) -> list[str]:
    """``/layer1/layer1.0/conv1/Conv`` -> ``['layer1', 'layer1.0', 'layer1.0.conv1']``; stops at an unknown segment."""
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0]:
        return []
    if parts[1] == "model" and "model" not in module_names:  # export/strategies._positional's wrapper around the model
        parts = ["", *parts[2:]]
    chain, current = [], ""
    for segment in parts[1:-1]:
        resolved = None
        for seg in dict.fromkeys([segment, re.sub(r"_\d+$", "", segment)]):  # "lin_1": the second call of "lin"
            if (direct := f"{current}.{seg}" if current else seg) in module_names:
                resolved = direct
            elif inside := [n for n in by_unqualified.get(seg, []) if not current or n.startswith(current + ".")]:
                resolved = min(inside, key=len)
            if resolved:
                break
        if resolved is None:
            break
        chain.append(resolved)
        current = resolved
    return chain


def _candidates(graph, nodes: list[int]) -> list[str]:
    """The module's values worth exposing, latest node first, a node's outputs in their own order (Dropout's output
    before its mask). The torch output's shape picks among them at runtime: static shapes are not trusted, since
    tracing may have frozen them, which is exactly what is being hunted."""
    latest = (v for i in reversed(nodes) for v in graph.node[i].output if v)
    return list(dict.fromkeys(itertools.islice(latest, MAX_CANDIDATES)))


def _rewritten_consumers(graph, nodes: list[int], candidates: list[str], consumers) -> list[str]:
    """Outputs of optimizer-rewritten nodes outside the module that consume its values (see the module docstring)."""
    own = set(nodes)
    found = [graph.node[i].output[0] for v in candidates for i in consumers.get(v, [])
             if i not in own and graph.node[i].output and any(p.key == RULE_KEY for p in graph.node[i].metadata_props)]
    return [v for v in dict.fromkeys(found) if v and v not in candidates][:MAX_CANDIDATES]


def _run_values(model, candidate_lists: list[list[str]], feed):
    """Run once with every candidate exposed. If that fails, find the first module whose values cannot be
    computed: a pruned run of the modules [0, k) needs a node set that grows with k, so bisect on k.
    Returns (values, index of the first module that fails or None, error text or None)."""
    everything = [v for values in candidate_lists for v in values]
    try:
        return _run(model, everything, feed, prune=False), None, None
    except Exception as exc:
        error = _first_line(exc)
    try:  # only the modules' values: does the failure lie inside a module at all?
        return _run(model, everything, feed, prune=True), None, error
    except Exception as exc:
        error = _first_line(exc)
    good, bad, values = 0, len(candidate_lists), {}
    while bad - good > 1:
        mid = (good + bad) // 2
        try:
            values, good = _run(model, [v for vs in candidate_lists[:mid] for v in vs], feed, prune=True), mid
        except Exception as exc:
            bad, error = mid, _first_line(exc)
    return values, good, error


def _run(model, outputs: list[str], feed, *, prune: bool) -> dict[str, np.ndarray]:
    """``model`` run with ``outputs`` exposed (``runtimes.intermediates``); ``prune`` drops the original outputs and
    every node they do not need. Failures are expected while bisecting: onnxruntime logs nothing for them."""
    return run_with_intermediates(model, feed, outputs, prune=prune, quiet=True)


def _first_line(exc: BaseException) -> str:
    """A one-line error: for an onnxruntime kernel failure, the node and its message without C++ source noise."""
    text = first_line(exc, limit=10_000)
    if match := re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", text):
        message = re.sub(r"^\S+:\d+ .*? was false\. ", "", match.group(3))
        text = f"{match.group(1)} node '{match.group(2)}': {message}"
    return text[:300]


def _compare_row(row: LayerDivergence, capture: _Capture, candidates: list[str], rewritten: list[str],
                 followers: list[tuple[str, _Capture]], values, tolerance, graph, nodes: list[int]) -> None:
    """Compare the latest candidate with the torch output's shape (and dtype) with every call's output (a reused
    module's value may be any call's); before declaring a failure, try the fusions of the module docstring.
    ``followers`` are the modules run right after this one that own no ONNX node."""
    present = [v for v in candidates if v in values]
    shapes, dtypes = {r.shape for r in capture.outputs}, {r.dtype for r in capture.outputs}
    chosen = (next((v for v in present if values[v].shape in shapes and values[v].dtype in dtypes), None)
              or next((v for v in present if values[v].shape in shapes), None))
    if not present or (chosen is None and capture.n_tensors > 1):
        row.passed = True
        row.note = "not compared: no ONNX value " + ("has the shape of its first output" if present else "computed")
        return
    row.onnx_value = chosen = chosen or present[0]
    comp, call = _best(capture.outputs, values[chosen], tolerance)
    notes = [f"called {len(capture.outputs)} times; compared with call {call + 1}"] * (len(capture.outputs) > 1)
    for follower, follower_capture in ([] if comp.passed else followers):
        if (fused := _best(follower_capture.outputs, values[chosen], tolerance)[0]).passed:
            comp = fused
            notes.append(f"the exporter fused '{follower}' ({follower_capture.module_type}) into this module; "
                         "compared with its output")
            break
    for value in ([] if comp.passed else [v for v in rewritten if v in values]):
        if (merged := _best(capture.outputs, values[value], tolerance)[0]).passed:
            comp, row.onnx_value = merged, value
            notes.append("the ONNX optimizer merged its last op into a later node; compared with that node's output")
            break
    if rule := next((p.value for i in nodes for p in graph.node[i].metadata_props
                     if p.key == RULE_KEY and row.onnx_value in graph.node[i].output), None):
        notes.append(f"ONNX value produced by optimizer rule {rule}")
    row.max_abs_err, row.max_rel_err, row.passed = comp.max_abs_err, comp.max_rel_err, comp.passed
    row.note = "; ".join([comp.reason or "mismatch"] * (not comp.passed) + notes) or None


def _best(references: list[np.ndarray], got: np.ndarray, tolerance) -> tuple[OutputComparison, int]:
    """The comparison with a call output that passes, else the one with the smallest error."""
    comps = [engine.compare_value(ref, got, tolerance) for ref in references]
    best = min(range(len(comps)), key=lambda i: (not comps[i].passed, comps[i].max_abs_err is None,
                                                 comps[i].max_abs_err or 0.0))
    return comps[best], best
