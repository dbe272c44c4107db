"""The one loading policy for model and weights files: every ``torch.load`` and ``.pt2`` load goes through here.

Array files (``.npz``/``.npy``) are read with ``allow_pickle=False`` everywhere; ``load_npz`` below serves the
``bundle`` command's ``--golden``/``--reference``, while feeds (``verify/inputs.py``) and bundle golden files
(``bundle/verify.py``, which also bounds every allocation) have readers of their own.

A pickle is a program: unpickling runs whatever callables the file names. So nothing here unpickles arbitrary
objects unless the user passed ``--trust-pickle``:

* ``torch_load``: ``torch.load(weights_only=True)`` (tensors and plain containers only); a refused file is a
  clear ``UnsafeInputError`` (exit 7) unless trusted.
* ``check_pt2_archive``: a ``torch.export`` archive (``.pt2``) is inspected *before* torch touches it, because
  ``torch.export.load`` unpickles with ``weights_only=False`` in several places (weights or constants stored
  with ``use_pickle``, the sample inputs when ``weights_only`` refuses them, opaque and TorchBind constants,
  legacy archives). Every pickled member must pass ``weights_only``; opaque objects and legacy layouts are
  refused. ``load_pt2`` then loads the checked archive with torch's archive reader directly, never through
  ``torch.export.load``'s fallback to the pre-2.7 format (which would unpickle whatever a look-alike zip holds).
* ``load_npz``: ``numpy.load(allow_pickle=False)``; object arrays are refused.

Torch is imported lazily (the npz path is used on torch-free machines).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import BadInputError, ModelSourceError, UnsafeInputError
from .sources._text import describe  # the sources' one error description (type + first line)

SAFE_FORMATS_HINT = (
    "Save it instead as a state dict (torch.save(model.state_dict(), PATH), then load it with --arch), as "
    "TorchScript (torch.jit.save) or as a torch.export archive (torch.export.save, .pt2)."
)
_TRUST_HINT = "Pass --trust-pickle (trust_pickle=True) only if the file comes from a source you trust. "

# torch.export archive layout (torch/export/pt2_archive/constants.py), relative to the archive's root folder.
_PT2_DATA_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_TENSOR_CONSTANT_PREFIX = "tensor_"  # constants stored as tensors; "custom_obj_" / "opaque_obj_" are objects


def torch_load(path: Path, *, trust_pickle: bool) -> Any:
    """``torch.load`` that unpickles arbitrary objects only when the user trusts the file."""
    import torch

    try:
        with warnings.catch_warnings():
            # Plain pickle.dump files make torch warn about their protocol just before it refuses them anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = exc  # weights_only refused the content: custom objects, or bytes that are no pickle at all
    except Exception as exc:
        raise unreadable(path, describe(exc)) from exc
    if not trust_pickle:
        if not _holds_pickle(path, refusal):
            raise unreadable(path, "it is neither an archive written by torch.save nor a pickle") from refusal
        raise UnsafeInputError(
            f"'{path}' is a full Python pickle rather than plain weights{_named_global(refusal)}, and unpickling it "
            "runs code stored in the file, which can do anything on this machine; onnxgate refuses to load it by "
            "default.",
            hint=_TRUST_HINT + SAFE_FORMATS_HINT,
        ) from refusal
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ModelSourceError(
            f"'{path}' is a pickled model whose classes cannot be imported here: {describe(exc)}.",
            hint="A pickle stores only the module and class names, not their code: make the package that defines "
            f"the model importable (install it or add it to PYTHONPATH). {SAFE_FORMATS_HINT}",
        ) from exc
    except Exception as exc:
        raise unreadable(path, describe(exc)) from exc


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` could only read by unpickling arbitrary objects.

    Called before the archive is loaded whenever the user did not pass ``--trust-pickle``. Reads the archive's
    JSON payload configs and tries every pickled member with ``weights_only`` semantics; nothing is executed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist() if not info.is_dir()}
            root = _pt2_root(path, members)
            checked = {name for name, _ in _payload_configs(members, root)}
            for config_name, kind in _payload_configs(members, root):
                checked |= _check_payload_config(path, archive, root, config_name, kind, members)
            for name in members:
                relative = name[len(root):]
                if name in checked or relative in _PT2_DATA_FILES or relative.startswith(("models/", "extra/")):
                    continue  # raw tensor bytes, text and JSON (read by torch's JSON deserializer): no pickle
                # Anything else (sample inputs, a legacy weights file, an unknown member) is a torch.save pickle
                # or worse: it must load as plain tensors.
                _require_weights_only(path, archive, name, what=relative)
    except zipfile.BadZipFile as exc:
        raise unreadable(path, f"it is a damaged zip archive ({describe(exc)})") from exc
    except OSError as exc:
        raise unreadable(path, describe(exc)) from exc


def load_pt2(path: Path) -> Any:
    """Load a checked ``.pt2`` archive's program with torch's archive reader (no legacy-format fallback)."""
    from torch.export.pt2_archive._package import load_pt2 as _torch_load_pt2

    contents = _torch_load_pt2(str(path))
    programs = contents.exported_programs
    if not programs:
        raise unreadable(path, "the archive holds no exported program")
    return programs.get("model") or next(iter(programs.values()))


def load_npz(path: str | Path, *, what: str) -> dict[str, Any]:
    """Every array of an ``.npz`` file, read without pickle (object arrays are refused: exit 7)."""
    import numpy as np

    if not zipfile.is_zipfile(path):  # also False for a missing file; np.load would try it as a pickle
        raise BadInputError(f"{what} '{path}' is not an .npz archive (missing, or not a zip file).",
                            hint="Save it with numpy.savez(PATH, name=array, ...): one array per model input/output.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:  # object arrays: would need pickle
        raise UnsafeInputError(f"{what} '{path}' holds pickled object arrays, which onnxgate does not load.",
                               hint="Save plain numeric arrays (numpy.savez with numeric dtypes).") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(f"{what} '{path}' is not a readable .npz file ({describe(exc)}).",
                            hint="Give a file written by numpy.savez.") from exc


def unreadable(path: Path, reason: str) -> ModelSourceError:
    return ModelSourceError(
        f"'{path}' is not a file PyTorch can load ({reason}).",
        hint="Give a TorchScript file, a torch.export archive (.pt2), a state dict with --arch, or a pickled "
        "nn.Module with --trust-pickle.",
    )


def _pt2_root(path: Path, members: dict[str, zipfile.ZipInfo]) -> str:
    """The archive's root folder ("name/"), from its ``archive_format`` entry, which must say pt2."""
    formats = [name for name in members if name.endswith("archive_format") and name.count("/") <= 1]
    if len(formats) != 1:
        raise unreadable(path, "it is a zip archive but not a torch.export archive (no single archive_format entry)")
    root = formats[0][: -len("archive_format")]
    return root


