"""``load_model``: from a model reference string to a ``LoadedModel``.

Reference forms, told apart by syntax alone (nothing is imported or loaded to decide):

* ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` — a known prefix before the first ':';
* ``path/to/file.py:Name`` — the part before the last ':' ends with ``.py``;
* ``package.module:Name`` — any other ``A:B`` whose A is a dotted module name;
* a model file (TorchScript, torch.export ``.pt2``, state dict, pickled module) — no ':' (a Windows drive
  letter aside); its kind is read from the content.

Weights come separately: ``weights=FILE`` loads a state dict into the model a reference builds, and a state-dict
file given as the reference itself needs ``arch=REF`` naming the architecture. Both load strictly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, ModelSourceError, require
from .model import LoadedModel
from .weights import StateDict

ZOO_PREFIXES = ("torchvision", "timm", "hf")
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".bin", ".ckpt", ".safetensors")
ACCEPTED_FORMS = (
    "Accepted forms: path/to/file.py:Name or package.module:Name (an nn.Module class or a factory function), "
    "torchvision:NAME, timm:NAME, hf:PATH (a local Hugging Face model folder), or the path of a model file "
    "(TorchScript, torch.export .pt2, a pickled model, or a state dict together with --arch)."
)
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class ParsedRef:
    """A reference split by syntax. ``kind``: torchvision, timm, hf, python_file, python_module or file."""

    kind: str
    location: str  # zoo model name, hf folder, .py path, module name or file path
    name: str = ""  # the class or factory in a python_file / python_module


def parse_ref(ref: str) -> ParsedRef:
    """Classify ``ref`` by its syntax; raise BadInputError (or ModelSourceError for a missing file) if it fits none."""
    text = ref.strip()
    if not text:
        raise BadInputError("The model reference is empty.", hint=ACCEPTED_FORMS)
    prefix, colon, rest = text.partition(":")
    if colon and prefix in ZOO_PREFIXES:
        if not rest:
            raise BadInputError(f"Model reference '{ref}' names no model after '{prefix}:'.", hint=ACCEPTED_FORMS)
        return ParsedRef(prefix, rest)
    drive = text[:2] if _DRIVE.match(text) else ""
    head, colon, name = text[len(drive):].rpartition(":")
    if colon:
        location = drive + head
        if not name:
            raise BadInputError(f"Model reference '{ref}' names no class or factory after the last ':'.",
                                hint=f"Write {location}:Name, where Name is an nn.Module class or a factory function.")
        if location.endswith(".py"):
            return ParsedRef("python_file", location, name)
        if not _DOTTED_NAME.match(location):
            raise BadInputError(
                f"In model reference '{ref}', '{location}' is neither a .py file nor a dotted module name.",
                hint=ACCEPTED_FORMS,
            )
        return ParsedRef("python_module", location, name)
    if text.endswith(".py"):
        raise BadInputError(
            f"Model reference '{ref}' names a Python file but not the model in it.",
            hint=f"Write {text}:Name, where Name is an nn.Module class or a factory function in that file.",
        )
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: no such file either way
        exists = False
    if exists:
        return ParsedRef("file", text)
    if path.suffix in MODEL_FILE_SUFFIXES or "/" in text or "\\" in text:
        raise ModelSourceError(f"Model file '{ref}' does not exist (no such file).",
                               hint=f"Check the path; a relative path is resolved against {Path.cwd()}.")
    raise BadInputError(f"'{ref}' is not a model reference: it has no ':' and is not an existing file.",
                        hint=ACCEPTED_FORMS)


def load_model(ref: str, *, weights: str | None = None, arch: str | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load the PyTorch model ``ref`` names, with its example inputs when the source knows them.

    ``weights``: a state-dict file loaded strictly into the model ``ref`` builds. ``arch``: the architecture
    reference for a ``ref`` that is a state-dict file. ``trust_pickle``: allow unpickling arbitrary objects
    (whole pickled modules, checkpoints holding custom classes); without it such files raise UnsafeInputError.
    Modules the user's own code builds keep their train/eval mode; zoo models are returned in eval mode.
    """
    require("torch", "torch", "Loading a PyTorch model")
    if weights is not None and arch is not None:
        raise BadInputError(
            "Both --weights and --arch are given; they are two ways to say the same thing.",
            hint="Either give the architecture as the model reference with --weights FILE, or give the state-dict "
            "file as the model reference with --arch ARCH.",
        )
    parsed = parse_ref(ref)
    if parsed.kind != "file":
        if arch is not None:
            raise BadInputError(f"--arch is given, but model reference '{ref}' is not a state-dict file.",
                                hint="--arch names the architecture of a state-dict file; to load weights into "
                                f"'{ref}', use --weights FILE instead.")
        from .files import read_weights

        state_dict = read_weights(weights, trust_pickle=trust_pickle) if weights is not None else None
        return _build(parsed, ref, state_dict)

    from .files import open_model_file

    content = open_model_file(parsed.location, ref, trust_pickle=trust_pickle)
    if isinstance(content, LoadedModel):
        if arch is not None or weights is not None:
            flag = "--arch" if arch is not None else "--weights"
            raise BadInputError(f"'{ref}' holds a whole model ({content.meta['source']}), so {flag} does not apply.",
                                hint=f"Drop {flag}.")
        return content
    if arch is None:
        raise ModelSourceError(
            f"'{ref}' holds a state dict ({len(content.tensors)} tensors): weights without the architecture "
            "they belong to.",
            hint="Pass --arch naming the architecture (arch= in Python), e.g. --arch torchvision:resnet18 or "
            "--arch model.py:Net.",
        )
    arch_ref = parse_ref(arch)
    if arch_ref.kind == "file":
        raise BadInputError(f"--arch '{arch}' is a file; --arch must name an architecture.", hint=ACCEPTED_FORMS)
    loaded = _build(arch_ref, ref, content)
    loaded.meta["arch"] = arch
    return loaded


def _build(parsed: ParsedRef, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Build the model of a non-file reference; the source modules are imported only when used."""
    if parsed.kind == "torchvision":
        from .zoo import load_torchvision

        loaded = load_torchvision(parsed.location, ref, state_dict)
    elif parsed.kind == "timm":
        from .zoo import load_timm

        loaded = load_timm(parsed.location, ref, state_dict)
    elif parsed.kind == "hf":
        from .hf import load_hf

        loaded = load_hf(parsed.location, ref, state_dict)
    elif parsed.kind == "python_file":
        from .python_ref import load_from_file

        loaded = load_from_file(parsed.location, parsed.name, ref, state_dict)
    else:
        from .python_ref import load_from_module

        loaded = load_from_module(parsed.location, parsed.name, ref, state_dict)
    if state_dict is not None:
        loaded.meta["weights"] = state_dict.path.name
    return loaded
