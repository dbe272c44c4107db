"""Reference outputs computed once per model, weights and feed.

Shape-domain discovery runs the PyTorch reference at many sizes, and one job verifies the same model more than once
(the export ladder verifies its winner, then ``verify`` / the pipeline verify the written file against the same
module). ``cached(runner)`` wraps a reference runner so that each feed runs once: the outputs (or the reference's
failure, which is just as much a result) are kept, keyed by the module's identity, a cheap fingerprint of its
weights (every parameter's storage and in-place version counter: ``load_state_dict`` and re-initialization change
it) and a digest of the feed's bytes. Entries die with their module and the whole cache is bounded in bytes.
Torch-free: the runner does the running.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

#: The most bytes of reference outputs kept at once (least recently used entries go first).
MAX_BYTES = 256 * 2**20

_CACHE: OrderedDict[tuple, tuple[dict[str, np.ndarray] | None, Exception | None, int]] = OrderedDict()
_BYTES = {"total": 0}
_WATCHED: set[int] = set()


def _weights_key(module: Any) -> tuple:
    """Identity of the weights as they are now: (data pointer, version) of every parameter and buffer."""
    try:
        tensors = [*module.parameters(), *module.buffers()]
    except Exception:  # noqa: BLE001  not an nn.Module (a TorchScript or torch.export program): identity only
        return ()
    return tuple((t.data_ptr(), getattr(t, "_version", 0)) for t in tensors)


def feed_digest(feed: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feed):
        arr = np.ascontiguousarray(feed[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.view(np.uint8).reshape(-1) if arr.size else b"")
    return h.hexdigest()


def _forget(module_id: int) -> None:
    _WATCHED.discard(module_id)
    for key in [k for k in _CACHE if k[0] == module_id]:
        _BYTES["total"] -= _CACHE.pop(key)[2]


def clear() -> None:
    _CACHE.clear()
    _BYTES["total"] = 0


class CachedReference:
    """A reference runner whose results per feed are kept (see the module docstring). Same ``run``/``name``."""

    def __init__(self, runner: Any):
        self.runner = runner
        self.name = getattr(runner, "name", "reference")
        self.hits = 0

    def __getattr__(self, item: str) -> Any:
        return getattr(self.runner, item)

    def _key(self, feed: dict[str, np.ndarray]) -> tuple | None:
        module = getattr(self.runner, "module", None)
        if module is None:
            return None
        names = (tuple(getattr(self.runner, "input_names", None) or ()),
                 tuple(getattr(self.runner, "output_names", None) or ()), str(getattr(self.runner, "device", "")))
        if id(module) not in _WATCHED:
            try:
                weakref.finalize(module, _forget, id(module))
            except TypeError:  # not weak-referenceable: cache for this runner's lifetime only
                return None
            _WATCHED.add(id(module))
        return (id(module), _weights_key(module), names, feed_digest(feed))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = self._key(feed)
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            outputs, error, _ = _CACHE[key]
            self.hits += 1
            if error is not None:
                raise error
            return {k: v.copy() for k, v in outputs.items()}
        try:
            outputs, error = self.runner.run(feed), None
        except Exception as exc:  # noqa: BLE001  the reference failing at this feed is a result too
            outputs, error = None, exc
        if key is not None:
            _store(key, outputs, error)
        if error is not None:
            raise error
        return outputs


def _store(key: tuple, outputs: dict[str, np.ndarray] | None, error: Exception | None) -> None:
    size = sum(np.asarray(v).nbytes for v in (outputs or {}).values())
    if size > MAX_BYTES // 4:
        return
    kept = {k: np.array(v, copy=True) for k, v in outputs.items()} if outputs is not None else None
    if error is not None:  # a kept traceback would keep the failed forward pass's frames (and tensors) alive
        error.__traceback__ = error.__context__ = error.__cause__ = None
    _CACHE[key] = (kept, error, size)
    _BYTES["total"] += size
    while _BYTES["total"] > MAX_BYTES and _CACHE:
        _BYTES["total"] -= _CACHE.popitem(last=False)[1][2]


def cached(runner: Any) -> Any:
    """``runner`` wrapped in a CachedReference (a runner already wrapped is returned as it is)."""
    return runner if isinstance(runner, CachedReference) else CachedReference(runner)
