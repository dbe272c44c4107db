"""Models named by Python code: ``path/to/file.py:Name`` and ``package.module:Name``.

``Name`` is an ``nn.Module`` subclass built with no arguments, a factory function called with no arguments
that returns a module or ``(module, example_inputs)``, or a module instance defined at module level. The
module's train/eval mode is left as the user's code set it: the exporter reports a model left in training mode,
and it can only do so if it sees the mode the user chose.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ModelSourceError, user_code
from ._text import describe, listing
from .inputs import name_example_inputs
from .model import LoadedModel
from .weights import StateDict

# Each load of a file gets a fresh module name, so two files named model.py never collide in sys.modules and
# loading an edited file again runs the new code.
_file_module_numbers = itertools.count()


def load_from_file(file_text: str, name: str, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Load ``name`` from the Python file ``file_text``, executed as a fresh module."""
    path = Path(file_text).expanduser()
    if path.exists() and not path.is_file() and not path.is_dir():
        from ..safe_load import require_regular_file

        require_regular_file(path, what="Python file")  # a FIFO: refused, never read
    if not path.is_file():
        raise ModelSourceError(
            f"Python file '{file_text}' of model reference '{ref}' does not exist (no such file).",
            hint=f"Check the path; a relative path is resolved against the current directory {Path.cwd()}.",
        )
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_onnxgate_user_{stem}_{next(_file_module_numbers)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before running, like a normal import: dataclasses, pickling and torch's source lookups
    # find a module's code through sys.modules.
    sys.modules[module_name] = module
    try:
        # _on_sys_path: so the file can import the modules next to it
        with _on_sys_path(path.resolve().parent), user_code(f"importing '{file_text}'"):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelSourceError(
            f"Running the Python file '{file_text}' failed with {describe(exc, path)}.",
            hint="Fix that error. The file is imported as a module, so code that parses command-line arguments or "
            "trains must stay under `if __name__ == '__main__':`.",
        ) from exc
    return _load_named(module, name, ref, where=f"Python file '{file_text}'", state_dict=state_dict)


def load_from_module(module_name: str, name: str, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Load ``name`` from the importable module ``module_name``; the current directory is searched too."""
    try:
        # _on_sys_path: as `python -m` would; the onnxgate entry point does not add it itself
        with _on_sys_path(Path.cwd()), user_code(f"importing module '{module_name}'"):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModelSourceError(
                f"Module '{module_name}' of model reference '{ref}' cannot be found.",
                hint="Install the package that provides it, or run onnxgate from the folder that contains it. To "
                f"load a single file, write path/to/file.py:{name}.",
            ) from None
        raise ModelSourceError(
            f"Importing module '{module_name}' failed: it needs the package '{exc.name}', which is not installed.",
            hint=f"Install '{exc.name}' in this environment.",
        ) from exc
    except Exception as exc:
        raise ModelSourceError(
            f"Importing module '{module_name}' failed with {describe(exc)}.",
            hint="Fix that error; importing the module must not need command-line arguments.",
        ) from exc
    return _load_named(module, name, ref, where=f"module '{module_name}'", state_dict=state_dict)


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    if entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _load_named(module: ModuleType, name: str, ref: str, *, where: str,
                state_dict: StateDict | None) -> LoadedModel:
    import torch

    if not hasattr(module, name):
        raise _not_found(module, name, where)
    obj = getattr(module, name)
    label = f"'{name}' in {where}"
    user_file = getattr(module, "__file__", None)
    if isinstance(obj, torch.nn.Module):
        model, example = obj, None
    elif inspect.isclass(obj):
        if not issubclass(obj, torch.nn.Module):
            raise ModelSourceError(f"{label} is a class but not a torch.nn.Module subclass.",
                                   hint="Point the reference at the nn.Module class or at a factory function.")
        _require_no_arguments(obj, label, ref, is_class=True)
        model, example = _call(obj, label, user_file), None
    elif callable(obj):
        _require_no_arguments(obj, label, ref, is_class=False)
        model, example = _unpack_factory_result(_call(obj, label, user_file), label)
    else:
        raise ModelSourceError(f"{label} is a {type(obj).__name__}, not a model.",
                               hint="Point the reference at an nn.Module class or a factory function.")
    if state_dict is not None:
        state_dict.load_into(model)
    return LoadedModel(
        module=model,
        ref=ref,
        example_inputs=name_example_inputs(model, example, where=label),
        meta={"source": "python"},
        kind="torchscript" if isinstance(model, torch.jit.ScriptModule) else "module",
    )


def _not_found(module: ModuleType, name: str, where: str) -> ModelSourceError:
    candidates = _model_candidates(module)
    close = difflib.get_close_matches(name, candidates, n=3)
    guess = f" Did you mean {' or '.join(close)}?" if close else ""
    if candidates:
        hint = f"Model classes and functions defined there: {listing(candidates, 8)}."
    else:
        hint = "It defines no nn.Module class or function; point the reference at the file that defines the model."
    return ModelSourceError(f"{where} has no '{name}'.{guess}", hint=hint)


def _model_candidates(module: ModuleType) -> list[str]:
    """Public nn.Module classes, functions and module instances the module defines itself (not imports)."""
    import torch

    names = []
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        defined_here = getattr(value, "__module__", None) == module.__name__
        is_model_class = inspect.isclass(value) and issubclass(value, torch.nn.Module) and defined_here
        if is_model_class or (inspect.isfunction(value) and defined_here) or isinstance(value, torch.nn.Module):
            names.append(attr)
    return names


def _require_no_arguments(obj: Any, label: str, ref: str, *, is_class: bool) -> None:
    """onnxgate calls ``obj()``; say which parameters stop that, instead of showing Python's TypeError."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: just try the call
        return
    required = [p.name for p in signature.parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not required:
        return
    head = ref.rpartition(":")[0]
    if is_class:
        arguments = ", ".join(f"{p}=..." for p in required)
        raise ModelSourceError(
            f"{label} is a model class whose constructor needs arguments ({', '.join(required)}), and onnxgate "
            "builds the model with no arguments.",
            hint=f"Add a factory function next to it, e.g. `def make_model(): return {obj.__name__}({arguments})`, "
            f"and pass {head}:make_model.",
        )
    raise ModelSourceError(
        f"{label} is a function that needs arguments ({', '.join(required)}), and onnxgate calls it with none.",
        hint=f"Give those parameters defaults, or add a factory with no parameters that calls it and pass {head}:"
        "THAT_FACTORY.",
    )


def _call(obj: Any, label: str, user_file: str | None) -> Any:
    try:
        with user_code(f"building the model from {label}"):
            return obj()
    except Exception as exc:
        raise ModelSourceError(f"Building the model from {label} failed with {describe(exc, user_file)}.",
                               hint="Fix the error in the model code.") from exc


def _unpack_factory_result(result: Any, label: str) -> tuple[Any, Any]:
    import torch

    if isinstance(result, torch.nn.Module):
        return result, None
    if isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        return result[0], result[1]
    raise ModelSourceError(
        f"The factory {label} returned a {type(result).__name__}, not a model.",
        hint="A factory must return an nn.Module, or a pair (module, example_inputs) where example_inputs is a "
        "tensor, a tuple of tensors or a dict name -> tensor.",
    )
