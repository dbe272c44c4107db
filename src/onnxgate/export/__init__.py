"""Export a PyTorch model to ONNX through the strategy ladder. Needs the ``onnxgate[torch]`` extra."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..spec import ExportConfig

if TYPE_CHECKING:
    from .ladder import ExportResult


def export(
    model: Any,
    output: str | Path | None = None,
    *,
    config: ExportConfig | None = None,
    example_inputs: Any = None,
    weights: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> "ExportResult":
    """Export ``model`` — a reference string (``torchvision:resnet18``, ``file.py:Net``, ...) or an ``nn.Module`` —
    to ``output`` and prove the result runs in onnxruntime and matches PyTorch.

    Raises ``ExportError`` (with a diagnosis) when every attempt fails and ``ParityError`` when exports ran but
    computed wrong results (for example a dynamic dim frozen at its traced size).
    """
    from ..errors import require

    require("torch", "torch", "Exporting a PyTorch model")
    from ..sources import LoadedModel, load_model
    from ..sources.inputs import name_example_inputs
    from .ladder import run_ladder

    if isinstance(model, str):
        loaded = load_model(model, weights=weights, arch=arch, trust_pickle=trust_pickle)
        if weights is not None:  # recorded as onnxgate.weights: the path as given, not only the file's name
            loaded.meta["weights"] = str(weights)
    else:
        loaded = LoadedModel(module=model, ref=type(model).__name__,
                             example_inputs=name_example_inputs(model, example_inputs, where="export(example_inputs=...)"))
    result = run_ladder(loaded, config or ExportConfig(), output, force=force, progress=progress)
    if result.error is not None:  # the ladder returns its failure like every stage; the API raises it, as before
        raise result.error
    return result


from .._lazy import lazy_exports  # noqa: E402

__getattr__, __dir__ = lazy_exports(__name__, {"ExportResult": ".ladder", "Attempt": ".ladder"})
__all__ = ["export", "ExportResult", "Attempt"]
