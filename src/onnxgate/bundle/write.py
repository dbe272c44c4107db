"""Write a bundle: the model, its golden inputs and reference outputs, lock files, and a manifest.

The bundle is built in a temporary folder next to the destination and renamed into place, so a bundle
folder either exists complete (its manifest matching every file) or not at all.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import claim as cl
from .. import envinfo
from ..errors import BadInputError, UnsafeInputError
from ..fsutil import atomic_dir, atomic_file, check_target
from ..verify.compare import default_tolerance
from . import manifest as mf
from ..runtimes.venv_worker import save_npz

_RESERVED = {mf.MANIFEST, mf.MODEL, mf.GOLDEN_INPUTS, mf.REFERENCE_OUTPUTS, *envinfo.LOCK_FILES}


def write_bundle(out_dir: str | Path, *, model_path: str | Path, golden_inputs: dict[str, np.ndarray],
                 reference_outputs: dict[str, np.ndarray],
                 tolerances: dict[str, tuple[float, float]] | None = None, export_info: dict | None = None,
                 verification: dict | None = None, source_ref: str | None = None, force: bool = False,
                 tarball: bool = False, domain: dict | None = None, claim: cl.Claim | None = None) -> Path:
    """Write a bundle folder at ``out_dir`` (and ``<out_dir>.tar.gz`` with ``tarball``); return the folder.

    ``tolerances`` maps output names to ``(rtol, atol)``; outputs not named get the defaults.
    ``export_info`` (the export attempt that won) and ``verification`` (the parity results) are recorded
    as given. ``claim``: what verification proved (``claim.Claim``: domain, tolerances, runtime conditions,
    reference, evidence), written through the claim codec (``claim.to_manifest``); its tolerances are used where
    ``tolerances`` names none. ``domain``: a plain verified domain per dynamic dim (``{"S": {"min": 4, "max": 512,
    "multiple_of": null, "example": 8}}``), checked by the codec, for a bundle without a claim. What the bundle
    claims is what a server built on it accepts. Existing outputs are replaced only with ``force``.
    """
    out_dir, model_path = Path(out_dir), Path(model_path)
    model = describe_model(model_path)
    _check_arrays("golden inputs", golden_inputs, model["inputs"], model_path)
    _check_arrays("reference outputs", reference_outputs, model["outputs"], model_path)
    output_names = [spec["name"] for spec in model["outputs"]]
    claim = _claim(claim, domain, out_dir)
    given = {**{o.name: (o.rtol, o.atol) for o in claim.outputs}, **(tolerances or {})}
    tolerance_table = _tolerances(given, {name: reference_outputs[name] for name in output_names})
    claim = _with_outputs(claim, tolerance_table, set(tolerances or ()))
    claim = _with_batching(claim, model_path, model, golden_inputs)
    tar_path = out_dir.with_name(out_dir.name + ".tar.gz")
    if tarball:
        check_target(tar_path, force=force, kind="file")  # refuse before writing anything

    with atomic_dir(out_dir, force=force) as tmp:
        shutil.copyfile(model_path, tmp / mf.MODEL)
        for rel in model["external_data"]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_path.parent / rel, tmp / rel)
        save_npz(tmp / mf.GOLDEN_INPUTS, golden_inputs)
        save_npz(tmp / mf.REFERENCE_OUTPUTS, {name: reference_outputs[name] for name in output_names})
        envinfo.write_locks(tmp)
        env = envinfo.capture()
        manifest = {
            "format": mf.FORMAT,
            "format_version": mf.FORMAT_VERSION,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source_ref": source_ref,
            "model": {key: model[key] for key in ("file", "ir_version", "opset", "opset_imports", "producer",
                                                  "external_data")},
            "inputs": model["inputs"],
            "outputs": model["outputs"],
            **cl.to_manifest(claim),
            "files": mf.file_entries(tmp),
            "environment": {key: env[key] for key in ("versions", "platform", "cpu")},
            "export": export_info,
            "verification": verification,
        }
        (tmp / mf.MANIFEST).write_text(mf.manifest_text(manifest), encoding="utf-8")
    if tarball:
        write_tarball(out_dir, tar_path, force=force)
    return out_dir


def _claim(claim: cl.Claim | None, domain: dict | None, out_dir: Path) -> cl.Claim:
    """The claim to write: the one given, else one holding the plain ``domain`` (checked as the codec reads it)."""
    if claim is not None:
        if domain:
            raise BadInputError("write_bundle() got both a claim and a domain.", hint="The claim holds the domain.")
        return claim
    return cl.from_domain(domain, where=f"the domain given for '{out_dir}'")


def _with_outputs(claim: cl.Claim, table: dict[str, dict], overridden: set[str]) -> cl.Claim:
    """The claim with one output per model output, at the tolerances written (the defaults filled in)."""
    known = {o.name: o for o in claim.outputs}
    outputs = []
    for name, tol in table.items():
        seen = known.get(name)
        policy = "user" if name in overridden else seen.policy if seen else "dtype default"
        outputs.append(replace(seen, rtol=tol["rtol"], atol=tol["atol"], policy=policy) if seen else
                       cl.OutputClaim(name, tol["rtol"], tol["atol"], policy))
    return replace(claim, outputs=tuple(outputs))


def _with_batching(claim: cl.Claim, model_path: Path, model: dict[str, Any],
                   golden: dict[str, np.ndarray]) -> cl.Claim:
    """The claim with its batch-invariance proof (``claim.batching``, issue 28 item 3) when the model has a dynamic
    batch dim that ``onnxgate serve --max-batch`` could merge requests along: each golden row alone vs inside batches
    of golden and random companions at a bounded set of the claimed batch sizes, on onnxruntime, judged at the
    bundle's tolerances (``verify.batch_invariance.prove``), and padded along a sequence dim where an attention mask
    says it is padded (``padding_of``). Unchanged when the claim brings a proof or the model has
    no such dim. The dim is found as serve finds it: the claim's input specs and domains, else those the model's
    metadata records, else the graph's shapes."""
    if claim.batching is not None:
        return claim
    graph_inputs = [spec["shape"] or [] for spec in model["inputs"]]
    leading = {shape[0] if shape else None for shape in graph_inputs}
    if not claim.dims and (len(leading) != 1 or not isinstance(next(iter(leading)), str)):
        return claim  # no symbolic leading dim shared by every input: nothing to batch along
    from ..runtimes.ort import open_session
    from ..verify import batch_invariance as bi

    specs, domains = claim.inputs, claim.domains
    if not (specs and claim.dims):
        try:
            recorded = cl.from_metadata(model["metadata"], model=model_path)
        except BadInputError:  # malformed records: serve refuses them with this error; the bundle has no proof
            return claim
        specs, domains = specs or (recorded.inputs if recorded else ()), domains or (
            recorded.domains if recorded else {})
    by_name = {s.name: s for s in specs}
    shapes = [list(by_name[spec["name"]].shape) if spec["name"] in by_name else (spec["shape"] or [])
              for spec in model["inputs"]]
    dim = bi.leading_batch_dim(shapes, [spec["shape"] or [] for spec in model["outputs"]], domains)
    if dim is None:
        return claim
    import onnxruntime

    session = open_session(str(model_path), what=f"the model '{model_path}'")
    names = [spec["name"] for spec in model["outputs"]]
    ranges = {s.name: tuple(s.value_range) for s in specs if s.value_range}
    padding = bi.padding_of([(spec["name"], shape, spec["dtype"], ranges.get(spec["name"]))
                             for spec, shape in zip(model["inputs"], shapes)],
                            [(spec["name"], spec["shape"]) for spec in model["outputs"]], domains, golden, dim.name)
    proof = bi.prove(lambda feed: dict(zip(names, session.run(names, feed))), golden, dim,
                     tolerances=claim.tolerances(), value_ranges=ranges, padding=padding,
                     runtime=f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, optimization 'all'")
    return replace(claim, batching=proof)


def write_tarball(folder: Path, tar_path: Path, *, force: bool = False) -> Path:
    """Pack ``folder`` as ``tar_path`` with the folder name as its single top-level entry."""
    with atomic_file(tar_path, force=force) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(folder, arcname=folder.name, filter=_anonymous)
    return tar_path


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def describe_model(model_path: Path) -> dict[str, Any]:
    """Input/output specs, opsets and external-data files of an ONNX file, read without its weights."""
    from .. import serde

    proto = serde.load(model_path, load_external_data=False)  # BadInputError when missing or unreadable
    initializers = {t.name for t in proto.graph.initializer}
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    return {
        "file": mf.MODEL,
        "ir_version": proto.ir_version,
        "opset": opsets.get("ai.onnx"),
        "opset_imports": opsets,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip() or None,
        "external_data": _external_data(proto, model_path),
        "inputs": [_value_spec(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [_value_spec(v) for v in proto.graph.output],
        "metadata": {p.key: p.value for p in proto.metadata_props},
    }


def _value_spec(value) -> dict[str, Any]:
    """name, shape (ints, symbolic dims as their names, None when unknown) and numpy dtype name."""
    from onnx import TensorProto, helper

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "shape": None, "dtype": kind}
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError):  # a type numpy has no name for
        dtype = TensorProto.DataType.Name(tensor.elem_type).lower()
    return {"name": value.name, "shape": shape, "dtype": dtype}


def _external_data(proto, model_path: Path) -> list[str]:
    """The external-data files the model references, checked to stay inside the model's folder."""
    from onnx import TensorProto

    folder = model_path.parent.resolve()
    found: set[str] = set()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        where = f"The model '{model_path}' (tensor '{tensor.name}')"
        rel = mf.safe_relative(location, where=where).as_posix()
        target = folder / rel
        if not target.resolve().is_relative_to(folder):
            raise UnsafeInputError(f"{where} names the external-data file '{location}', a link leading out of "
                                   "the model's folder.", hint="Copy the data file into the model's folder.")
        if rel in _RESERVED:
            raise BadInputError(f"{where} stores weights in '{location}', a file name the bundle needs itself.",
                                hint="Re-save the model with another external-data location, e.g. model.onnx.data.")
        if not target.is_file():
            raise BadInputError(f"{where} keeps its weights in '{location}', which is not in '{folder}'.",
                                hint="Put the external-data file next to the model, as it was saved.")
        found.add(rel)
    return sorted(found)


def _all_tensors(graph):
    """Every tensor of a graph: initializers, sparse initializers, and those in node attributes/subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _check_arrays(what: str, arrays: dict[str, np.ndarray], specs: list[dict], model_path: Path) -> None:
    """One array per model input (output), of its dtype and rank: a bundle that cannot run is refused now,
    not discovered on the production machine."""
    names = [spec["name"] for spec in specs]
    missing = [name for name in names if name not in arrays]
    extra = [name for name in arrays if name not in names]
    if missing or extra:
        found = "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                        extra and f"not in the model: {', '.join(extra)}"]))
        raise BadInputError(f"The {what} do not match the model '{model_path}': {found}.",
                            hint=f"Provide exactly one array for each of: {', '.join(names)}.")
    for spec in specs:
        array = np.asarray(arrays[spec["name"]])
        wrong = []
        if array.dtype.name != spec["dtype"]:
            wrong.append(f"dtype {array.dtype.name}, the model says {spec['dtype']}")
        if spec["shape"] is not None and (array.ndim != len(spec["shape"]) or any(
                isinstance(dim, int) and dim != size for dim, size in zip(spec["shape"], array.shape, strict=True))):
            wrong.append(f"shape {list(array.shape)}, the model says {spec['shape']}")
        if wrong:
            raise BadInputError(f"The {what} array '{spec['name']}' has {' and '.join(wrong)} ('{model_path}').",
                                hint=f"Convert it, e.g. array.astype('{spec['dtype']}'), or fix its shape.")


def _tolerances(tolerances: dict[str, tuple[float, float]] | None, reference: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per-output tolerances: the caller's, else the default for the output's dtype (as `onnxgate verify`)."""
    tolerances = tolerances or {}
    names = list(reference)
    unknown = [name for name in tolerances if name not in names]
    if unknown:
        raise BadInputError(f"Tolerances are given for {', '.join(unknown)}, which the model does not output.",
                            hint=f"Name model outputs: {', '.join(names)}.")
    from .verify import tolerance_ceiling

    table = {}
    for name in names:
        default = default_tolerance(np.asarray(reference[name]).dtype.name)
        rtol, atol = tolerances.get(name, (default.rtol, default.atol))
        if not (rtol >= 0 and atol >= 0):
            raise BadInputError(f"The tolerance for output '{name}' (rtol={rtol}, atol={atol}) is negative or NaN.",
                                hint="Use non-negative numbers, e.g. rtol=1e-3, atol=1e-4.")
        ceiling = tolerance_ceiling(np.asarray(reference[name]), np.asarray(reference[name]).dtype.name)
        if rtol > ceiling.rtol or atol > ceiling.atol:  # verify would refuse the bundle: never write it
            raise BadInputError(f"The tolerance for output '{name}' (rtol={rtol:g}, atol={atol:g}) is beyond what a "
                                f"comparison can prove: at most rtol={ceiling.rtol:g} and atol={ceiling.atol:.3g} (a "
                                "quarter of the reference output's scale, or its dtype's default atol), or a wrong "
                                "model passes.", hint="Give a tolerance within those bounds (the defaults: omit "
                                "--rtol/--atol).")
        table[name] = {"rtol": float(rtol), "atol": float(atol)}
    return table

