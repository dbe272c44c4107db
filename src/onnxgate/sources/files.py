"""Model files: TorchScript archives, torch.export archives (.pt2), state dicts and pickled modules.

The kind of a file is read from its content, not its extension (``.pt`` is used for all of them):

* a zip archive with a ``code/`` folder is TorchScript (``torch.jit.save``): code (``__setstate__`` and
  ``forward`` can write files), loaded only with ``trust_pickle=True`` (``--trust-code``), confined where the
  platform allows (``safe_load.confine_untrusted_code``);
* a zip archive with an ``archive_format`` entry is a torch.export archive (``torch.export.save``), checked by
  ``safe_load.check_pt2_archive`` and loaded from the very bytes checked;
* anything else goes through ``torch.load(weights_only=True)``, which reads tensors and plain containers but
  refuses to rebuild arbitrary Python objects. A state dict loads that way (it then needs an architecture,
  ``--arch``); a pickled whole module is refused unless ``trust_pickle=True``, because unpickling runs code
  chosen by whoever wrote the file.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..errors import BadInputError, ModelSourceError, UnsafeInputError, require
from ..safe_load import check_pt2_archive, load_pt2, read_regular_file, require_regular_file, torch_load
from ._text import describe
from .inputs import name_example_inputs
from .model import LoadedModel
from .weights import StateDict, extract_state_dict

_ARCHIVE_NAMES = {"torchscript": "a TorchScript archive", "exported_program": "a torch.export archive"}


def open_model_file(path_text: str, ref: str, *, trust_pickle: bool) -> LoadedModel | StateDict:
    """Load the model file ``path_text``: a LoadedModel for a whole model, a StateDict for bare weights."""
    path = Path(path_text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            raise ModelSourceError(
                f"'{path_text}' is a folder, not a model file.",
                hint=f"It holds a config.json; for a Hugging Face model folder write hf:{path_text}.",
            )
        raise ModelSourceError(f"'{path_text}' is a folder, not a model file.",
                               hint="Give the path of the model file inside it.")
    require_regular_file(path, what="Model file")  # a FIFO would block every reader below
    if path.suffix == ".safetensors":
        return StateDict(_read_safetensors(path), path)
    archive = _archive_kind(path)
    if archive == "torchscript":
        return _load_torchscript(path, ref, trust_code=trust_pickle)
    if archive == "exported_program":
        return _load_exported_program(path, ref, trust_pickle=trust_pickle)
    obj = torch_load(path, trust_pickle=trust_pickle)
    tensors = extract_state_dict(obj)
    if tensors is not None:
        return StateDict(tensors, path)
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise ModelSourceError(
            f"'{path_text}' loads as a {type(obj).__name__}, which is neither a model nor a state dict.",
            hint="Give a torch.export archive (.pt2) or a state dict with --arch; a TorchScript file or a whole "
            "pickled nn.Module needs --trust-code.",
        )
    return LoadedModel(obj, ref, meta={"source": "pickle"})


def read_weights(path_text: str, *, trust_pickle: bool) -> StateDict:
    """Read a ``--weights`` file, which must hold a state dict."""
    path = Path(path_text).expanduser()
    require_regular_file(path, what="Weights file")
    if path.is_dir():
        raise ModelSourceError(f"Weights file '{path_text}' is a folder, not a file.",
                               hint="Give the path of the state-dict file inside it.")
    if path.suffix == ".safetensors":
        return StateDict(_read_safetensors(path), path)
    archive = _archive_kind(path)
    if archive is not None:
        raise BadInputError(
            f"Weights file '{path_text}' holds a whole model ({_ARCHIVE_NAMES[archive]}), not a state dict.",
            hint="Give it as the model reference itself, without --weights.",
        )
    obj = torch_load(path, trust_pickle=trust_pickle)
    tensors = extract_state_dict(obj)
    if tensors is None:
        raise ModelSourceError(
            f"Weights file '{path_text}' holds a {type(obj).__name__}, not a state dict.",
            hint="Save the weights with torch.save(model.state_dict(), PATH). A whole pickled model is a model "
            "reference by itself: give it without --weights.",
        )
    return StateDict(tensors, path)


def _archive_kind(path: Path) -> str | None:
    """Tell TorchScript and torch.export archives apart by their zip entries; None for any other file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:  # not a zip (or a damaged one): torch.load decides and explains
        return None
    # Entries are "<archive name>/<entry>"; the second component tells the writers apart.
    entries = {parts[1] for parts in (name.split("/") for name in names) if len(parts) > 1}
    if "code" in entries:
        return "torchscript"
    if "archive_format" in entries:
        return "exported_program"
    return None


