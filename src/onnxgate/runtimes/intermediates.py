"""Run a model with its intermediate values exposed: the one "expose, then run" that localization, the roofline's
runtime shapes and INT8 sensitivity share.

A copy of the graph gets the asked-for values (default: every node output) as extra graph outputs — name-only
value infos, which onnx allows — and runs in onnxruntime with graph optimizations off (an exposed value must not
be fused away), built by ``open_session`` like every other session. ``prune`` drops the original outputs and every
node the exposed values do not need (localization bisects a graph that fails half-way). A model over protobuf's
2 GiB limit runs from a scratch file with external data.

Neither onnx nor onnxruntime is imported at module load (the bundle room imports this package without onnx).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .ort import open_session


def expose(model: Any, names: Iterable[str] | None = None, *, prune: bool = False):
    """A copy of ``model`` (an ``onnx.ModelProto``) with ``names`` (None: every node output) as graph outputs."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    wanted = list(dict.fromkeys(names if names is not None else (o for n in graph.node for o in n.output if o)))
    if prune:
        del graph.output[:]
        kept = needed_nodes(list(graph.node), set(wanted))
        del graph.node[:]
        graph.node.extend(kept)
    existing = {o.name for o in graph.output}
    graph.output.extend(onnx.ValueInfoProto(name=v) for v in wanted if v not in existing)
    return copy


def run_with_intermediates(model: Any, feed: Mapping[str, np.ndarray], names: Iterable[str] | None = None, *,
                           prune: bool = False, quiet: bool = False, what: str | None = None) -> dict[str, np.ndarray]:
    """Every exposed value (and, without ``prune``, the model's outputs) computed on ``feed``, by name.
    ``quiet``: onnxruntime logs nothing for a failing run (a caller bisecting expects failures and reports them
    as values). Raises what onnxruntime raises when the graph cannot load or run."""
    names = None if names is None else list(names)
    if prune and not names:
        return {}
    exposed = expose(model, names, prune=prune)
    with _session(exposed, what or "the model with its intermediate values exposed") as session:
        options = None
        if quiet:
            import onnxruntime as ort

            options = ort.RunOptions()
            options.log_severity_level = 4
        inputs = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        values = session.run(None, {k: v for k, v in feed.items() if k in inputs}, options)
        return dict(zip(outputs, values))


def needed_nodes(nodes: list, wanted: set[str]) -> list:
    """The nodes ``wanted`` depends on, in their order (values used inside If/Loop bodies count as inputs)."""
    needed, kept = set(wanted), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_inputs(node))
    return kept[::-1]


def _subgraph_inputs(node) -> set[str]:
    subgraphs = [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else attr.graphs)]
    return {name for sub in subgraphs for inner in sub.node for name in [*inner.input, *_subgraph_inputs(inner)]}


@contextlib.contextmanager
def _session(model, what: str):
    """A session with optimizations off, from memory when the model fits in one protobuf, else from a scratch
    file with external data (which empties ``model``, a throwaway copy)."""
    from .. import serde  # imports onnx: not at module load (see the module docstring)

    if serde.fits_in_bytes(model):
        yield open_session(model, what=what, opt_level="disable")
        return
    with serde.temporary_file(model, "intermediates") as path:
        yield open_session(path, what=what, opt_level="disable")
