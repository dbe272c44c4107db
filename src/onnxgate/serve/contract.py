"""What a served bundle accepts: its input contract, read from the proof, and the session that honours it.

Every dim of every input gets one rule, from the most specific record the bundle holds:

* a fixed size in the input spec (the bundle's claim, else the model's recorded specs, else the manifest's graph
  shapes): that size;
* a named dim with a verified domain (the bundle's claim, else the claim the model's metadata records): its
  interval and granularity, e.g. ``B: 1..64`` or ``W: multiples of 64 in 64..512``;
* a dynamic dim nothing verified (a bundle packed from a plain .onnx file): only the size of the golden input,
  the one size the bundle's reference outputs prove.

Integer inputs with a recorded value range (``ids:Bx128:int64:0..30521``) are held to it too. A request outside
any rule is a ``RequestError`` (HTTP 400) naming the input, the dim and the allowed values: the server never runs
a shape the bundle does not prove.

Loading opens the bundle once (``bundle.open``: checksums, exit 9 when a file changed; the claim decoded by the
claim codec), then hashes ``model.onnx`` once more as it reads the bytes the session is built from, and runs the
golden inputs through the serving session itself (its optimization level and threads) against the reference
outputs at the bundle's tolerances (exit 4 when they differ). No torch, no onnx: the metadata comes from
onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import claim as cl
from ..bundle.opened import VerifiedBundle
from ..bundle.opened import open as open_bundle
from ..errors import BadInputError, IntegrityError, ParityError
from ..spec import Dim
from .protocol import NonFiniteOutput, RequestError, datatype_of, json_safe

_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class DimRule:
    """The sizes one dim may take. ``name`` is None for a fixed dim; ``source`` says which record set the rule."""

    name: str | None
    min: int
    max: int | None
    multiple_of: int | None = None
    source: str = "fixed"  # fixed | verified domain | golden size | computed (outputs)

    @property
    def fixed(self) -> bool:
        return self.name is None

    def allows(self, size: int) -> bool:
        return (size >= self.min and (self.max is None or size <= self.max)
                and (not self.multiple_of or size % self.multiple_of == 0))

    def describe(self) -> str:
        if self.fixed or self.min == self.max:
            return f"only {self.min}" if not self.fixed else str(self.min)
        span = f"{self.min}..{'' if self.max is None else self.max}"
        return f"multiples of {self.multiple_of} in {span}" if self.multiple_of else span

    def to_dict(self) -> Any:
        if self.fixed:
            return self.min
        return {"dim": self.name, "min": self.min, "max": self.max, "multiple_of": self.multiple_of,
                "source": self.source}

    @property
    def oip(self) -> int:
        """The dim as the Open Inference Protocol writes a shape: its size, or -1 when it varies."""
        return self.min if self.fixed or self.min == self.max else -1


@dataclass(frozen=True)
class TensorRule:
    name: str
    dtype: str  # numpy name
    dims: tuple[DimRule, ...]
    value_range: tuple[float, float] | None = None
    nonfinite: bool = False  # NaN/Inf proven acceptable: the golden input (output: reference) holds them

    @property
    def datatype(self) -> str:
        return datatype_of(self.dtype)

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d.min) if d.fixed else str(d.name) for d in self.dims) + "]"

    def to_dict(self) -> dict[str, Any]:
        doc = {"name": self.name, "datatype": self.datatype, "shape": [d.oip for d in self.dims],
               "verified_shape": [d.to_dict() for d in self.dims]}
        if self.value_range is not None:
            doc["value_range"] = list(self.value_range)
        return doc

    def check(self, datatype: str, shape: tuple[int, ...]) -> None:
        """RequestError (400) unless a tensor of ``datatype`` and ``shape`` has this tensor's datatype, rank, and
        every dim inside its rule. Asked before the tensor's data is decoded."""
        allowed_shape = [d.to_dict() for d in self.dims]
        if datatype != self.datatype:
            raise RequestError(400, f"The input '{self.name}' is {datatype}; the model takes {self.datatype}.",
                               input=self.name, allowed={"datatype": self.datatype})
        if len(shape) != len(self.dims):
            raise RequestError(400, f"The input '{self.name}' has rank {len(shape)} (shape {list(shape)}); the "
                                    f"model takes rank {len(self.dims)}: {self.shape_text()}.",
                               input=self.name, allowed={"shape": allowed_shape})
        for axis, (size, rule) in enumerate(zip(shape, self.dims)):
            if not rule.allows(size):
                label = f"dim {axis}" + (f" ({rule.name})" if rule.name else "")
                what = (f"the model takes only {rule.min}" if rule.fixed else
                        f"the verified domain of {rule.name} is {rule.describe()}" if rule.source == "verified domain"
                        else f"only {rule.min} is verified (the golden input's size; no domain was recorded)")
                raise RequestError(400, f"The input '{self.name}' has size {size} at {label}; {what}.",
                                   input=self.name, allowed={"axis": axis, **_as_dict(rule.to_dict())})

    def check_values(self, array: np.ndarray) -> None:
        """RequestError (400) when a float input holds NaN/Inf (unless the golden input does: then the bundle proves
        them), or an integer input values outside its recorded value range. Asked of the decoded array, so a JSON
        number beyond the datatype's range (1e39 as FP32, 1e999 anywhere), which decodes to Inf, is caught too."""
        if array.dtype.kind in "fc" and array.size and not self.nonfinite:
            finite = np.isfinite(array)
            if not finite.all():
                first = [int(i) for i in np.unravel_index(int(np.argmin(finite)), array.shape)]
                raise RequestError(400, f"The input '{self.name}' holds {int(finite.size - finite.sum()):,} NaN or "
                                        f"infinite value(s) (the first at index {first}); the model was verified on "
                                        f"finite inputs only. A JSON number beyond {self.datatype}'s range (e.g. 1e39 "
                                        "for FP32, or 1e999) decodes to infinity.", input=self.name,
                                   allowed={"values": "finite"})
        if self.value_range is not None and array.dtype.kind in "iu" and array.size:
            low, high = self.value_range
            if array.min() < low or array.max() > high:
                raise RequestError(400, f"The input '{self.name}' holds values outside {_num(low)}..{_num(high)}, the "
                                        "range the model was verified on.", input=self.name,
                                   allowed={"value_range": [low, high]})


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"size": value}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class ServedModel:
    """A bundle ready to serve: its contract, what classify needs, and the onnxruntime session (``session``)."""

    name: str
    folder: Path
    manifest: dict[str, Any]
    inputs: list[TensorRule]
    outputs: list[TensorRule]
    batch_dim: str | None  # the leading dim every input and output shares (what dynamic batching merges)
    meta: dict[str, str]
    labels: tuple[str, ...] | None = None
    labels_note: str | None = None
    preprocess: Any = None  # verify.inputs.Preprocess
    classify_unavailable: str | None = None
    threads: int = 0
    threads_source: str = "onnxruntime default (all cores)"
    opt_level: str = "all"
    session: Any = None
    runtime: str = "onnxruntime"  # or "openvino" (runtimes.openvino.OpenVinoSession)
    runtime_config: str = ""  # how the session runs, e.g. "OpenVINO 2026.4 CPU, ..., INFERENCE_PRECISION_HINT=f32"
    runtime_source: str = "the default"  # why this runtime: --runtime, or the bundle's benchmark recommendation
    claim: cl.Claim | None = None  # what the bundle proves (bundle.open), read once
    check_claim: cl.Claim | None = None  # the claim the self-check and batch probe judge by, when not the bundle's
    self_check: list[dict] = field(default_factory=list)
    golden: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def batch_rule(self) -> DimRule | None:
        if self.batch_dim is None:
            return None
        return self.inputs[0].dims[0]

    def check_declared(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """One input as a request declares it (before its data is decoded): a known name, inside its rule."""
        rule = next((t for t in self.inputs if t.name == name), None)
        if rule is None:
            raise RequestError(400, f"The model has no input '{name[:200]}'.", input=name[:200],
                               allowed={"inputs": [t.name for t in self.inputs]})
        rule.check(datatype, shape)

    def check_feed(self, tensors: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The feed for ``session.run``: every input present, known and inside its rule; named dims consistent."""
        known = {t.name: t for t in self.inputs}
        for name, (datatype, array) in tensors.items():
            self.check_declared(name, datatype, array.shape)
        missing = [n for n in known if n not in tensors]
        if missing:
            raise RequestError(400, f"The input '{missing[0]}' is missing.", input=missing[0],
                               allowed={"inputs": list(known)})
        sizes: dict[str, tuple[int, str]] = {}
        for rule in self.inputs:
            rule.check_values(tensors[rule.name][1])
            for dim, size in zip(rule.dims, tensors[rule.name][1].shape):
                if dim.name is None:
                    continue
                seen = sizes.setdefault(dim.name, (size, rule.name))
                if seen[0] != size:
                    raise RequestError(400, f"The inputs give the dim {dim.name} two sizes: {seen[0]} ('{seen[1]}') and "
                                            f"{size} ('{rule.name}').", input=rule.name, allowed={"dim": dim.name})
        return {rule.name: tensors[rule.name][1] for rule in self.inputs}

    def check_outputs(self, result: dict[str, np.ndarray]) -> None:
        """NonFiniteOutput when an output whose verified reference is finite came back with NaN/Inf: the request
        took the model outside the domain the bundle proves, and its numbers are not answers."""
        for rule in self.outputs:
            array = result.get(rule.name)
            if array is None or rule.nonfinite or array.dtype.kind not in "fc" or not array.size:
                continue
            finite = np.isfinite(array)
            if not finite.all():
                raise NonFiniteOutput(rule.name, int(finite.size - finite.sum()), int(finite.size))

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata, with the verified shapes and where they come from."""
        return {"name": self.name, "versions": ["1"],
                "platform": "onnxruntime_onnx" if self.runtime == "onnxruntime" else "openvino",
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "parameters": {"bundle": str(self.folder), "source_ref": self.manifest.get("source_ref"),
                               "batch_dim": self.batch_dim, "labels": len(self.labels) if self.labels else None,
                               "preprocess": str(self.preprocess) if self.preprocess else None,
                               "classify": self.classify_unavailable or "available",
                               "runtime": self.runtime, "runtime_config": self.runtime_config,
                               "runtime_source": self.runtime_source,
                               "threads": self.threads, "threads_source": self.threads_source,
                               "opt_level": self.opt_level, "self_check": json_safe(self.self_check)}}


# ------------------------------------------------------------------------------------------------ loading


def check_integrity(folder: Path) -> VerifiedBundle:
    """The bundle, opened once every file matches its checksum (``bundle.open``); IntegrityError (exit 9) naming
    what changed."""
    return open_bundle(folder, purpose="serves")


RUNTIMES = ("auto", "onnxruntime", "openvino")


def load_served_model(folder: Path, *, name: str | None = None, threads: int | None = None,
                      opt_level: str = "all", default_threads: int = 0, runtime: str = "auto") -> ServedModel:
    """Read the bundle at ``folder`` (already unpacked), build its session and self-check it (see module doc).
    ``runtime``: ``auto`` runs what the bundle's benchmark recommends (OpenVINO at the precision it was verified at,
    when it recommends OpenVINO and OpenVINO is installed), else onnxruntime; or the runtime named."""
    from ..bundle import manifest as mf
    from ..bundle.verify import load_npz
    from ..runtimes.ort import open_session

    if runtime not in RUNTIMES:
        raise BadInputError(f"--runtime '{runtime}' is not a runtime onnxgate serves.",
                            hint=f"Use one of: {', '.join(RUNTIMES)}.")
    bundle = check_integrity(folder)
    manifest = bundle.manifest
    source = _model_source(folder, manifest)
    plan = _runtime_plan(folder, manifest, runtime)
    if plan["runtime"] == "openvino":
        chosen = threads if threads is not None else plan["threads"] if plan["threads"] is not None else default_threads
        how = "--threads" if threads is not None else plan["source"] if plan["threads"] is not None else (
            "the cores divided among the workers" if default_threads else "OpenVINO's default")
        level = opt_level
    else:
        chosen, how, level = _threads(folder, manifest, threads, opt_level, default_threads)
    session = open_session(source, what=f"the bundle's model '{folder / mf.MODEL}'", opt_level=level,
                           intra_op_threads=chosen if plan["runtime"] == "onnxruntime" else 1, inter_op_threads=1)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    golden, reference = load_npz(folder / mf.GOLDEN_INPUTS), load_npz(folder / mf.REFERENCE_OUTPUTS)
    inputs = _input_rules(folder, manifest, bundle.claim, meta, golden)
    outputs = [replace(rule, nonfinite=_has_nonfinite(reference.get(rule.name)))
               for rule in _output_rules(manifest, {d.name: d for t in inputs for d in t.dims if d.name})]
    model = ServedModel(_served_name(name, manifest, folder), folder, manifest, inputs, outputs,
                        _batch_dim(inputs, outputs), meta, threads=chosen, threads_source=how, opt_level=level,
                        session=session, runtime_source=plan["source"], claim=bundle.claim)
    if plan["runtime"] == "openvino":
        from ..runtimes.openvino import OpenVinoSession

        model.session = None  # onnxruntime gave the metadata; OpenVINO serves
        model.session = OpenVinoSession(folder / mf.MODEL, threads=chosen or None, precision=plan["precision"])
        model.runtime, model.runtime_config = "openvino", model.session.describe()
        model.check_claim = _precision_claim(bundle.claim, reference, model.session.precision)
    else:
        model.runtime_config = (f"onnxruntime CPU, graph optimization '{level}', "
                                f"{chosen or 'all'} intra-op thread(s)")
    _classify_setup(model)
    model.self_check = _self_check(model, golden, reference)
    model.golden = golden
    return model


def _model_source(folder: Path, manifest: dict[str, Any]) -> Any:
    """The bytes the session is built from, hashed as they are read — or, when the model keeps tensors in external
    data (decided from the model itself, not from the manifest's description of it), its path inside the bundle:
    onnxruntime resolves external data relative to the model's folder, and refuses it for a model given as bytes
    ("escapes working directory"). The integrity check covered those files and their locations."""
    from ..bundle import manifest as mf
    from ..bundle._onnx_refs import ProtoError, external_data_refs

    data = (folder / mf.MODEL).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"][mf.MODEL]["sha256"]:
        raise IntegrityError(f"The bundle's model '{folder / mf.MODEL}' changed while onnxgate read it.",
                             hint="Do not serve this bundle: re-create it, or fetch it again from its source.")
    try:
        external = any(ref.external or ref.values(b"location") for ref in external_data_refs(data))
    except ProtoError:
        external = False  # onnxruntime gives the precise error when it parses the bytes
    return str((folder / mf.MODEL).resolve()) if external else data


def _served_name(name: str | None, manifest: dict[str, Any], folder: Path) -> str:
    if name:
        if _NAME.search(name) or len(name) > 128 or name.strip(".") == "":  # '.'/'..': not a folder name
            raise BadInputError(f"--model-name '{name[:80]}' is not a model name for a URL.",
                                hint="Use letters, digits, '_', '.' and '-' only (at most 128 characters).")
        return name
    ref = manifest.get("source_ref")
    stem = str(ref).rsplit(":", 1)[-1].rsplit("/", 1)[-1] if isinstance(ref, str) and ref else ""
    stem = _NAME.sub("_", stem.removesuffix(".onnx")).strip("_.-")
    return (stem or _NAME.sub("_", folder.name).strip("_.-") or "model")[:128]


_OV_ID = re.compile(r"openvino:base(?:/(\w+))?/t(\d+)")
_OV_PRECISION = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


def _runtime_plan(folder: Path, manifest: dict[str, Any], runtime: str) -> dict[str, Any]:
    """Which runtime serves, at which OpenVINO precision and threads, and why. OpenVINO is served at the precision
    its configuration was verified at: the one pinned in the recommended configuration, else the one the benchmark
    recorded OpenVINO choosing (its verification's precision); ``--runtime openvino`` without an OpenVINO
    recommendation pins f32, the precision the bundle itself was verified at."""
    recommended = _recommended_config(folder, manifest)
    match = _OV_ID.fullmatch(recommended[0]) if recommended else None
    if runtime == "onnxruntime" or (runtime == "auto" and match is None):
        return {"runtime": "onnxruntime", "precision": None, "threads": None,
                "source": "--runtime onnxruntime" if runtime == "onnxruntime" else "the default"}
    if match is None:
        return {"runtime": "openvino", "precision": "f32", "threads": None,
                "source": "--runtime openvino (no OpenVINO recommendation recorded: f32, as the bundle was verified)"}
    if runtime == "auto":
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            return {"runtime": "onnxruntime", "precision": None, "threads": None,
                    "source": f"the default: the bundle's benchmark recommends {recommended[0]}, but OpenVINO is not "
                              "installed here (pip install 'onnxgate[openvino]')"}
    verified = ((recommended[2].get("verification") or {}).get("precision") if recommended[2] else None)
    precision = _OV_PRECISION.get(str(match.group(1) or verified or "").lower())
    if precision is None:
        raise BadInputError(f"The bundle's benchmark recommends {recommended[0]} ({recommended[1]}) but records no "
                            f"precision it was verified at that OpenVINO can be pinned to ({verified!r}).",
                            hint="Serve with --runtime onnxruntime, or re-run the benchmark.")
    return {"runtime": "openvino", "precision": precision, "threads": int(match.group(2)),
            "source": f"the bundle's benchmark ({recommended[1]}: {recommended[0]}, verified at {precision})"}


def _precision_claim(claim: cl.Claim, reference: dict[str, np.ndarray], precision: str) -> cl.Claim | None:
    """For OpenVINO computing in a reduced precision (bf16, f16), the bundle's claim with each output's tolerance
    widened to that precision's, as the benchmark verified the configuration; None at f32 (the bundle's own)."""
    from ..verify.contract import normalize_precision, runtime_tolerance

    stated = runtime_tolerance(normalize_precision(precision))
    if stated is None:
        return None
    scale = {}
    for out in claim.outputs:
        value = reference.get(out.name)
        finite = np.abs(value[np.isfinite(value)]) if value is not None and value.dtype.kind == "f" else np.zeros(0)
        scale[out.name] = float(finite.max()) if finite.size else None
    return cl.widened(claim, scale, stated, policy=f"OpenVINO at {precision}")


def _threads(folder: Path, manifest: dict[str, Any], threads: int | None, opt_level: str,
             default: int) -> tuple[int, str, str]:
    """intra-op threads and level: the flag, else the configuration the bundle's benchmark recommended, else
    ``default`` (0: onnxruntime's own choice, every core)."""
    if threads is not None:
        if threads < 0:
            raise BadInputError(f"--threads {threads} is negative.", hint="Give a thread count >= 1 (0: all cores).")
        return threads, "--threads", opt_level
    recommended = _recommended_config(folder, manifest)
    if recommended:
        match = re.fullmatch(r"onnxruntime:base(?:/(\w+))?/t(\d+)", recommended[0])
        if match:
            return int(match.group(2)), f"the bundle's benchmark ({recommended[1]}: {recommended[0]})", \
                match.group(1) or opt_level
    if default:
        return default, "the cores divided among the workers", opt_level
    return 0, "onnxruntime default (all cores)", opt_level


def _recommended_config(folder: Path, manifest: dict[str, Any]) -> tuple[str, str, dict] | None:
    """The benchmark's recommended configuration id and where it was read: the manifest's ``bench`` record, else
    the ``report.json`` that `onnxgate run` writes next to its bundle folder."""
    bench = manifest.get("bench")
    where = "manifest.json"
    if not isinstance(bench, dict):
        report = folder.parent / "report.json"
        try:
            if not report.is_file() or report.stat().st_size > (64 << 20):
                return None
            bench = (json.loads(report.read_text(encoding="utf-8")).get("stages") or {}).get("bench")
        except (OSError, ValueError, AttributeError):
            return None
        where = str(report)
    recommendation = bench.get("recommendation") if isinstance(bench, dict) else None
    config_id = recommendation.get("config_id") if isinstance(recommendation, dict) else None
    return (config_id, where, recommendation) if isinstance(config_id, str) else None


def _input_rules(folder: Path, manifest: dict[str, Any], claim: cl.Claim, meta: dict[str, str],
                 golden: dict[str, np.ndarray]) -> list[TensorRule]:
    model = folder / "model.onnx"
    recorded = cl.from_metadata(meta, model=model) if not (claim.inputs and claim.dims) else None
    specs = {s.name: s for s in (claim.inputs or (recorded.inputs if recorded else ()))}
    domains = claim.domains or (recorded.domains if recorded else {})
    rules = []
    for entry in manifest["inputs"]:
        name, spec = entry["name"], specs.get(entry["name"])
        shape = list(spec.shape) if spec else (entry.get("shape") or [])
        golden_shape = np.shape(golden.get(name, np.zeros(0)))
        if len(golden_shape) != len(shape):
            raise BadInputError(f"The bundle '{folder}' records input '{name}' as {shape} but its golden input has "
                                f"shape {list(golden_shape)}.", hint="Re-create the bundle with `onnxgate bundle`.")
        dims = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and not isinstance(dim, bool):
                dims.append(DimRule(None, dim, dim))
            elif isinstance(dim, str) and dim in domains:
                d = domains[dim]
                dims.append(DimRule(dim, d.min, d.max, d.multiple_of, "verified domain"))
            else:
                size = int(golden_shape[axis])
                dims.append(DimRule(dim if isinstance(dim, str) else f"{name}_{axis}", size, size, None, "golden size"))
        dtype = spec.dtype if spec else str(entry.get("dtype"))
        rules.append(TensorRule(name, dtype, tuple(dims), spec.value_range if spec else None,
                                nonfinite=_has_nonfinite(golden.get(name))))
    return rules


def _has_nonfinite(array: np.ndarray | None) -> bool:
    """Whether a golden/reference array holds NaN/Inf: then the bundle proves the model handles (or makes) them."""
    return array is not None and array.dtype.kind in "fc" and bool(array.size) and not np.isfinite(array).all()


def _output_rules(manifest: dict[str, Any], named: dict[str, DimRule]) -> list[TensorRule]:
    rules = []
    for entry in manifest["outputs"]:
        dims = []
        for axis, dim in enumerate(entry.get("shape") or []):
            if isinstance(dim, int) and not isinstance(dim, bool):
                dims.append(DimRule(None, dim, dim))
            else:
                label = dim if isinstance(dim, str) else f"{entry['name']}_{axis}"
                dims.append(named.get(label, DimRule(label, 0, None, None, "computed")))
        rules.append(TensorRule(entry["name"], str(entry.get("dtype")), tuple(dims)))
    return rules


def _batch_dim(inputs: list[TensorRule], outputs: list[TensorRule]) -> str | None:
    """The dim dynamic batching merges along: the leading dim every input shares, a verified range, and a leading
    dim on every output that is not fixed (``batch_probe`` proves the outputs follow it before batching starts)."""
    leading = {t.dims[0].name if t.dims else None for t in inputs}
    if len(leading) != 1 or None in leading:
        return None
    rule = inputs[0].dims[0]
    if rule.source != "verified domain" or rule.max == rule.min:
        return None
    if any(not t.dims or t.dims[0].fixed for t in outputs):
        return None
    return rule.name


@dataclass(frozen=True)
class BatchingPlan:
    """How a server may merge requests, from the batch-invariance proof (``verify.batch_invariance``, issue 28
    item 3): ``max_batch`` rows per run at most (None: dynamic batching off), and ``reason`` when that is off or
    below the ``asked`` --max-batch; ``proof`` is the record judged (the bundle's ``claim.batching``, or the same
    proof run at start-up: ``source`` says which)."""

    asked: int
    max_batch: int | None
    reason: str | None = None
    proof: dict[str, Any] | None = None
    source: str | None = None

    def proof_summary(self) -> dict[str, Any] | None:
        if self.proof is None:
            return None
        keys = ("passed", "allowed", "max_batch", "sizes", "bound", "used_by", "trials", "padded", "tolerance",
                "runtime")
        return json_safe({**{k: self.proof.get(k) for k in keys}, "source": self.source})

    def metadata(self, rule: DimRule | None, timeout_ms: float) -> dict[str, Any]:
        """``parameters.dynamic_batching`` of the model metadata: on with its limits and proof, or off and why."""
        if self.max_batch is None:
            return {"enabled": False, "asked": self.asked, "reason": self.reason, "proof": self.proof_summary()}
        doc = {"enabled": True, "max_batch": self.max_batch, "timeout_ms": timeout_ms,
               "batch_dim": rule.name if rule else None, "verified": rule.to_dict() if rule else None,
               "proof": self.proof_summary()}
        if self.reason:
            doc["capped"] = self.reason
        return doc

    def text(self, timeout_ms: float, rule: DimRule | None) -> str:
        """The start-up line's batching part."""
        if self.max_batch is None:
            return (f"dynamic batching refused (--max-batch {self.asked}): "
                    f"{(self.reason or '').removeprefix('dynamic batching refused: ')}")
        proof = self.proof or {}
        bound = ", ".join(f"{n} {v:.3g}" for n, v in (proof.get("bound") or {}).items() if v is not None)
        text = (f"dynamic batching on: up to {self.max_batch} rows per run, waiting at most {timeout_ms:g} ms, within "
                f"{rule.name}: {rule.describe()}; batch-invariant up to {proof.get('max_batch')} rows "
                f"(bound {bound or 'n/a'}; {self.source})")
        return text + (f"; {self.reason}" if self.reason else "")


def batch_proof(model: ServedModel, asked: int) -> tuple[dict[str, Any], str]:
    """The batch-invariance proof for ``model`` and where it comes from: the bundle's recorded ``claim.batching``
    (written with the bundle, on onnxruntime), else -- an older bundle, or a server on another runtime -- the same
    proof run now on the serving session at the claimed batch sizes up to ``asked``."""
    from ..verify import batch_invariance as bi

    rule = model.batch_rule
    recorded = bi.read_record(model.claim.batching if model.claim is not None else None)
    if recorded is not None and recorded.get("batch_dim") == rule.name and model.runtime == "onnxruntime":
        return recorded, "the bundle's claim"
    why = ("the bundle records no batch-invariance proof" if recorded is None else
           f"the bundle's proof ran on onnxruntime, this server runs {model.runtime}" if model.runtime != "onnxruntime"
           else f"the bundle's proof is for the batch dim '{recorded.get('batch_dim')}'")
    dim = Dim(rule.name, rule.min, rule.max, None, rule.multiple_of)
    sizes = [s for s in bi.batch_sizes(Dim(rule.name, rule.min, min(asked, rule.max or asked), None,
                                           rule.multiple_of))]
    names = [o.name for o in model.outputs]
    tolerances = (model.check_claim or model.claim).tolerances() if (model.check_claim or model.claim) else {}
    ranges = {t.name: tuple(t.value_range) for t in model.inputs if t.value_range is not None}
    golden = {t.name: model.golden[t.name] for t in model.inputs}
    domains = {d.name: Dim(d.name, d.min, d.max, None, d.multiple_of) for t in model.inputs for d in t.dims
               if d.source == "verified domain"}
    padding = bi.padding_of([(t.name, _dim_names(t), t.dtype, t.value_range) for t in model.inputs],
                            [(t.name, _dim_names(t)) for t in model.outputs], domains, golden, rule.name)
    proof = bi.prove(lambda feed: dict(zip(names, model.session.run(names, feed))), golden, dim,
                     tolerances=tolerances, sizes=sizes, value_ranges=ranges, padding=padding,
                     runtime=model.runtime_config)
    return proof, f"measured at start-up: {why}"


def _dim_names(tensor: TensorRule) -> list[Any]:
    return [d.min if d.fixed else d.name for d in tensor.dims]


def plan_batching(model: ServedModel, asked: int) -> BatchingPlan:
    """Dynamic batching within the proof: off with the refusal (the measured bound) when not even two rows held,
    capped at the largest batch size that held, else ``asked``."""
    rule = model.batch_rule
    if rule is None or not model.golden:
        return BatchingPlan(asked, None, "its inputs share no leading batch dim with a verified range")
    if asked < 2:
        return BatchingPlan(asked, asked, None, None, None)
    proof, source = batch_proof(model, asked)
    held = proof.get("max_batch") or 1
    if not proof.get("allowed") or held < 2:
        return BatchingPlan(asked, None, proof.get("refusal") or "dynamic batching refused: no batch size held",
                            proof, source)
    if asked <= held:
        return BatchingPlan(asked, asked, None, proof, source)
    tried = ", ".join(map(str, proof.get("sizes") or []))
    beyond = (f"a larger batch failed: {proof['failures'][0]}" if proof.get("failures") else
              f"no larger size was proven (sizes tried: {tried})")
    return BatchingPlan(asked, held, f"--max-batch {asked} capped at {held} rows, the largest batch size proven "
                                     f"batch-invariant; {beyond}", proof, source)


def batch_probe(model: ServedModel, max_batch: int | None = None) -> str | None:
    """Why requests cannot be merged along the batch dim (None when they can): the batch-invariance proof
    (``plan_batching``) up to ``max_batch`` (default: the batch domain's largest size)."""
    rule = model.batch_rule
    asked = max_batch or (rule.max if rule is not None and rule.max else 64)
    plan = plan_batching(model, asked)
    return plan.reason if plan.max_batch is None else None


def _classify_setup(model: ServedModel) -> None:
    """Whether /classify can run (an image input, recorded preprocessing, a [N, classes] output) and its labels."""
    from ..verify.inputs import Preprocess, labels_from_meta

    where = model.folder / "model.onnx"
    try:
        model.preprocess = Preprocess.from_meta(model.meta, model=where)
    except BadInputError as exc:
        model.classify_unavailable = exc.message
        return
    first = model.outputs[0]
    image = model.inputs[0] if len(model.inputs) == 1 else None
    if model.preprocess is None:
        model.classify_unavailable = ("the bundle records no image preprocessing (export with --meta "
                                      "preprocess=resize=256,crop=224,mean=...,std=...)")
    elif image is None or len(image.dims) != 4 or image.dtype not in ("float32", "float16") \
            or not image.dims[1].fixed or image.dims[1].min not in (1, 3):
        model.classify_unavailable = "the model does not take one NCHW float image tensor with 1 or 3 channels"
    elif not (image.dims[2].allows(model.preprocess.crop) and image.dims[3].allows(model.preprocess.crop)):
        model.classify_unavailable = (f"the preprocessing's crop {model.preprocess.crop} lies outside the verified "
                                      f"image size {image.shape_text()}")
    elif len(first.dims) != 2 or first.dims[1].fixed is False:
        model.classify_unavailable = "the model's first output is not [N, classes]"
    try:
        labels = labels_from_meta(model.meta, model=where)
    except BadInputError as exc:
        labels, model.labels_note = None, exc.message
    classes = first.dims[1].min if len(first.dims) == 2 and first.dims[1].fixed else None
    if labels is not None and classes is not None and len(labels) != classes:
        model.labels_note = f"the recorded labels ({len(labels)}) do not match the {classes} classes: not used"
        labels = None
    model.labels = labels


def _self_check(model: ServedModel, golden: dict[str, np.ndarray],
                reference: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The golden inputs through the serving session, compared with the bundle's reference outputs at its
    tolerances; ParityError (exit 4) when they differ."""
    from ..bundle.verify import compare_all

    names = [o.name for o in model.outputs]
    got = dict(zip(names, model.session.run(names, {t.name: golden[t.name] for t in model.inputs})))
    compared = compare_all(cl.manifest_with(model.manifest, model.check_claim or model.claim), reference, got)
    failed = [c for c in compared if not c.passed]
    if failed:
        raise ParityError(f"The serving session ({model.runtime_config}) computes the bundle's golden outputs beyond "
                          f"tolerance: "
                          f"{'; '.join(c.name + ': ' + (c.reason or 'outside tolerance') for c in failed)}.",
                          hint="Serve with --runtime onnxruntime, or re-run `onnxgate bench` on this machine."
                          if model.runtime == "openvino" else
                          "Serve with --opt-level disable (the level verification used), or re-verify the "
                          "bundle on this machine with `onnxgate verify BUNDLE`.")
    return [{"output": c.name, "max_abs_err": c.max_abs_err, "rtol": c.tolerance.rtol, "atol": c.tolerance.atol,
             "passed": c.passed} for c in compared]
