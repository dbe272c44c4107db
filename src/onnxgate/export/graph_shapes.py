"""Honest graph shapes: the dims a graph *declares* for its inputs, outputs and intermediate values (``value_info``),
held against the shapes onnxruntime actually produces.

An exporter can get the declarations wrong while the computation is right: the dynamo exporter declares an LSTM
encoder's output as ``B x 7 x 16`` (the traced length) although the graph computes ``B x T x 16`` at every T.
onnxruntime then warns ("Expected shape from model of {-1,7,16} does not match actual shape of {3,13,16}"), and
TensorRT, OpenVINO and downstream tools, which trust declared shapes, allocate or specialize for the wrong size.

The audit runs the graph at the traced sizes and, one dynamic dim at a time, at another size of that dim (the off-
trace size verification probes first), with every intermediate value exposed as an output. A declared static size
that changes between runs, or a declared dim name whose size does not follow that dim, is wrong. When the observed
size follows exactly one dynamic dim, the declaration is rewritten to that dim's name; otherwise (``2*T``, ``T-1``)
it is cleared to unknown, which is true. Every rewrite is reported; the ladder re-verifies the rewritten file.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import serde
from ..errors import first_line
from ..spec import Dim, InputSpec

# Intermediate values are observed only while they fit this budget per run (estimated from their declared shapes
# at the probed sizes): a model whose activations are larger is audited on its inputs and outputs only.
VALUE_INFO_BUDGET_BYTES = 1 << 30
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


@dataclass
class DimFix:
    """One wrong declaration: ``tensor`` (a graph input/output or intermediate value) declared ``declared`` at
    ``axis``, but onnxruntime produced ``observed`` (one size per run, in the order of ``ShapeAudit.runs``).
    ``rewritten_to``: the dim name it now carries, or None when cleared to unknown. ``axis`` -1: wrong rank."""

    tensor: str
    kind: str  # "input" | "output" | "value_info"
    axis: int
    declared: int | str | None
    observed: list[int | None]
    rewritten_to: str | None

    def describe(self, runs: list[dict[str, int]]) -> str:
        where = f"{'the graph ' + self.kind if self.kind != 'value_info' else 'the intermediate value'} '{self.tensor}'"
        if self.axis < 0:
            return f"{where} declares a shape of the wrong rank; cleared"
        contradicting = [(o, r) for o, r in zip(self.observed, runs)
                         if o != (r.get(self.declared) if isinstance(self.declared, str) else self.declared)]
        seen = ", ".join(f"{o} at {_label(r, runs[0])}" for o, r in contradicting)
        declared = f"the static {self.declared}" if isinstance(self.declared, int) else f"'{self.declared}'"
        now = f"rewritten to the symbolic {self.rewritten_to}" if self.rewritten_to else "cleared to unknown"
        return f"{where} declares axis {self.axis} as {declared}, but onnxruntime produced {seen}: {now}"


@dataclass
class ShapeAudit:
    runs: list[dict[str, int]] = field(default_factory=list)  # the sizes of each run that completed
    fixes: list[DimFix] = field(default_factory=list)
    tensors_checked: int = 0
    note: str | None = None  # what could not be checked, and why

    def to_dict(self) -> dict:
        return {"runs": self.runs, "fixes": [asdict(f) for f in self.fixes], "tensors_checked": self.tensors_checked,
                "note": self.note}

    def summary(self) -> list[str]:
        return [f.describe(self.runs) for f in self.fixes]


def _label(sizes: dict[str, int], traced: dict[str, int]) -> str:
    moved = [f"{k}={v}" for k, v in sizes.items() if traced.get(k) != v]
    return ", ".join(moved) or "the traced sizes"


def declared_shape(value) -> list[int | str | None] | None:
    """A ValueInfoProto's declared dims (int, dim name, or None for unknown); None when it declares no shape."""
    t = value.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField("dim_param") else None
            for d in t.tensor_type.shape.dim]


def probe_runs(dims: dict[str, Dim], skip: tuple[str, ...] = ()) -> list[dict[str, int]]:
    """The traced sizes, then per dynamic dim (not in ``skip``) the traced sizes with that dim moved to its off-
    trace size (what verification probes first), or to twice its traced size when that is the only size left."""
    from ..verify.shapes import off_trace_sizes

    traced = {n: d.example or 2 for n, d in dims.items()}
    runs = [traced]
    for name, dim in dims.items():
        if name in skip:
            continue
        candidates = [*off_trace_sizes(dim), 2 * traced[name]]
        size = next((s for s in candidates if s != traced[name] and dim.contains(s)), None)
        if size is not None:
            runs.append({**traced, name: size})
    return runs


