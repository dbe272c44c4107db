"""``Claim``: one typed record of what a verification proved, and its one codec.

A verification (``verify.api.verify``, or the export ladder's proof of its winner handed to it) ends in one
``Claim``: the input specs, each dynamic dim's verified domain (interval, granularity, and why each edge is where
it is), each output's tolerance and the error measured under it, the runtime settings it held under
(``RuntimeCondition``: runtime, provider, precision hint, threads, layout, optimization level), the preprocessing
it assumes, the reference it was proven against (source and weights fingerprint) and the evidence (feeds, probed
sizes, seeds, data). Everything after verification reads this record: the bundle's manifest, the deploy stage,
``deploy_bundle``, ``serve``, the report and the zoo.

The codec is the only code that spells where a claim is stored:

* ONNX metadata: ``onnxgate.inputs`` and ``onnxgate.dims`` (the form ``onnxgate export`` has always written, so
  old files still verify) plus ``onnxgate.claim`` for the rest (``to_metadata`` / ``from_metadata``);
* the bundle manifest: ``tolerances`` and ``domain`` (their long-standing form: ``bundle/verify.py`` and signing
  read them) plus a ``claim`` section (``to_manifest`` / ``from_manifest``);
* a deploy artifact's side file (``to_side_file`` / ``from_side_file``) and the report (``to_report`` /
  ``from_report``).

Whatever is read comes from a file someone else may have written: every field is checked before use (the dims
and input specs by ``metadata``'s validated readers, the rest here) and a malformed one is a BadInputError naming
it. Torch-free, numpy-free, onnx-free: a production box reads claims with the base install.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import metadata as md
from .errors import BadInputError
from .spec import MAX_DIM, Dim, InputSpec, clip, describe_value
from .verify.tolerance import Tolerance

CLAIM_KEY = "onnxgate.claim"  # metadata entry: everything a claim holds beyond onnxgate.inputs / onnxgate.dims
CLAIM_VERSION = 1
SIDE_FILE_SUFFIX = ".claim.json"
# The manifest fields a claim is stored in (and that signing signs): long-standing ones first.
MANIFEST_TOLERANCES = "tolerances"
MANIFEST_DOMAIN = "domain"
MANIFEST_CLAIM = "claim"
MANIFEST_FIELDS = (MANIFEST_TOLERANCES, MANIFEST_DOMAIN, MANIFEST_CLAIM)
REMAKE_HINT = ("Re-create the bundle with `onnxgate bundle` (or fetch it again from its source); never edit "
               "manifest.json by hand.")

MAX_ITEMS = 10_000  # outputs, conditions, probes per dim ...: far beyond what onnxgate writes
MAX_TEXT = 4096
_DOMAIN_KEYS = ("min", "max", "example", "multiple_of")


# ---------------------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class DimFailure:
    """A size the verification ran that failed, and who failed there ("pytorch", or the candidate runtime)."""

    size: int
    by: str
    error: str


@dataclass(frozen=True)
class EdgeReason:
    """Why one end of a verified interval is where it is: ``end`` "min"/"max", the ``edge`` size, and the failing
    ``size`` beyond it (``by`` and ``error``: who failed there and how)."""

    end: str
    edge: int
    size: int
    by: str
    error: str


@dataclass(frozen=True)
class DimClaim:
    """One dynamic dim: the sizes claimed (``min``..``max``, ``multiple_of``; ``max`` None: unbounded), the traced
    size (``example``), what was declared, and the evidence: why each edge is where it is, the failures, every
    size probed and the sizes the probe budget left out."""

    name: str
    min: int
    max: int | None
    multiple_of: int | None = None
    example: int | None = None
    declared_min: int | None = None
    declared_max: int | None = None
    declared_multiple_of: int | None = None
    unranged: bool = False  # declared without a range: "wherever the PyTorch reference runs"
    narrower: bool = False  # the verified domain is narrower than declared (claimed only once accepted)
    granularity: int = 1  # the granularity verification found (claimed as ``multiple_of`` when it narrows)
    edges: tuple[EdgeReason, ...] = ()
    failures: tuple[DimFailure, ...] = ()
    probes: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()
    summary: str = ""

    def as_dim(self) -> Dim:
        """The claimed sizes as a ``Dim`` (what input generation, deploy and serve work with)."""
        return Dim(self.name, self.min, self.max, self.example, self.multiple_of)

    def allows(self, size: int) -> bool:
        return self.as_dim().contains(size)

    def describe(self) -> str:
        """"1..64", "multiples of 32 in 64..512", "only 224"."""
        if self.max is not None and self.min == self.max:
            return f"only {self.min}"
        span = f"{self.min}..{'' if self.max is None else self.max}"
        return f"multiples of {self.multiple_of} in {span}" if self.multiple_of else span


@dataclass(frozen=True)
class OutputClaim:
    """One output: the tolerance it was judged by, by which rule (``policy``: "dtype default", "contract",
    "user", "bundle"), and the largest error measured under it (None: not recorded)."""

    name: str
    rtol: float
    atol: float
    policy: str = "dtype default"
    max_abs_err: float | None = None

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.rtol, self.atol)


@dataclass(frozen=True)
class RuntimeCondition:
    """A runtime and the settings a claim was proven under: the claim holds under these, not under others (an
    OpenVINO IR verified with ``INFERENCE_PRECISION_HINT=f32`` says nothing of OpenVINO's bf16 default)."""

    runtime: str  # "onnxruntime", "openvino", ...
    provider: str | None = None  # "CPUExecutionProvider", "CPU"
    precision_hint: str | None = None  # "f32", "bf16"; None: the runtime's default
    threads: int | None = None  # None: the runtime's default
    layout: str | None = None  # "NCHW", "NHWC"; None: the model's own
    opt_level: str | None = None  # onnxruntime's graph optimization level
    version: str | None = None

    def describe(self) -> str:
        parts = [self.runtime + (f" {self.version}" if self.version else "")]
        parts += [p for p in (self.provider, self.precision_hint and f"precision {self.precision_hint}",
                              self.threads is not None and f"{self.threads} thread(s)", self.layout,
                              self.opt_level and f"optimization '{self.opt_level}'") if p]
        return ", ".join(parts)


@dataclass(frozen=True)
class ReferenceIdentity:
    """What the claim was proven against: the source model and a fingerprint of its weights."""

    source: str | None = None
    weights_sha256: str | None = None
    reinit_degenerate: bool = False


@dataclass(frozen=True)
class Evidence:
    """What ran: how many feeds (``cases``), the seeds of the random ones, the real-data feeds, and per dim the
    sizes probed."""

    cases: int = 0
    seeds: tuple[int, ...] = ()
    data: int = 0
    sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """What a verification proved about one artifact (see the module docstring)."""

    inputs: tuple[InputSpec, ...] = ()
    dims: tuple[DimClaim, ...] = ()
    outputs: tuple[OutputClaim, ...] = ()
    conditions: tuple[RuntimeCondition, ...] = ()
    preprocess: Mapping[str, Any] | None = None  # opaque: the recorded preprocessing spec, as ``preprocess`` has it
    reference: ReferenceIdentity = ReferenceIdentity()
    evidence: Evidence = Evidence()
    # Beyond sampling (issue 28), each opaque like ``preprocess`` and None when that check did not run:
    noise: Mapping[str, Any] | None = None  # per output: the reference's own float32 noise and its sources
    hunt: Mapping[str, Any] | None = None  # the divergence hunt: budget, seed, worst score, random vs hunted
    batching: Mapping[str, Any] | None = None  # batch invariance: sizes tried, the measured bound, largest held

    @property
    def domains(self) -> dict[str, Dim]:
        """Each dynamic dim's claimed sizes, as ``Dim``s."""
        return {d.name: d.as_dim() for d in self.dims}

    def dim(self, name: str) -> DimClaim | None:
        return next((d for d in self.dims if d.name == name), None)

    def tolerances(self) -> dict[str, Tolerance]:
        """Each output's tolerance (what a re-verification, a deploy check or serve's self-check judges by)."""
        return {o.name: o.tolerance for o in self.outputs}

    def with_tolerances(self, tolerances: Mapping[str, Tolerance], *, policy: str) -> Claim:
        """The claim judged by other tolerances (serve's OpenVINO at a reduced precision): those outputs'
        tolerances replaced, the policy saying why."""
        return replace(self, outputs=tuple(replace(o, rtol=float(tolerances[o.name].rtol),
                                                   atol=float(tolerances[o.name].atol), policy=policy)
                                           if o.name in tolerances else o for o in self.outputs))


def widened(claim: Claim, scale: Mapping[str, float | None], stated: Any, *, policy: str) -> Claim:
    """``claim`` with each output's tolerance widened to ``stated`` (a reduced-precision tolerance rule with
    ``for_scale(scale)``) where that is looser: how a configuration computing in bf16/f16 is judged."""
    tolerances = {}
    for out in claim.outputs:
        wide = stated.for_scale(scale.get(out.name))
        tolerances[out.name] = Tolerance(max(out.rtol, wide.rtol), max(out.atol, wide.atol))
    return claim.with_tolerances(tolerances, policy=policy)


# ------------------------------------------------------------------------------------------------ metadata


def metadata_entries(specs, dims: Mapping[str, Dim]) -> dict[str, str]:
    """The ``onnxgate.inputs`` / ``onnxgate.dims`` entries for these specs and dims: what ``onnxgate export``
    records in every model (the ladder writes ``**metadata_entries(prepared.specs, prepared.dims)``)."""
    return {md.INPUTS: json.dumps([s.to_dict() for s in specs]), **dims_entries(dims)}


def dims_entries(dims: Mapping[str, Dim]) -> dict[str, str]:
    """The ``onnxgate.dims`` entry alone: what a transform re-verifying (or narrowing) the dims it keeps writes
    (``transform/verifier.py``: ``ClaimCheck.metadata`` returns ``claim.dims_entries(self.dims)``)."""
    return {md.DIMS: json.dumps({n: _dim_entry(d) for n, d in dims.items()})}


def _dim_entry(dim: Dim) -> dict[str, Any]:
    return {"name": dim.name, "min": dim.min, "max": dim.max, "example": dim.example, "multiple_of": dim.multiple_of}


def to_metadata(claim: Claim) -> dict[str, str]:
    """The claim as ONNX ``metadata_props``: the specs and claimed dims in their long-standing entries, the rest
    in ``onnxgate.claim``."""
    entries = metadata_entries(claim.inputs, claim.domains) if claim.inputs else \
        {md.DIMS: json.dumps({d.name: _dim_entry(d.as_dim()) for d in claim.dims})}
    entries[CLAIM_KEY] = json.dumps(_extras(claim), sort_keys=True)
    return entries


def from_metadata(meta: Mapping[str, Any], *, model: str | Path, invalid_utf8=()) -> Claim | None:
    """The claim an ONNX file's metadata records (None when it records no input specs, dims or claim): the
    specs and dims through ``metadata``'s validated readers (old files, with no ``onnxgate.claim``, give a claim
    of their specs and dims only)."""
    found = md.input_specs(meta, model=model, invalid_utf8=invalid_utf8)
    specs, dims = found if found is not None else ([], md.dims(meta, model=model, invalid_utf8=invalid_utf8))
    extras = md.json_entry(meta, CLAIM_KEY, model=model, invalid_utf8=invalid_utf8)
    if found is None and not dims and extras is None:
        return None
    return _assemble(specs, dims, {}, extras, where=_Where(model, CLAIM_KEY, md.OVERRIDE_HINT))


def dims_of_metadata(meta: Mapping[str, Any], *, model: str | Path, invalid_utf8=()) -> dict[str, Dim]:
    """Only the claimed dims a model records (``{}`` when none)."""
    return md.dims(meta, model=model, invalid_utf8=invalid_utf8)


# ------------------------------------------------------------------------------------------------ manifest


def to_manifest(claim: Claim) -> dict[str, Any]:
    """The manifest fields of a claim: ``tolerances`` ({output: {rtol, atol}}), ``domain`` ({dim: {min, max,
    multiple_of, example, verified: {...}}}) and ``claim`` (inputs, conditions, reference, evidence, ...)."""
    return {MANIFEST_TOLERANCES: {o.name: {"rtol": float(o.rtol), "atol": float(o.atol)} for o in claim.outputs},
            MANIFEST_DOMAIN: {d.name: {"min": d.min, "max": d.max, "multiple_of": d.multiple_of,
                                       "example": d.example, "verified": _dim_record(d)} for d in claim.dims} or None,
            MANIFEST_CLAIM: {"inputs": [s.to_dict() for s in claim.inputs], **_extras(claim)}}


def from_manifest(manifest: Mapping[str, Any], *, where: str | Path = "the manifest") -> Claim:
    """The claim a bundle manifest states, every field checked (a bundle is someone else's file): the
    ``tolerances`` against ``outputs``, the ``domain`` through the same rules as ``onnxgate.dims``, the ``claim``
    section (absent in bundles written before it: then the claim holds the tolerances and domain only)."""
    at = _Where(where, "manifest", REMAKE_HINT)
    outputs = [o.get("name") for o in manifest.get("outputs") or [] if isinstance(o, dict)]
    tolerances = manifest_tolerances(manifest.get(MANIFEST_TOLERANCES, {}), outputs, str(where))
    domain = manifest.get(MANIFEST_DOMAIN)
    dims: dict[str, Dim] = {}
    records: dict[str, Any] = {}
    if domain:
        if not isinstance(domain, dict):
            raise BadInputError(f"{where} has a 'domain' that is not a mapping.", hint=REMAKE_HINT)
        plain = {n: {k: v for k, v in d.items() if k in _DOMAIN_KEYS} if isinstance(d, dict) else d
                 for n, d in domain.items()}
        dims = md.dims_from_raw(plain, model=where, key=MANIFEST_DOMAIN)
        records = {n: d.get("verified") for n, d in domain.items() if isinstance(d, dict) and d.get("verified")}
    section = manifest.get(MANIFEST_CLAIM)
    if section is not None and not isinstance(section, dict):
        raise at.malformed(f"'{MANIFEST_CLAIM}' must be a mapping, not {describe_value(section)}")
    section = dict(section or {})
    raw_inputs = section.pop("inputs", None)
    specs = md.specs_from_raw(raw_inputs, model=where, key=f"{MANIFEST_CLAIM}.inputs") if raw_inputs else []
    claim = _assemble(specs, dims, records, section or None, where=at)
    if not claim.outputs and tolerances:  # a bundle from before the claim section: its tolerance table only
        claim = replace(claim, outputs=tuple(OutputClaim(n, t.rtol, t.atol, "bundle") for n, t in tolerances.items()))
    known = {o.name for o in claim.outputs}
    missing = [n for n in tolerances if n not in known]
    if missing:
        claim = replace(claim, outputs=claim.outputs + tuple(OutputClaim(n, tolerances[n].rtol, tolerances[n].atol,
                                                                         "bundle") for n in missing))
    return claim


def manifest_tolerances(tolerances: Any, outputs: list, where: str) -> dict[str, Tolerance]:
    """The manifest's ``tolerances`` table checked against its ``outputs``: a finite rtol and atol >= 0 each."""
    def malformed(what: str) -> BadInputError:
        return BadInputError(f"{where} is malformed: {what}.", hint=REMAKE_HINT)

    if not isinstance(tolerances, dict):
        raise malformed(f"'tolerances' must be a mapping of output name to {{rtol, atol}}, not {_kind(tolerances)}")
    table = {}
    for name, tol in tolerances.items():
        if name not in outputs:
            raise malformed(f"'tolerances' names {name[:200]!r}, which is not in 'outputs'")
        if not isinstance(tol, dict):
            raise malformed(f"'tolerances'[{name[:200]!r}] must be a mapping with 'rtol' and 'atol', not {_kind(tol)}")
        values = {}
        for key in ("rtol", "atol"):
            value = tol.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value < 0:
                raise malformed(f"'tolerances'[{name[:200]!r}].{key} must be a finite number >= 0, not {_show(value)}")
            values[key] = float(value)
        table[name] = Tolerance(values["rtol"], values["atol"])
    return table


def manifest_with(manifest: Mapping[str, Any], claim: Claim) -> dict[str, Any]:
    """``manifest`` stating ``claim``'s tolerances: for readers that take a manifest (``bundle.verify.compare_all``)
    judging by a claim other than the bundle's own (serve's OpenVINO at a reduced precision)."""
    return {**manifest, MANIFEST_TOLERANCES: tolerance_table(claim.tolerances())}


def tolerance_table(tolerances: Mapping[str, Tolerance]) -> dict[str, dict[str, float]]:
    """The manifest's form of a tolerance table."""
    return {n: {"rtol": float(t.rtol), "atol": float(t.atol)} for n, t in tolerances.items()}


def from_domain(domain: Mapping[str, Any] | None, *, where: str | Path) -> Claim:
    """A claim holding only a plain domain table (``{"B": {"min": 1, "max": 64, "multiple_of": null, "example":
    2}}``, as ``write_bundle(domain=...)`` takes it), checked like the manifest's."""
    return from_report({"domain": dict(domain or {})}, where=where)


# ---------------------------------------------------------------------------------- side files and reports


def to_side_file(claim: Claim) -> str:
    """A deploy artifact's side file (``NAME.claim.json``): the claim under which the artifact was verified."""
    return json.dumps({"format": "onnxgate-claim", "version": CLAIM_VERSION, **to_report(claim)}, indent=2,
                      sort_keys=True) + "\n"


def from_side_file(text: str, *, where: str | Path) -> Claim:
    at = _Where(where, "claim", REMAKE_HINT)
    if len(text) > md.MAX_ENTRY_CHARS * 16:
        raise at.malformed(f"it is {len(text):,} characters long")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise at.malformed(f"it is not valid JSON ({clip(str(exc), 120)})") from None
    if not isinstance(raw, dict) or raw.get("format") != "onnxgate-claim":
        raise at.malformed('it is not an onnxgate claim (no "format": "onnxgate-claim")')
    return from_report({k: v for k, v in raw.items() if k not in ("format", "version")}, where=where)


def to_report(claim: Claim) -> dict[str, Any]:
    """The claim as the report (and a side file) shows it: plain JSON, every field."""
    return {"inputs": [s.to_dict() for s in claim.inputs],
            "domain": {d.name: {"min": d.min, "max": d.max, "multiple_of": d.multiple_of, "example": d.example,
                                "verified": _dim_record(d)} for d in claim.dims},
            **_extras(claim)}


def from_report(data: Mapping[str, Any], *, where: str | Path = "the report") -> Claim:
    at = _Where(where, "claim", REMAKE_HINT)
    if not isinstance(data, Mapping):
        raise at.malformed(f"it must be a mapping, not {describe_value(data)}")
    data = dict(data)
    raw_inputs = data.pop("inputs", None)
    specs = md.specs_from_raw(raw_inputs, model=where, key="claim.inputs") if raw_inputs else []
    domain = data.pop("domain", None) or {}
    if not isinstance(domain, dict):
        raise at.malformed(f"'domain' must be a mapping, not {describe_value(domain)}")
    plain = {n: {k: v for k, v in d.items() if k in _DOMAIN_KEYS} if isinstance(d, dict) else d
             for n, d in domain.items()}
    dims = md.dims_from_raw(plain, model=where, key="claim.domain")
    records = {n: d.get("verified") for n, d in domain.items() if isinstance(d, dict) and d.get("verified")}
    return _assemble(specs, dims, records, data or None, where=at)


# --------------------------------------------------------------------------------------- encoding details


def _dim_record(d: DimClaim) -> dict[str, Any]:
    return {"dim": d.name, "declared_min": d.declared_min, "declared_max": d.declared_max,
            "declared_multiple_of": d.declared_multiple_of, "traced": d.example, "verified_min": d.min,
            "verified_max": d.max, "multiple_of": d.granularity, "narrower": d.narrower, "summary": d.summary,
            "unranged": d.unranged,
            "reference_edges": {e.end: {"size": e.size, "by": e.by, "error": e.error, "edge": e.edge}
                                for e in d.edges},
            "failures": [{"size": f.size, "by": f.by, "error": f.error} for f in d.failures],
            "probes": list(d.probes), "skipped": list(d.skipped)}


def _extras(claim: Claim) -> dict[str, Any]:
    """Everything beyond the specs and the claimed dims: what ``onnxgate.claim`` and the manifest's ``claim``
    section hold."""
    return {"version": CLAIM_VERSION,
            "outputs": [{"name": o.name, "rtol": float(o.rtol), "atol": float(o.atol), "policy": o.policy,
                         "max_abs_err": o.max_abs_err} for o in claim.outputs],
            "conditions": [{k: getattr(c, k) for k in _CONDITION_FIELDS} for c in claim.conditions],
            "preprocess": dict(claim.preprocess) if claim.preprocess is not None else None,
            "reference": {"source": claim.reference.source, "weights_sha256": claim.reference.weights_sha256,
                          "reinit_degenerate": claim.reference.reinit_degenerate},
            "evidence": {"cases": claim.evidence.cases, "seeds": list(claim.evidence.seeds),
                         "data": claim.evidence.data,
                         "sizes": {n: list(s) for n, s in claim.evidence.sizes.items()}},
            "dims": {d.name: _dim_record(d) for d in claim.dims},
            **{key: dict(getattr(claim, key)) for key in _OPAQUE if getattr(claim, key) is not None}}


_OPAQUE = ("noise", "hunt", "batching")  # optional sections, written only when their check ran


_CONDITION_FIELDS = ("runtime", "provider", "precision_hint", "threads", "layout", "opt_level", "version")


class _Where:
    """Where a claim is read from, for messages: ``model`` (a file), the entry, and the way out."""

    def __init__(self, model: str | Path, key: str, hint: str):
        self.model, self.key, self.hint = model, key, hint

    def malformed(self, why: str) -> BadInputError:
        return md.malformed(self.model, self.key, why, hint=self.hint)


def _assemble(specs, dims: dict[str, Dim], records: dict[str, Any], extras: Any, *, where: _Where) -> Claim:
    """A Claim from checked specs and dims and the unchecked rest (``extras``: the ``onnxgate.claim`` form)."""
    if extras is None:
        extras = {}
    if not isinstance(extras, dict):
        raise where.malformed(f"it must be a JSON object, not {describe_value(extras)}")
    unknown = sorted(set(extras) - {"version", "outputs", "conditions", "preprocess", "reference", "evidence", "dims",
                                    *_OPAQUE})
    if unknown:
        raise where.malformed(f"it has unknown fields {', '.join(repr(clip(str(k), 20)) for k in unknown[:3])}")
    version = extras.get("version", CLAIM_VERSION)
    if not _is_int(version) or not 1 <= version <= CLAIM_VERSION:
        raise where.malformed(f"its version is {describe_value(version)}; this onnxgate reads up to {CLAIM_VERSION}")
    detail = {**records, **_mapping(extras.get("dims"), "dims", where)}
    dim_claims = tuple(_dim_claim(dim, detail.get(name), where) for name, dim in dims.items())
    outputs = tuple(_output(o, i, where) for i, o in enumerate(_items(extras.get("outputs"), "outputs", where)))
    if len({o.name for o in outputs}) != len(outputs):
        raise where.malformed("'outputs' names an output twice")
    conditions = tuple(_condition(c, i, where) for i, c in
                       enumerate(_items(extras.get("conditions"), "conditions", where)))
    opaque = {key: extras.get(key) for key in ("preprocess", *_OPAQUE)}
    for key, value in opaque.items():
        if value is not None and not isinstance(value, dict):
            raise where.malformed(f"'{key}' must be an object or null, not {describe_value(value)}")
    ref = _mapping(extras.get("reference"), "reference", where)
    reference = ReferenceIdentity(_text(ref.get("source"), "reference.source", where),
                                  _text(ref.get("weights_sha256"), "reference.weights_sha256", where),
                                  _flag(ref.get("reinit_degenerate", False), "reference.reinit_degenerate", where))
    ev = _mapping(extras.get("evidence"), "evidence", where)
    sizes = _mapping(ev.get("sizes"), "evidence.sizes", where)
    evidence = Evidence(_count(ev.get("cases", 0), "evidence.cases", where),
                        tuple(_count(s, "evidence.seeds", where) for s in _items(ev.get("seeds"), "evidence.seeds",
                                                                                   where)),
                        _count(ev.get("data", 0), "evidence.data", where),
                        {str(n): _sizes(v, f"evidence.sizes.{clip(str(n), 40)}", where) for n, v in sizes.items()})
    return Claim(tuple(specs), dim_claims, outputs, conditions, opaque["preprocess"], reference, evidence,
                 opaque["noise"], opaque["hunt"], opaque["batching"])


def _dim_claim(dim: Dim, record: Any, where: _Where) -> DimClaim:
    """A claimed dim (checked by ``metadata``) with its verification record (checked here), when one exists."""
    base = DimClaim(dim.name, dim.min, dim.max, dim.multiple_of, dim.example)
    if record is None:
        return base
    at = f"dims.{clip(dim.name, 40)}"
    rec = _mapping(record, at, where)
    edges_raw = _mapping(rec.get("reference_edges"), f"{at}.reference_edges", where)
    edges = []
    for end, e in edges_raw.items():
        if end not in ("min", "max"):
            raise where.malformed(f"'{at}.reference_edges' has the end {describe_value(end)} (min or max)")
        e = _mapping(e, f"{at}.reference_edges.{end}", where)
        edges.append(EdgeReason(end, _size(e.get("edge"), f"{at}.reference_edges.{end}.edge", where),
                                _size(e.get("size"), f"{at}.reference_edges.{end}.size", where),
                                _text(e.get("by"), f"{at}.by", where) or "?",
                                _text(e.get("error"), f"{at}.error", where) or ""))
    failures = tuple(DimFailure(_size(f.get("size"), f"{at}.failures", where), _text(f.get("by"), at, where) or "?",
                                _text(f.get("error"), at, where) or "")
                     for f in (_mapping(x, f"{at}.failures", where) for x in _items(rec.get("failures"),
                                                                                    f"{at}.failures", where)))
    declared_step = _opt_size(rec.get("declared_multiple_of"), f"{at}.declared_multiple_of", where)
    return replace(base, declared_min=_opt_size(rec.get("declared_min"), f"{at}.declared_min", where),
                   declared_max=_opt_size(rec.get("declared_max"), f"{at}.declared_max", where),
                   declared_multiple_of=declared_step,
                   unranged=_flag(rec.get("unranged", False), f"{at}.unranged", where),
                   narrower=_flag(rec.get("narrower", False), f"{at}.narrower", where), edges=tuple(edges),
                   granularity=max(1, _size(rec.get("multiple_of", 1), f"{at}.multiple_of", where)),
                   failures=failures, probes=_sizes(rec.get("probes"), f"{at}.probes", where),
                   skipped=_sizes(rec.get("skipped"), f"{at}.skipped", where),
                   summary=_text(rec.get("summary"), f"{at}.summary", where) or "")


def _output(raw: Any, i: int, where: _Where) -> OutputClaim:
    at = f"outputs[{i}]"
    o = _mapping(raw, at, where)
    name = _text(o.get("name"), f"{at}.name", where)
    if not name:
        raise where.malformed(f"'{at}' has no name")
    values = []
    for key in ("rtol", "atol"):
        value = o.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value < 0:
            raise where.malformed(f"'{at}.{key}' must be a finite number >= 0, not {_show(value)}")
        values.append(float(value))
    err = o.get("max_abs_err")
    if err is not None and (isinstance(err, bool) or not isinstance(err, (int, float)) or not _finite(err)
                            or err < 0):
        raise where.malformed(f"'{at}.max_abs_err' must be a finite number >= 0 or null, not {_show(err)}")
    return OutputClaim(name, values[0], values[1], _text(o.get("policy"), f"{at}.policy", where) or "dtype default",
                       None if err is None else float(err))


def _condition(raw: Any, i: int, where: _Where) -> RuntimeCondition:
    at = f"conditions[{i}]"
    c = _mapping(raw, at, where)
    unknown = sorted(set(c) - set(_CONDITION_FIELDS))
    if unknown:
        raise where.malformed(f"'{at}' has unknown fields {', '.join(repr(clip(str(k), 20)) for k in unknown[:3])}")
    runtime = _text(c.get("runtime"), f"{at}.runtime", where)
    if not runtime:
        raise where.malformed(f"'{at}' names no runtime")
    threads = c.get("threads")
    if threads is not None:
        threads = _count(threads, f"{at}.threads", where)
    return RuntimeCondition(runtime, *(_text(c.get(k), f"{at}.{k}", where) for k in
                                       ("provider", "precision_hint")), threads,
                            *(_text(c.get(k), f"{at}.{k}", where) for k in ("layout", "opt_level", "version")))


def _mapping(value: Any, at: str, where: _Where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise where.malformed(f"'{at}' must be an object, not {describe_value(value)}")
    return value


def _items(value: Any, at: str, where: _Where) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise where.malformed(f"'{at}' must be a list of at most {MAX_ITEMS:,} items, not {describe_value(value)}")
    return value


def _text(value: Any, at: str, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise where.malformed(f"'{at}' must be text of at most {MAX_TEXT} characters, not {describe_value(value)}")
    return value


def _flag(value: Any, at: str, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.malformed(f"'{at}' must be true or false, not {describe_value(value)}")
    return value


def _count(value: Any, at: str, where: _Where) -> int:
    if not _is_int(value) or not 0 <= value <= 2**63 - 1:
        raise where.malformed(f"'{at}' must be a whole number >= 0, not {describe_value(value)}")
    return value


def _size(value: Any, at: str, where: _Where) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_DIM:
        raise where.malformed(f"'{at}' must be a size in 0..{MAX_DIM:,}, not {describe_value(value)}")
    return value


def _opt_size(value: Any, at: str, where: _Where) -> int | None:
    return None if value is None else _size(value, at, where)


def _sizes(value: Any, at: str, where: _Where) -> tuple[int, ...]:
    return tuple(_size(v, at, where) for v in _items(value, at, where))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else _kind(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["Claim", "DimClaim", "DimFailure", "EdgeReason", "OutputClaim", "RuntimeCondition", "ReferenceIdentity",
           "Evidence", "CLAIM_KEY", "MANIFEST_FIELDS", "to_metadata", "from_metadata", "metadata_entries", "dims_entries",
           "dims_of_metadata", "to_manifest", "from_manifest", "manifest_tolerances", "manifest_with", "tolerance_table",
           "to_side_file", "from_side_file", "to_report", "from_report", "from_domain", "widened"]
