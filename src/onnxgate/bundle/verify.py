"""Re-verify a bundle where it will run: checksums first, then the golden inputs through onnxruntime.

This module imports neither torch nor onnx: it is what a production machine runs with only onnxgate's base
install. With ``runtime="onnxruntime==X.Y.Z"`` the model runs in an isolated virtual environment holding
exactly that release (see ``matrix.py``); otherwise in this process, with the onnxruntime installed here.

Outcomes are values, not exceptions: a tampered file, wrong numbers or a runtime that cannot load the model
each give a failed ``BundleVerification`` with a ``status``, a ``reason`` and an ``exit_code``. What raises is
what must stop verification before anything runs: a path that is not a bundle or a malformed manifest
(BadInputError, exit 2), and anything that would make onnxgate or a runtime touch files outside the bundle —
links, special files, external data leaving the folder, tar members that are links or escape, archives beyond
the size caps (UnsafeInputError, exit 7).

Nothing a bundle holds is trusted before it is checked, because the runtime matrix hands the model to old
onnxruntime releases whose own checks are weaker: onnxgate checks containment itself, the same way for every
runtime (see ``manifest.py`` for the files, ``check_external_data`` for what the model references,
``opened_bundle`` for archives).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import mmap
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import claim as cl
from ..errors import BadInputError, IntegrityError, UnsafeInputError
from ..fsutil import staging_dir
from ..npz import load_npz
from ..runtimes.ort import open_session
from ..verify import engine
from ..verify.compare import OutputComparison
from ..verify.tolerance import Tolerance, default_tolerance, sci
from . import manifest as mf
from ._onnx_refs import ProtoError, external_data_refs
from .matrix import RunOutcome, run_in_venv

# A manifest's tolerances are claims the bundle makes about itself; without a signature they cannot be trusted, but
# they can be held to sense. No precision onnxgate verifies (fp32, fp16, bf16, an INT8 file at its contract) needs an
# output to be allowed an error of a quarter of its own scale, and at rtol >= 1 an all-zero output passes: beyond
# these ceilings a comparison no longer tells the model from a wrong one. The same ceiling refuses golden outputs
# the model misses *by far* (more than that fraction of their scale), whatever the manifest allows.
MAX_RTOL = 0.25
MAX_SCALE_FRACTION = 0.25
_NUMERIC = "biufc"
_ORT_MEMORY_TAG = "_ORT_MEM_ADDR_"  # onnxruntime reads "*/_ORT_MEM_ADDR_/*" locations from a memory address

# status → process exit code; "pass" is the only success.
@dataclass
class BundleVerification:
    """The outcome of verifying one bundle on one runtime.

    ``status``: pass | fail (numbers outside tolerance) | tampered (a file differs from its checksum) |
    incompatible (the runtime cannot load or run the model) | unavailable (that runtime cannot be installed
    here) | crashed (the runtime process died).
    """

    bundle: str
    status: str
    runtime: str  # what was asked for: "onnxruntime" (this process) or "onnxruntime==1.17.3"
    runtime_version: str | None = None  # what actually ran
    files_checked: list[str] = field(default_factory=list)
    outputs: list[OutputComparison] = field(default_factory=list)
    reason: str | None = None
    tolerances: list[dict[str, Any]] = field(default_factory=list)  # per output: rtol, atol, source, ceiling
    signature: str | None = None  # unsigned | signed, not checked | verified with KEY (see signing.py)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def exit_code(self) -> int:
        from ..outcome import judge

        return judge(self).exit_code

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outputs"] = [c.to_dict() for c in self.outputs]
        return {"passed": self.passed, **data}


def verify_bundle(path: str | Path, *, runtime: str | None = None,
                  trust: str | Path | None = None) -> BundleVerification:
    """Verify the bundle folder (or ``.tar.gz``) at ``path`` on one runtime.

    ``runtime=None`` uses this process's onnxruntime; ``"onnxruntime==1.17.3"`` an isolated venv with it.
    ``trust``: a public key the bundle must be signed with (``onnxgate sign``); see ``verify_matrix``.
    """
    return verify_matrix(path, [runtime], trust=trust)[0]


def verify_matrix(path: str | Path, runtimes: list[str | None], *,
                  limits: TarLimits | None = None, trust: str | Path | None = None) -> list[BundleVerification]:
    """Verify one bundle on several runtimes (None = this process's onnxruntime): one result per runtime.

    Everything onnxgate can check itself is checked once, before any runtime sees the bundle: the manifest's
    shape (exit 2), links and special files (exit 7), each file's size and then its checksum (exit 9), and
    the model's external-data references (exit 7 when one leaves the bundle, 9 when it names a file the
    manifest does not vouch for). So an old onnxruntime in the matrix, whose own checks are weaker, is only
    ever handed a bundle already proven self-contained. ``limits`` bounds what a tar may unpack to. With
    ``trust`` (a public key file), the bundle's signature, signed claim and signed digests are checked after the
    files (exit 9 naming which, see ``signing.py``); an unsigned bundle then fails too.
    """
    with opened_bundle(Path(path), limits=limits) as folder:
        manifest = mf.read_manifest(folder)
        found = mf.scan_bundle(folder)  # refuses links before any file is opened
        problems = mf.check_files(folder, manifest, found)
        checked = sorted(manifest["files"])
        what = "the bundle changed since it was written"
        if not problems:
            problems = check_external_data(folder, manifest)
            what = "the model's external data does not match the bundle"
        signature = _signature(folder, manifest, trust) if not problems else None
        if isinstance(signature, list):
            problems, what, signature = signature, f"the signature check against '{trust}' failed", "invalid"
        if problems:
            reason = f"{what}: " + "; ".join(problems[:20]) + (
                f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
            return [BundleVerification(str(path), "tampered", runtime or "onnxruntime", files_checked=checked,
                                       reason=reason, signature=signature) for runtime in runtimes]
        inputs = load_npz(folder / mf.GOLDEN_INPUTS, bundle=True)
        reference = load_npz(folder / mf.REFERENCE_OUTPUTS, bundle=True)
        tolerances = checked_tolerances(manifest, reference, where=f"The bundle '{path}'")  # before anything runs
        results = []
        for runtime in runtimes:
            run = run_in_venv(folder / mf.MODEL, inputs, runtime) if runtime else run_here(folder / mf.MODEL, inputs)
            result = BundleVerification(str(path), run.status, runtime or "onnxruntime", run.runtime_version,
                                        checked, reason=run.reason, tolerances=tolerances, signature=signature)
            if run.outputs is not None:  # it ran; now judge its numbers
                result.outputs = compare_all(manifest, reference, run.outputs)
                failed = [c for c in result.outputs if not c.passed]
                if failed:
                    result.status = "fail"
                    far = [c for c in failed if c.reason and c.reason.startswith(_BY_FAR)]
                    result.reason = (f"output(s) {', '.join(c.name for c in failed)} differ from the reference beyond "
                                     "tolerance" + (f" ({far[0].name}: {far[0].reason})" if far else ""))
            results.append(result)
        return results


def _signature(folder: Path, manifest: dict[str, Any], trust: str | Path | None) -> str | list[str]:
    """The signature's state without a trusted key; with one, its problems (a list) or 'verified with KEY'."""
    from . import signing

    if trust is None:
        return signing.signature_state(folder)
    problems = signing.check_signature(folder, manifest, Path(trust))
    return problems or f"verified with '{trust}'"