@contextmanager
def _probe_model(model, names: list[str]):
    """``model`` made a probe for the block: its outputs are its own plus ``names`` (intermediates), and no shape
    is declared (onnxruntime would otherwise warn about, or plan with, the very declarations under audit). Changed
    in place, not copied (a copy doubles a large model's memory), and restored when the block ends."""
    import onnx

    graph = model.graph
    def copies(values):  # detached copies: what a repeated field's deletion leaves of its elements is undefined
        return [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in values]

    value_info, outputs = copies(graph.value_info), copies(graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in value_info}
    try:
        del graph.value_info[:]
        for out in graph.output:
            out.type.tensor_type.ClearField("shape")
        for name in names:
            graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
        yield model
    finally:
        del graph.output[:]
        graph.output.extend(outputs)
        del graph.value_info[:]
        graph.value_info.extend(value_info)


def _intermediates(model, runs: list[dict[str, int]]) -> tuple[list[str], str | None]:
    """The value_info tensors to observe (produced by a node of the main graph, with a declared tensor shape), or
    none with a note when their estimated size at the largest probed sizes exceeds the budget."""
    produced = {o for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    names, total = [], 0
    largest = {k: max(r[k] for r in runs) for k in runs[0]} if runs else {}
    for v in model.graph.value_info:
        shape = declared_shape(v)
        if shape is None or v.name not in produced or v.name in outputs:
            continue
        names.append(v.name)
        count = 1
        for d in shape:
            count *= d if isinstance(d, int) else largest.get(d, 1) if isinstance(d, str) else 1
        total += count * _ITEMSIZE.get(v.type.tensor_type.elem_type, 8)
    if total > VALUE_INFO_BUDGET_BYTES:
        return [], (f"intermediate values not checked: about {total / 2**30:.1f} GiB per run, over the "
                    f"{VALUE_INFO_BUDGET_BYTES / 2**30:.0f} GiB budget")
    return names, None


def observe(model, specs: list[InputSpec], runs: list[dict[str, int]], names: list[str], data_dir: Path | None = None):
    """Run ``model`` (with ``names`` exposed) once per size assignment -> (completed runs, {tensor: [shape per
    completed run]}) for its inputs, outputs and ``names``. A run onnxruntime refuses is left out."""
    from ..runtimes.ort import VERIFY_OPT_LEVEL, OrtRunner
    from ..verify.inputs import random_inputs

    with _probe_model(model, names) as probe:
        if data_dir is not None:  # weights left on disk: the probe sits beside them and reads the same data file
            with serde.temporary_sibling(probe, data_dir, "shapes-probe") as path:
                runner = OrtRunner(path, opt_level=VERIFY_OPT_LEVEL, what="the shape probe")
                return _observe_with(runner, specs, runs, random_inputs)
        if in_memory(probe):
            runner = OrtRunner(probe, opt_level=VERIFY_OPT_LEVEL, what="the shape probe")
            return _observe_with(runner, specs, runs, random_inputs)
        # Moves the tensors out of ``model`` (see audit_file): a ViT-B's probe session then needs 0.35 GB more
        # instead of 1 GB (the proto, its serialized bytes and onnxruntime's copy), in half the time.
        with serde.temporary_file(probe, "shapes", external=True) as path:
            runner = OrtRunner(path, opt_level=VERIFY_OPT_LEVEL, what="the shape probe")
            return _observe_with(runner, specs, runs, random_inputs)


IN_MEMORY_BYTES = 32 * 2**20  # weights above this go to the probe's session through a file with external data


def in_memory(model) -> bool:
    """Whether the shape probe hands ``model`` to onnxruntime as bytes (small models), or through a scratch file
    with external data, which moves its tensors out of the in-memory model."""
    return serde.tensor_bytes(model) <= IN_MEMORY_BYTES and serde.fits_in_bytes(model)


def _observe_with(runner, specs, runs, random_inputs):
    done, shapes = [], {}
    for sizes in runs:
        feed = random_inputs(specs, sizes, seed=0)
        try:
            seen = _run_shapes(runner, feed)
        except Exception:  # a size this graph cannot run at: no evidence about declarations
            continue
        done.append(sizes)
        for name, shape in [*((k, tuple(np.shape(v))) for k, v in feed.items()), *seen.items()]:
            shapes.setdefault(name, []).append(shape)
    return done, shapes


def _run_shapes(runner, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Output name -> shape of one run. With an onnxruntime session the outputs stay onnxruntime's ``OrtValue``s and
    only their shapes are read: every intermediate a probe exposes is never copied into a numpy array (a ViT-B/16's
    exposed activations at the probed batch are about a gigabyte)."""
    session = getattr(runner, "session", None)
    if session is None or not hasattr(session, "run_with_ort_values"):
        return {k: tuple(np.shape(v)) for k, v in runner.run(feed).items()}
    import onnxruntime as ort

    wanted = {i.name for i in session.get_inputs()}
    values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feed.items() if k in wanted}
    outputs = session.run_with_ort_values(None, values)
    return {o.name: tuple(v.shape()) for o, v in zip(session.get_outputs(), outputs)}


def _judge_dim(declared, observed: list[int], runs: list[dict[str, int]]) -> tuple[bool, str | None]:
    """(wrong?, the dim name the observations follow, if exactly one) for one declared dim."""
    follows = [n for n in runs[0] if all(o == r[n] for o, r in zip(observed, runs))]
    if len(runs) > 1:  # with one run every dim that happens to have that size "follows"
        varied = [n for n in follows if len({r[n] for r in runs}) > 1]
    else:
        varied = []
    name = varied[0] if len(varied) == 1 else None
    if isinstance(declared, int):
        return any(o != declared for o in observed), name
    if isinstance(declared, str) and declared in runs[0]:
        return any(o != r[declared] for o, r in zip(observed, runs)), name
    return False, None  # unknown, or a name that is not one of ours (s0, 2*T): nothing to hold it against


def audit_model(model, specs: list[InputSpec], dims: dict[str, Dim], *, skip: tuple[str, ...] = (),
                data_dir: Path | None = None) -> ShapeAudit:
    """Compare ``model``'s declared dims with the shapes onnxruntime produces (see the module docstring). ``skip``:
    dims not varied (accepted as static). Leaves ``model``'s declarations as they were (``apply_fixes`` changes
    them); a model over 2 GiB is probed through a temporary file, which moves its tensors out of it."""
    runs = probe_runs(dims, skip)
    names, note = _intermediates(model, runs)
    audit = ShapeAudit(note=note)
    try:
        audit.runs, shapes = observe(model, specs, runs, names, data_dir)
    except Exception as exc:  # the probe would not load: say so, change nothing
        audit.note = f"shapes not checked: the probe model did not load ({first_line(exc, 200)})"
        return audit
    if not audit.runs:
        audit.note = "shapes not checked: the graph ran at none of the probed sizes"
        return audit
    graph = model.graph
    kinds = [("input", v) for v in graph.input] + [("output", v) for v in graph.output] + [
        ("value_info", v) for v in graph.value_info if v.name in set(names)]
    for kind, value in kinds:
        declared, seen = declared_shape(value), shapes.get(value.name)
        if declared is None or not seen or len(seen) != len(audit.runs):
            continue
        audit.tensors_checked += 1
        if any(len(s) != len(declared) for s in seen):
            audit.fixes.append(DimFix(value.name, kind, -1, None, [], None))
            continue
        for axis, d in enumerate(declared):
            observed = [s[axis] for s in seen]
            wrong, name = _judge_dim(d, observed, audit.runs)
            if wrong:
                audit.fixes.append(DimFix(value.name, kind, axis, d, observed, name))
    return audit


def apply_fixes(model, fixes: list[DimFix]) -> None:
    """Rewrite ``model``'s declarations as ``fixes`` say: a dim name, unknown, or (wrong rank) no shape at all."""
    values = {v.name: v for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]}
    for fix in fixes:
        tensor_type = values[fix.tensor].type.tensor_type
        if fix.axis < 0:
            tensor_type.ClearField("shape")
            continue
        dim = tensor_type.shape.dim[fix.axis]
        dim.Clear()
        if fix.rewritten_to:
            dim.dim_param = fix.rewritten_to


def audit_file(path: str | Path, specs: list[InputSpec], dims: dict[str, Dim], *,
               skip: tuple[str, ...] = ()) -> tuple[ShapeAudit, Path | None]:
    """Audit the ONNX file at ``path``; when declarations are wrong, write the rewritten model to a folder beside
    it (``shapes/``, same file name) and return that path too (the caller re-verifies it), else None."""
    # Weights in an external data file stay there: the probe and the rewrite are written beside the file and read
    # the same data, so a model over 2 GB is never copied (nor held in memory) to audit its declarations.
    model = serde.load(path, load_external_data=False)
    external = bool(serde.external_data_locations(model))
    large = not external and not in_memory(model)
    audit = audit_model(model, specs, dims, skip=skip, data_dir=Path(path).parent if external else None)
    if not audit.fixes:
        return audit, None
    if large:  # probing it through a temporary file moved its tensors out: read it again
        model = serde.load(path)
    apply_fixes(model, audit.fixes)
    if external:
        fixed = Path(path).with_name(Path(path).stem + ".shapes.onnx")
    else:
        fixed = Path(path).parent / "shapes" / Path(path).name
        fixed.parent.mkdir(exist_ok=True)
    serde.save(model, fixed, force=True)
    return audit, fixed
