"""The loaded-model record every source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadedModel:
    """A PyTorch model ready to export.

    ``example_inputs`` is an ordered mapping from input name to tensor, when the source knows sensible inputs
    (torchvision: a 2x3x224x224 image batch; a factory returning ``(module, example_inputs)``; Hugging Face: token
    ids). The export uses these for sizes that the user's ``--input``/``--dim`` flags leave open.
    ``meta`` carries facts the source knows (family, task, labels, preprocessing) into the ONNX metadata.
    """

    module: Any  # torch.nn.Module (a ScriptModule or an ExportedProgram's module count too)
    ref: str
    example_inputs: dict[str, Any] | None = None
    meta: dict[str, str] = field(default_factory=dict)
    kind: str = "module"  # "module" | "torchscript" | "exported_program"