def _load_torchscript(path: Path, ref: str, *, trust_code: bool) -> LoadedModel:
    if not trust_code:
        raise UnsafeInputError(
            f"'{path}' is a TorchScript archive, and TorchScript is code: loading it runs the archive's "
            "__setstate__ methods and running it runs its forward, which can create or overwrite files "
            "(torch.from_file) and so take over this machine; onnxgate refuses it by default.",
            hint="Pass --trust-code (trust_pickle=True; --trust-pickle is the older name) only if the file comes "
            "from a source you trust: the load and the model's code then run confined to a scratch folder where "
            "the platform allows. Or save the model as a torch.export archive (torch.export.save, .pt2) or a "
            "state dict with --arch, which need no consent.",
        )
    import torch

    from ..safe_load import confine_untrusted_code

    confined = confine_untrusted_code(f"the TorchScript archive '{path}'")
    try:
        with warnings.catch_warnings():
            # The file is TorchScript already; telling the user that torch.jit is deprecated helps nobody here.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        denied = "Permission denied" in str(exc) or "Operation not permitted" in str(exc)
        why = (f" Its code runs confined ({confined['mechanism']}): it may write only beneath the scratch folder "
               f"{confined['scratch']} and the command's output folders, and the load "
               + ("tried to write elsewhere." if denied else "may have tried to write elsewhere.")
               if confined["mechanism"] else "")
        raise ModelSourceError(f"'{path}' looks like a TorchScript archive but cannot be loaded: {describe(exc)}.{why}",
                               hint="Re-save it with torch.jit.save using this version of torch; a model that needs "
                               "to write files cannot be loaded confined.") from exc
    return LoadedModel(module, ref, meta={"source": "torchscript"}, kind="torchscript")


def _load_exported_program(path: Path, ref: str, *, trust_pickle: bool) -> LoadedModel:
    import torch

    data = None
    if not trust_pickle:  # torch.export.load unpickles with weights_only=False: look before it does
        data = read_regular_file(path, what="Model file")
        check_pt2_archive(path, data)
    else:
        from ..safe_load import confine_untrusted_code

        confine_untrusted_code(f"the torch.export archive '{path}'")
    try:
        program = torch.export.load(str(path)) if trust_pickle else load_pt2(path, data)
    except Exception as exc:
        raise ModelSourceError(
            f"'{path}' looks like a torch.export archive but cannot be loaded: {describe(exc)}.",
            hint="Save it with torch.export.save(torch.export.export(model, args), PATH) using this version of "
            "torch; AOTInductor packages (aoti_compile_and_package) hold compiled code and cannot be converted.",
        ) from exc
    module = _positional_forward(program.module())
    args, kwargs = program.example_inputs or ((), {})
    flat = all(isinstance(value, torch.Tensor) for value in (*args, *kwargs.values()))
    example_inputs = None
    if flat and (args or kwargs):  # nested example inputs cannot be named one tensor each; leave them to --input
        example_inputs = {**name_example_inputs(module, args, where=f"'{path}'"), **kwargs}
    return LoadedModel(module, ref, example_inputs, meta={"source": "torch.export"}, kind="exported_program")


def _positional_forward(module: Any) -> Any:
    """Make the program's positional inputs positional-only in ``forward``'s signature.

    An exported program's module checks each call against the pytree spec it was exported with: inputs captured
    positionally must be passed positionally (a call ``module(x=...)`` fails with "kwarg keyword mismatch: Got the
    following keywords ['x'] but expected []"). Its generated ``forward(self, x)`` nevertheless looks like it takes
    keywords, so the exporter and the reference runner, which pass inputs by keyword when every name is a
    parameter, called it wrongly. Its class is private to this instance (``GraphModule`` makes one per module),
    so marking the signature changes this module only; the names stay, so ``--input x:...`` still names ``x``.
    """
    import inspect

    forward = type(module).forward
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return module
    positional = (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
    forward.__signature__ = signature.replace(parameters=[
        p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) if p.kind in positional else p
        for p in signature.parameters.values()])
    return module


def _read_safetensors(path: Path) -> dict[str, Any]:
    safetensors_torch = require("safetensors.torch", "transformers", "Reading a .safetensors file")
    try:
        return safetensors_torch.load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelSourceError(f"'{path}' is not a readable safetensors file: {describe(exc)}.",
                               hint="Check that the file is complete and was written by safetensors.") from exc
