"""Reference identity: is the PyTorch model verify rebuilt the one whose weights were exported?

``export`` records a fingerprint of the exported weights in the model's metadata (``onnxgate.weights_sha256``: a
SHA-256 over every state-dict entry's name, shape, dtype and bytes, taken before the first forward pass). When
``verify`` rebuilds the reference from a reference string (``file.py:Net``, ``torchvision:resnet18``, a state-dict
file), it takes the same fingerprint of what it built. If they differ, a parity table would only measure two
different sets of weights — "100% of outputs wrong, first divergence at BatchNorm2d" — so verify stops with a bad-
input error that says what happened and how to give it the right weights.

The same metadata records where the weights came from (``onnxgate.arch``, ``onnxgate.weights``), so a state-dict
source verifies without repeating ``--arch``: a recorded architecture is used like a recorded source — only a
registry name (``torchvision:NAME``, ``timm:NAME``) unless ``--trust-source``.

Torch is imported only inside the functions that hash a module (verify/ imports no torch at module load).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ..errors import BadInputError

# Recorded sources that name an entry of a model registry, not code: the name is checked against the registry's
# own list before anything is built, so a file cannot make onnxgate import a module or run a function it chose.
REGISTRY_SOURCES = ("torchvision", "timm")

FINGERPRINT = "onnxgate.weights_sha256"
ARCH = "onnxgate.arch"
WEIGHTS = "onnxgate.weights"
_MAX_REF_CHARS = 4096


def weights_fingerprint(module: Any) -> str | None:
    """SHA-256 over the module's state dict: each entry's name, shape and dtype, then its bytes as stored on the CPU
    (no dtype conversion: bfloat16 and friends hash as their raw bytes). None for an object with no state dict."""
    import torch

    state_dict = getattr(module, "state_dict", None)
    if not callable(state_dict):
        return None
    try:
        entries = state_dict()
    except Exception:  # a module whose state_dict() cannot be taken has no fingerprint, not a crash
        return None
    digest = hashlib.sha256()
    for name in sorted(entries):
        value = entries[name]
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}\0{type(value).__name__}\n".encode())
            continue
        tensor = value.detach()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\n".encode())
        digest.update(_tensor_bytes(tensor, torch))
    return digest.hexdigest()


def _tensor_bytes(tensor, torch) -> memoryview | bytes:
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    tensor = tensor.cpu().contiguous()
    if tensor.numel() == 0:
        return b""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def recorded(metadata: Mapping[str, Any], key: str, model: str = "the model") -> str | None:
    """A metadata entry onnxgate wrote, validated (text, bounded); None when absent."""
    from .. import metadata as md

    return md.entry(metadata, key, model=model, limit=_MAX_REF_CHARS)


def reference_arch(ref: str, metadata: Mapping[str, Any], arch: str | None, *, trust_source: bool) -> str | None:
    """The architecture to build a state-dict ``ref`` with: ``--arch`` when given, else the one the file records
    for its own source (``onnxgate.arch``), when that is a registry name or ``trust_source`` is set."""
    from ..sources.loader import parse_ref

    if arch is not None:
        return arch
    kept = recorded(metadata, ARCH)
    if kept is None or ref != recorded(metadata, "onnxgate.source"):
        return None
    try:
        if parse_ref(ref).kind != "file":
            return None
        kind = parse_ref(kept).kind
    except BadInputError:  # no such file, or an arch that does not parse: load_model says what is wrong
        return None
    return kept if kind in REGISTRY_SOURCES or (trust_source and kind != "file") else None


def load_reference(ref: str, metadata: Mapping[str, Any], settings) -> Any:
    """``load_model(ref)`` with the verify settings' weights/arch, the architecture taken from the metadata where
    ``reference_arch`` allows (so a state-dict source does not ask for an ``--arch`` its file already records)."""
    from ..sources import load_model

    arch = reference_arch(ref, metadata, settings.arch, trust_source=settings.trust_source)
    return load_model(ref, weights=settings.weights, arch=arch, trust_pickle=settings.trust_pickle)


def check_weights(loaded: Any, metadata: Mapping[str, Any], *, model: str, weights: str | None = None) -> None:
    """BadInputError when the rebuilt reference ``loaded`` holds other weights than the ones exported into
    ``model`` (by the recorded fingerprint); nothing when they agree or the file records no fingerprint."""
    expected = recorded(metadata, FINGERPRINT, model)
    if not expected:
        return
    found = weights_fingerprint(loaded.module)
    if found is None or found == expected:
        return
    raise BadInputError(_mismatch_message(loaded, metadata, model, expected, found, weights),
                        hint=_mismatch_hint(loaded, metadata))


def _mismatch_message(loaded, metadata, model: str, expected: str, found: str, weights: str | None) -> str:
    from ..sources.loader import parse_ref

    exported_with = recorded(metadata, WEIGHTS, model)
    what = (f"The reference '{loaded.ref}' holds other weights than the ones exported into '{model}' (weights "
            f"fingerprint {found[:12]} rebuilt, {expected[:12]} recorded at export), so a parity table would only "
            "compare two different models.")
    try:
        kind = parse_ref(loaded.ref).kind
    except BadInputError:
        kind = None
    if exported_with and not weights and kind != "file":
        return what + f" The model was exported with the weights '{exported_with}', which were not loaded now."
    if kind in ("python_file", "python_module") and not weights:
        return what + (" The reference was re-initialized randomly: its constructor draws new random weights on "
                       "every build, unseeded.")
    return what + " The weights given now are not the exported ones."


def _mismatch_hint(loaded, metadata) -> str:
    exported_with = recorded(metadata, WEIGHTS)
    with_weights = f" (e.g. --against {loaded.ref} --weights {exported_with})" if exported_with else ""
    return ("Seed it (torch.manual_seed in its constructor or factory), load a checkpoint (--weights FILE, or a "
            f"state dict with --arch), or pass --against with the exported weights{with_weights}.")