def _payload_configs(members: dict[str, zipfile.ZipInfo], root: str) -> list[tuple[str, str]]:
    found = []
    for name in members:
        relative = name[len(root):]
        if re.fullmatch(r"data/weights/[^/]+_weights_config\.json", relative):
            found.append((name, "weights"))
        elif re.fullmatch(r"data/constants/[^/]+_constants_config\.json", relative):
            found.append((name, "constants"))
    return found


def _check_payload_config(path: Path, archive: zipfile.ZipFile, root: str, config_name: str, kind: str,
                          members: dict[str, zipfile.ZipInfo]) -> set[str]:
    """Each entry of a weights/constants config: raw tensors are fine; pickled ones must pass weights_only;
    opaque and TorchBind objects are refused (they unpickle arbitrary objects). Returns the members checked."""
    try:
        config = json.loads(archive.read(config_name).decode("utf-8")).get("config", {})
        entries = list(config.items())
    except (ValueError, AttributeError) as exc:
        raise unreadable(path, f"its {kind} config {config_name} is not valid JSON") from exc
    checked = set()
    for fqn, meta in entries:
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise unreadable(path, f"its {kind} config {config_name} has a malformed entry for '{fqn}'")
        path_name = meta["path_name"]
        if kind == "constants" and not path_name.startswith(_TENSOR_CONSTANT_PREFIX):
            raise UnsafeInputError(
                f"'{path}' stores the constant '{fqn}' as a pickled Python object ({path_name}); loading it would "
                "run code chosen by whoever wrote the file, so onnxgate refuses the archive by default.",
                hint=_TRUST_HINT + "Or export a model whose constants are plain tensors.",
            )
        member = f"{root}data/{kind}/{path_name}"
        if member not in members:
            raise unreadable(path, f"its {kind} config names {path_name}, which the archive lacks")
        if meta.get("use_pickle"):
            _require_weights_only(path, archive, member, what=f"{kind[:-1]} '{fqn}'")
        checked.add(member)
    return checked


def _require_weights_only(path: Path, archive: zipfile.ZipFile, member: str, *, what: str) -> None:
    import torch

    data = archive.read(member)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeInputError(
            f"'{path}' stores its {what} as a Python pickle that is not plain tensors{_named_global(exc)}; "
            "torch.export.load would unpickle it with weights_only=False, running code chosen by whoever wrote "
            "the file, so onnxgate refuses the archive by default.",
            hint=_TRUST_HINT + "Re-save the program with torch.export.save from a model holding plain tensors.",
        ) from exc
    except Exception as exc:  # not a pickle at all: torch would fall back to weights_only=False on it too
        raise UnsafeInputError(
            f"'{path}' holds the member '{member}' ({what}) that is not plain tensor data "
            f"({describe(exc)}); torch.export.load would retry it as an arbitrary pickle, so onnxgate refuses it.",
            hint=_TRUST_HINT + "Re-save the program with torch.export.save using this version of torch.",
        ) from exc


def _holds_pickle(path: Path, refusal: pickle.UnpicklingError) -> bool:
    """Whether a file ``weights_only`` refused is a real pickle (not random bytes): it named a Python global, or
    it is a torch.save zip archive (whose data is always a pickle), or it starts with a pickle protocol opcode."""
    if "GLOBAL " in str(refusal) or zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(1) == pickle.PROTO


def _named_global(refusal: BaseException) -> str:
    found = re.search(r"GLOBAL (\S+)", str(refusal))
    return f" (it references {found.group(1)})" if found else ""