def check_external_data(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The external-data files ``model.onnx`` makes a runtime open, checked by onnxgate for every runtime.

    Raises UnsafeInputError when a location leaves the bundle (absolute, '..', a drive, a backslash path,
    onnxruntime's in-memory address tag) and BadInputError when the model cannot be parsed; returns problems
    (reported as a changed bundle, exit 9) when a location names a file the manifest does not list with a
    checksum, or an offset/length beyond that file. Links were refused by the scan before this runs, so a
    listed path is a regular file inside the bundle. Reads the protobuf without the onnx package.
    """
    model = folder / mf.MODEL
    where = f"The model '{model}'"
    try:
        with open(model, "rb") as fh:
            # Mapped, not read: a 2 GB model costs no extra memory. Closed by the garbage collector, since a
            # ProtoError's traceback may still hold a view of it.
            size = os.fstat(fh.fileno()).st_size
            data = b"" if size == 0 else mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        refs = external_data_refs(data)
    except ProtoError as exc:
        raise BadInputError(f"{where} is not a readable ONNX model ({exc}), so onnxgate cannot tell which files it "
                            "would make the runtime open.", hint="Re-create the bundle from a valid model.") from None
    problems = []
    for ref in refs:
        tensor = ref.tensor.decode("utf-8", "replace")[:200]
        locations = ref.values(b"location")
        if ref.external and not locations:
            problems.append(f"{mf.MODEL}: tensor '{tensor}' keeps its data externally but names no location")
        for raw in locations:
            rel = _checked_location(raw, f"{where} (the external-data location of tensor '{tensor}')")
            entry = manifest["files"].get(rel)
            if entry is None:
                problems.append(f"{mf.MODEL}: tensor '{tensor}' reads external data from '{rel}', which the "
                                "manifest does not list with a checksum")
                continue
            problem = _range_problem(ref, entry["bytes"])
            if problem:
                problems.append(f"{mf.MODEL}: tensor '{tensor}' {problem} of '{rel}' ({entry['bytes']:,} bytes)")
    return problems


def _checked_location(raw: bytes, where: str) -> str:
    """An external-data location as the bundle-relative path it names; UnsafeInputError if it leaves the bundle."""
    hint = ("A bundle's model may only name external-data files inside the bundle, by plain relative paths; "
            "re-create the bundle with `onnxgate bundle`.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeInputError(f"{where} names an external-data location that is not UTF-8 text ({raw[:80]!r}).",
                               hint=hint) from None
    if _ORT_MEMORY_TAG in text or "\\" in text:
        raise UnsafeInputError(f"{where} names the external-data location {text[:200]!r}, which onnxruntime would "
                               "not read as a file in the bundle (a memory address, or a Windows path).", hint=hint)
    rel = mf.safe_relative(text, where=where).as_posix()
    if len(rel) > mf.MAX_PATH_CHARS or rel in ("", "."):
        raise UnsafeInputError(f"{where} names the external-data location {text[:200]!r}, which is no file name.",
                               hint=hint)
    return rel


def _range_problem(ref, size: int) -> str | None:
    """Why the tensor's offset/length cannot lie within a file of ``size`` bytes (None when they do)."""
    numbers = {}
    for key in (b"offset", b"length"):
        for raw in ref.values(key):
            text = raw.decode("ascii", "replace")
            if not text.isdigit() or len(text) > 20:
                return f"gives the external-data {key.decode()} {text[:40]!r}, not a whole number,"
            numbers[key] = int(text)
    offset, length = numbers.get(b"offset", 0), numbers.get(b"length", 0)
    if offset + length > size:
        return f"reads bytes {offset:,}..{offset + length:,}, beyond the end"
    return None


def run_here(model: Path, inputs: dict[str, np.ndarray]) -> RunOutcome:
    """Run the model with this process's onnxruntime, the same way the venv worker does."""
    import onnxruntime

    from ..runtimes.venv_worker import ModelRunError, run_model

    version = onnxruntime.__version__
    try:
        return RunOutcome("pass", version, outputs=run_model(str(model), inputs, session_factory=open_session))
    except ModelRunError as exc:
        return RunOutcome("incompatible", version, reason=f"onnxruntime {version} cannot {exc.stage} the model: "
                                                          f"{exc.message}")


def checked_tolerances(manifest: dict[str, Any], reference: dict[str, np.ndarray], *,
                       where: str = "The bundle") -> list[dict[str, Any]]:
    """The manifest's tolerance of every output, with where it comes from and the ceiling it was held to; a
    BadInputError (exit 2: the manifest claims what onnxgate never writes) for one beyond the ceiling of its
    output (``MAX_RTOL``; atol at most ``MAX_SCALE_FRACTION`` x the reference's scale, or the dtype's default
    atol when that is larger)."""
    table = []
    recorded = _recorded(manifest, where)
    for spec in manifest["outputs"]:
        name = spec["name"]
        tol = recorded.get(name)
        array = np.asarray(reference[name]) if name in reference else None
        dtype = array.dtype.name if array is not None else str(spec.get("dtype"))
        default = default_tolerance(dtype)
        if tol is None:
            table.append({"output": name, "rtol": default.rtol, "atol": default.atol,
                          "source": f"the {dtype} default (the manifest names no tolerance for it)"})
            continue
        if array is None or array.dtype.kind not in _NUMERIC:  # no reference to judge by: its comparison fails
            table.append({"output": name, "rtol": tol.rtol, "atol": tol.atol, "source": "manifest.json"})
            continue
        ceiling = tolerance_ceiling(array, dtype)
        if tol.rtol > ceiling.rtol or tol.atol > ceiling.atol:
            raise BadInputError(
                f"{where} claims a tolerance for output '{name[:200]}' (rtol={sci(tol.rtol)}, "
                f"atol={sci(tol.atol)}) beyond what its {dtype} precision allows (rtol <= {sci(ceiling.rtol)}, "
                f"atol <= {sci(ceiling.atol)}: {MAX_SCALE_FRACTION:g} x the reference's scale, or the {dtype} "
                "default): a comparison at it would pass a wrong model, so the bundle proves nothing. onnxgate "
                "never writes such a manifest; it was edited.",
                hint="Do not use this bundle: re-create it with `onnxgate bundle` (or fetch it again from its source).")
        same = tol.rtol == default.rtol and tol.atol == default.atol
        source = (f"manifest.json, the {dtype} default" if same else
                  f"manifest.json, set when the bundle was written (the {dtype} default is {default})")
        table.append({"output": name, "rtol": tol.rtol, "atol": tol.atol, "source": source,
                      "ceiling": {"rtol": ceiling.rtol, "atol": ceiling.atol}})
    return table


def _recorded(manifest: dict[str, Any], where: str) -> dict[str, Tolerance]:
    """The manifest's tolerance table through the claim codec (``manifest.read_manifest`` checked it already)."""
    return cl.manifest_tolerances(manifest[cl.MANIFEST_TOLERANCES], [o["name"] for o in manifest["outputs"]], where)


def tolerance_ceiling(reference: np.ndarray | None, dtype: str) -> Tolerance:
    """The loosest tolerance a manifest may give an output whose reference is ``reference`` (see ``MAX_RTOL``)."""
    return engine.ceiling(reference, dtype, max_rtol=MAX_RTOL, max_scale_fraction=MAX_SCALE_FRACTION)


_BY_FAR = "misses the reference by far"


def compare_all(manifest: dict[str, Any], reference: dict[str, np.ndarray],
                got: dict[str, np.ndarray]) -> list[OutputComparison]:
    """Compare every output the manifest lists with its reference, at the manifest's tolerances — with the same
    engine as `onnxgate verify` (scale-relative judging for huge outputs, NaN/Inf placement, exact integers).

    The arrays come from the bundle and the runtime, so they are checked before the engine sees them: an
    output whose reference (or result) is not numeric, or a detection group that does not line up, is a failed
    comparison with its reason, never an exception.
    """
    names = [spec["name"] for spec in manifest["outputs"]]
    tolerances = _recorded(manifest, "the manifest")
    failed: dict[str, str] = {}
    for name in names:
        if name not in reference:
            failed[name] = "missing from reference_outputs.npz"
        elif np.asarray(reference[name]).dtype.kind not in _NUMERIC:
            failed[name] = f"the reference has dtype {np.asarray(reference[name]).dtype}, which is not numeric"
        elif name in got and np.asarray(got[name]).dtype.kind not in _NUMERIC:
            failed[name] = f"the runtime returned dtype {np.asarray(got[name]).dtype}, which is not numeric"
    comparable = {n: reference[n] for n in names if n not in failed}
    checked_tolerances(manifest, comparable)  # a tolerance beyond its output's ceiling: BadInputError
    try:
        compared = engine.compare(comparable, got, tolerances=tolerances, reference_label="the reference")
    except (ValueError, TypeError, IndexError) as exc:  # e.g. boxes/scores/labels of different counts
        compared = [engine.not_compared(n, f"cannot be compared: {str(exc)[:300]}", tolerances.get(n))
                    for n in comparable]
    for comp in compared:  # whatever the manifest allows: an output missed by far is not reproduced
        if comp.name not in comparable or any(n.startswith("compared as detections") for n in comp.notes):
            continue  # detections are judged as IoU-matched sets, not element by element
        scale = engine.output_scale(np.asarray(comparable[comp.name]))
        if comp.passed and comp.max_abs_err is not None and scale > 0 and comp.max_abs_err > MAX_SCALE_FRACTION * scale:
            comp.passed = False
            comp.reason = (f"{_BY_FAR}: max abs err {sci(comp.max_abs_err)} is {comp.max_abs_err / scale:.0%} of the "
                           f"output's scale (max |ref| = {sci(scale)}); no precision errs beyond "
                           f"{MAX_SCALE_FRACTION:.0%}, so the golden outputs are not what this model computes")
    return compared + [engine.not_compared(n, why, tolerances.get(n)) for n, why in failed.items()]


# ------------------------------------------------------------------------------------------------ tar files


@dataclass(frozen=True)
class TarLimits:
    """What a bundle archive may unpack to, checked from its headers before anything is written."""

    max_members: int = 10_000
    max_member_bytes: int = 32 << 30
    max_total_bytes: int = 64 << 30
    max_header_bytes: int = 1 << 20  # one PAX or GNU long-name header; tarfile reads it whole into memory


class _HeaderTooLarge(Exception):
    pass


class _BoundedReads(io.RawIOBase):
    """A decompressed archive stream whose single reads are bounded.

    tarfile reads a PAX or GNU long-name header's whole content with one ``read(size)`` while listing members,
    before onnxgate sees the member: a gzip of zeros could declare a multi-gigabyte header. Refusing any read
    larger than the largest block onnxgate itself asks for turns that into a clean refusal.
    """

    def __init__(self, raw, limit: int):
        self._raw, self._limit = raw, limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._limit:
            raise _HeaderTooLarge(size)
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


_COPY_BLOCK = 1 << 20


@contextmanager
def opened_bundle(path: Path, *, limits: TarLimits | None = None) -> Iterator[Path]:
    """The bundle folder at ``path``; a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz) is unpacked first.

    Unpacking is onnxgate's own, never ``extractall``: every header is read and checked first (regular files
    and folders only — no links, devices or FIFOs; no absolute paths or '..'; one top-level folder; caps on
    member count, member size and total size; enough free space), then the members are written one by one
    into an owner-tagged staging folder in ``$TMPDIR`` (see ``fsutil.staging_dir``), which is removed when
    verification ends, or by the next run if this one is killed.
    """
    if path.is_dir():
        yield path
        return
    if not path.exists():
        raise BadInputError(f"The bundle '{path}' does not exist.",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    if not path.is_file():
        raise BadInputError(f"'{path}' is neither a bundle folder nor a tar archive (it is not a regular file).",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    limits = limits or TarLimits()
    with staging_dir("bundle") as staging:
        yield _unpack(path, staging, limits)


def _unpack(path: Path, staging: Path, limits: TarLimits) -> Path:
    hint = "Only unpack bundles written by `onnxgate bundle --tar`; re-create or re-download this one."
    with open(path, "rb") as raw, _decompressed(raw) as stream:
        bounded = _BoundedReads(stream, max(limits.max_header_bytes + tarfile.BLOCKSIZE, _COPY_BLOCK))
        try:
            tar = tarfile.open(fileobj=bounded, mode="r:")
            members = _checked_members(tar, path, limits, hint)
        except _HeaderTooLarge:
            raise UnsafeInputError(f"The archive '{path}' holds a member header larger than "
                                   f"{limits.max_header_bytes:,} bytes; onnxgate does not read it.",
                                   hint=hint) from None
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            raise BadInputError(f"'{path}' is neither a bundle folder nor a readable tar archive "
                                f"({str(exc)[:200] or type(exc).__name__}).",
                                hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.") from None
        tops = {rel.split("/", 1)[0] for rel, _member in members}
        if len(tops) != 1 or any(rel == next(iter(tops)) and not m.isdir() for rel, m in members):
            raise BadInputError(f"The archive '{path}' does not hold exactly one bundle folder.",
                                hint="Pass a .tar.gz written by `onnxgate bundle --tar`.")
        total = sum(m.size for _rel, m in members)
        free = shutil.disk_usage(staging).free
        if total + (16 << 20) > free:
            raise BadInputError(f"Unpacking '{path}' needs {total:,} bytes, but '{staging.parent}' has {free:,} "
                                "free.", hint="Point TMPDIR at a folder with more space, or unpack the bundle "
                                "yourself and verify the folder.")
        for rel, member in members:
            _extract_one(tar, member, staging / rel, path, hint)
        return staging / tops.pop()


@contextmanager
def _decompressed(raw):
    """The archive's tar stream, whatever compression its magic bytes name."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        opened = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic.startswith(b"BZh"):
        opened = bz2.BZ2File(raw, mode="rb")
    elif magic.startswith(b"\xfd7zXZ\x00"):
        opened = lzma.LZMAFile(raw, mode="rb")
    else:
        opened = raw
    try:
        yield opened
    finally:
        if opened is not raw:
            opened.close()


def _checked_members(tar: tarfile.TarFile, path: Path, limits: TarLimits,
                     hint: str) -> list[tuple[str, tarfile.TarInfo]]:
    """Every member's header, checked, before anything is written; UnsafeInputError naming the first bad one."""
    members: list[tuple[str, tarfile.TarInfo]] = []
    seen: set[str] = set()
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= limits.max_members:
            raise UnsafeInputError(f"The archive '{path}' holds more than {limits.max_members:,} members; a bundle "
                                   "holds a handful.", hint=hint)
        name = member.name
        where = f"The archive '{path}' (member {name[:200]!r})"
        if not (member.isreg() or member.isdir()) or member.issparse():
            kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk() else
                    "a device" if member.isdev() else "a sparse file" if member.issparse() else "a special file")
            target = f" to '{member.linkname[:200]}'" if member.issym() or member.islnk() else ""
            raise UnsafeInputError(f"{where} is {kind}{target}; a bundle holds only regular files and folders, and "
                                   "onnxgate does not unpack it.", hint=hint)
        rel = mf.safe_relative(name, where=where).as_posix() if name not in ("", ".", "./") else "."
        if rel == "." or "\\" in name:
            if rel == "." and member.isdir():
                continue  # the archive's root entry, "./"
            raise BadInputError(f"{where} has no usable name.", hint=hint)
        if len(rel) > mf.MAX_PATH_CHARS or rel.count("/") >= mf.MAX_PATH_DEPTH:
            raise UnsafeInputError(f"{where} has a path longer than {mf.MAX_PATH_CHARS} characters or deeper than "
                                   f"{mf.MAX_PATH_DEPTH} folders.", hint=hint)
        if rel in seen:
            raise UnsafeInputError(f"{where} appears twice; the second copy would silently replace the first.",
                                   hint=hint)
        seen.add(rel)
        if member.size > limits.max_member_bytes:
            raise UnsafeInputError(f"{where} declares {member.size:,} bytes, more than the {limits.max_member_bytes:,} "
                                   "onnxgate unpacks per file.", hint=hint)
        total += member.size
        if total > limits.max_total_bytes:
            raise UnsafeInputError(f"The archive '{path}' declares more than {limits.max_total_bytes:,} bytes in all "
                                   f"(reached at member {name[:200]!r}); onnxgate does not unpack it.", hint=hint)
        members.append((rel, member))
    return members


def _extract_one(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, path: Path, hint: str) -> None:
    """Write one checked member: a folder, or a file created anew (never through a link), exactly its size."""
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise BadInputError(f"The archive '{path}' cannot be unpacked at member '{member.name[:200]}': "
                            f"{exc.strerror or exc} (members that clash with each other?).", hint=hint) from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        source = tar.extractfile(member)
        while written < member.size:
            try:
                block = source.read(min(_COPY_BLOCK, member.size - written))
            except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:  # gzip CRC: OSError
                raise IntegrityError(f"The archive '{path}' is damaged at member '{member.name[:200]}': "
                                     f"{str(exc)[:200] or type(exc).__name__}.", hint=hint) from None
            if not block:
                break
            try:
                out.write(block)
            except OSError as exc:
                raise BadInputError(f"Cannot unpack '{path}' into '{target.parent}': {exc.strerror or exc}.",
                                    hint="Point TMPDIR at a folder with more space, or unpack the bundle yourself "
                                         "and verify the folder.") from None
            written += len(block)
    if written != member.size:
        raise IntegrityError(f"The archive '{path}' ends inside member '{member.name[:200]}' ({written:,} of "
                             f"{member.size:,} bytes).", hint=hint)
