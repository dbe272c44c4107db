"""What environment produced (or checks) an artifact, and lock files that recreate it.

A number measured in one environment means little without that environment: the same ONNX file gives
different latencies on another CPU and occasionally different outputs on another onnxruntime. So bundles
record versions, platform and CPU, and carry lock files.

Torch is never imported to learn its version (``importlib.metadata`` reads it from the installed files):
importing torch costs seconds and this module runs on production machines that do not have it. Only
``capture(include_torch=True)`` imports it, to ask about CUDA devices.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import BadInputError
from .fsutil import atomic_write_text, check_target

# Packages whose versions decide what an exported model computes and how it runs.
TRACKED_PACKAGES = ("onnxgate", "torch", "torchvision", "onnxscript", "onnx", "onnxruntime", "numpy")
# What a target machine needs to re-verify a bundle: onnxgate's base install, which pulls numpy, onnxruntime.
RUNTIME_ROOTS = ("onnxgate", "numpy", "onnxruntime")
LOCK_FILES = ("requirements.txt", "requirements-runtime.txt", "environment.yml")
_PIP_FREEZE_SKIPS = {"pip", "setuptools", "wheel", "distribute"}  # what `pip freeze` leaves out too
# CPU features that decide which kernels onnxruntime picks; shown in the human table (JSON has all flags).
NOTABLE_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                     "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "bf16", "i8mm")


def normalize(name: str) -> str:
    """PEP 503 normalized project name: ``Typing_Extensions`` and ``typing-extensions`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def package_version(name: str) -> str | None:
    """The installed version of ``name`` without importing it; None when it is not installed."""
    if normalize(name) == "onnxgate":
        return __version__  # an editable install's metadata can lag the source
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in TRACKED_PACKAGES}}


def cpu_info() -> dict[str, Any]:
    """CPU model and feature flags (from /proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    model, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip()
        elif not flags and key in ("flags", "features"):  # x86 says flags, ARM says Features
            flags = sorted(value.split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.processor() or None, "flags": flags, "count": os.cpu_count(),
            "usable": usable}


def capture(*, include_torch: bool = False) -> dict[str, Any]:
    """Everything about this machine and interpreter that can change a result or a timing.

    ``include_torch`` imports torch (if installed) to report CUDA devices; without it torch is only asked
    about when some other code already imported it.
    """
    cuda = _cuda_info() if include_torch else None
    threads = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    return {
        "versions": versions(),
        "python": {"implementation": platform.python_implementation(), "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "platform": platform.platform()},
        "cpu": cpu_info(),
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "onnxruntime_providers": _ort_providers(),
        "cuda": cuda,
    }


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def _cuda_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    available = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []
    return {"available": available, "cuda_version": torch.version.cuda, "devices": devices}


# ---------------------------------------------------------------------------------------------------- locks


def freeze() -> list[str]:
    """``pip freeze`` of this environment as ``name==version`` lines, read from package metadata.

    Editable or local installs are pinned by version too (a path on this machine means nothing elsewhere),
    with a comment saying where they came from. Local torch builds (``2.5.1+cpu``) live on PyTorch's own
    index, so that index is added as an option line.
    """
    lines, options = [], []
    for name, dist in sorted(_distributions().items()):
        if name in _PIP_FREEZE_SKIPS:
            continue
        version = package_version(name) if name == "onnxgate" else dist.version
        origin = _local_origin(dist)
        if origin:
            lines.append(f"# {dist.metadata['Name']} was installed from {origin}; this pin assumes the release "
                         "is on your package index")
        lines.append(f"{dist.metadata['Name']}=={version}")
        if name == "torch" and "+" in version:
            options.append(f"--extra-index-url https://download.pytorch.org/whl/{version.split('+', 1)[1]}")
    return options + lines


def runtime_requirements() -> list[str]:
    """Exact pins of onnxgate's base install and everything it pulls in: what a target machine needs."""
    from packaging.requirements import Requirement  # a dependency of onnxruntime, so always present

    dists = _distributions()
    pinned: dict[str, str] = {}
    notes: list[str] = []
    todo = list(RUNTIME_ROOTS)
    while todo:
        name = normalize(todo.pop())
        if name in pinned:
            continue
        dist = dists.get(name)
        if dist is None:
            notes.append(f"# {name} is required but not installed in the environment that wrote this file")
            pinned[name] = ""
            continue
        pinned[name] = f"{dist.metadata['Name']}=={package_version(name) if name == 'onnxgate' else dist.version}"
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return notes + [line for _, line in sorted(pinned.items()) if line]


def environment_yml(runtime: list[str] | None = None) -> str:
    """A conda environment with this Python minor and numpy from conda, the rest of the runtime from pip."""
    runtime = runtime if runtime is not None else runtime_requirements()
    numpy = package_version("numpy")
    pip_lines = [line for line in runtime if not line.startswith("#") and normalize(line.split("==")[0]) != "numpy"]
    py = sys.version_info
    return "\n".join([
        "# Runtime environment of an onnxgate bundle: conda env create -f environment.yml",
        "# onnxgate itself must be on your pip index; otherwise drop its line and pip install --no-deps it.",
        "name: onnxgate-runtime",
        "channels:",
        "  - pytorch",
        "  - conda-forge",
        "dependencies:",
        f"  - python={py.major}.{py.minor}",
        f"  - numpy=={numpy}" if numpy else "  - numpy",
        "  - pip",
        "  - pip:",
        *[f"    - {line}" for line in pip_lines],
        "",
    ])


def write_locks(directory: str | Path, *, force: bool = False) -> list[Path]:
    """Write requirements.txt, requirements-runtime.txt and environment.yml into ``directory``.

    The folder is created when its parent exists. Each file is written atomically; existing lock files are
    replaced only with ``force``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        if not directory.parent.is_dir():
            raise BadInputError(
                f"Cannot write lock files into '{directory}': its parent folder '{directory.parent}' does not exist.",
                hint="Create the parent folder first or choose another --lock folder.",
            )
        directory.mkdir()
    py = platform.python_version()
    runtime = runtime_requirements()
    export_header = [
        f"# Export environment captured by onnxgate {__version__}, Python {py}, {platform.platform()}.",
        f"# Recreate it: python{sys.version_info.major}.{sys.version_info.minor} -m venv env && "
        "env/bin/pip install -r requirements.txt",
    ]
    runtime_header = [
        "# What a production machine needs to re-verify an onnxgate bundle (no torch), exact versions.",
        f"# Python {py}. If onnxgate is not on your package index, install it first from its source or wheel:",
        "#   pip install --no-deps <onnxgate source folder or wheel>",
        "# then: pip install -r requirements-runtime.txt && onnxgate verify-bundle <bundle folder>",
    ]
    contents = {
        "requirements.txt": "\n".join(export_header + freeze()) + "\n",
        "requirements-runtime.txt": "\n".join(runtime_header + runtime) + "\n",
        "environment.yml": environment_yml(runtime),
    }
    for name in contents:  # check all first, so a refusal leaves no mix of old and new lock files
        check_target(directory / name, force=force)
    return [atomic_write_text(directory / name, text, force=force) for name, text in contents.items()]


def _distributions() -> dict[str, md.Distribution]:
    """Installed distributions by normalized name; the first on sys.path wins, as it does for imports."""
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in found:
            found[normalize(name)] = dist
    return found


def _local_origin(dist: md.Distribution) -> str | None:
    """The URL a package was installed from when it was not a registry release (PEP 610 direct_url.json)."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    if "dir_info" in info or "vcs_info" in info:
        return info.get("url")
    return None
