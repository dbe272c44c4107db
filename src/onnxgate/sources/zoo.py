"""Model zoos: ``torchvision:NAME`` and ``timm:NAME``, always with random weights.

onnxgate never downloads: zoo models are built with ``weights=None`` / ``pretrained=False`` (and, for
torchvision detection and segmentation, ``weights_backbone=None``, whose default would fetch ImageNet weights).
Trained weights come from a local file through ``--weights``. The models built here are put in eval mode.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ModelSourceError, require
from ._text import describe
from .inputs import name_example_inputs
from .model import LoadedModel
from .weights import StateDict

# With weights=None these two build auxiliary classifier heads and warn that their default initialization will
# change. The aux heads only run in training mode, so they add nothing to an export; build without them and
# with the established initialization. The "quantized_" variants take the same arguments.
_TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_IMAGE_SIZE = {"inception_v3": 299}  # every other torchvision classifier is trained at 224x224
_SEGMENTATION_SIZE = 224  # segmentation models take any size; a small one keeps export and verification fast
_FACTORY_HINT = ("Build it in a factory function in a .py file that returns (model, example_inputs) and pass "
                 "file.py:FACTORY.")


class FirstImageDetection(nn.Module):
    """A torchvision detector with a tensor in and tensors out, which exports and verifies cleanly.

    torchvision detectors take a *list* of 3xHxW images and return a *list* of dicts, one per image. This wrapper
    takes a batch ``x`` of shape 1x3xHxW (pixel values in 0..1; the detector's own transform still resizes and
    normalizes inside) and returns the detections of the first image as a dict of tensors: ``boxes`` (Kx4,
    x1 y1 x2 y2 in input pixels), ``scores`` (K), ``labels`` (K, int64), then whatever else the model adds
    (``masks`` for Mask R-CNN, ``keypoints``/``keypoints_scores`` for Keypoint R-CNN). Only the first image of a
    larger batch is processed. The wrapped detector's weights live under the ``model.`` prefix.
    """

    _FIRST = ("boxes", "scores", "labels")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        detections = self.model([x[0]])[0]
        order = [key for key in self._FIRST if key in detections] + [k for k in detections if k not in self._FIRST]
        return {key: detections[key] for key in order}


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Random weights, but the same ones every time: a model exported from ``torchvision:NAME`` must be
    re-verifiable later against ``torchvision:NAME``, which builds it anew. The caller's RNG state is kept."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_torchvision(name: str, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Build torchvision model ``name`` with random weights (or ``state_dict``) and example inputs for its task."""
    require("torchvision", "torch", "Loading a torchvision model")
    import torchvision.models as models

    available = models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        raise ModelSourceError(
            f"torchvision has no model named '{name}' (model reference '{ref}')."
            + (f" Close matches: {', '.join(close)}." if close else ""),
            hint="torchvision.models.list_models() lists every name; write torchvision:NAME with one of them.",
        )
    task = _torchvision_task(models, name)
    if task in ("video", "optical flow"):
        raise ModelSourceError(
            f"'{ref}' is a torchvision {task} model; onnxgate builds torchvision image classification, detection "
            "and segmentation models only, because the inputs of the others (clips, image pairs) depend on how "
            "they are used.",
            hint=_FACTORY_HINT,
        )
    kwargs = dict(_TORCHVISION_KWARGS.get(name.removeprefix("quantized_"), {}))
    if task in ("detection", "segmentation"):
        kwargs["weights_backbone"] = None
    try:
        with seeded_init():
            model = models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ModelSourceError(f"Building torchvision model '{name}' failed: {describe(exc)}.",
                               hint=_FACTORY_HINT) from exc
    if state_dict is not None:
        state_dict.load_into(model)  # before wrapping: the weights' keys are those of the bare torchvision model
    generator = torch.Generator().manual_seed(0)
    if task == "detection":
        model = FirstImageDetection(model)
        size = model.model.transform.min_size[0]  # the detector resizes to this anyway
        image = torch.rand(1, 3, size, size, generator=generator)
    else:
        size = _SEGMENTATION_SIZE if task == "segmentation" else _IMAGE_SIZE.get(name.removeprefix("quantized_"), 224)
        image = torch.rand(2, 3, size, size, generator=generator)
    model.eval()
    return LoadedModel(model, ref, name_example_inputs(model, image, where=f"'{ref}'"),
                       meta={"source": "torchvision", "task": task})


def _torchvision_task(models: Any, name: str) -> str:
    for task, package in (("detection", models.detection), ("segmentation", models.segmentation),
                          ("video", models.video), ("optical flow", models.optical_flow)):
        if name in models.list_models(module=package):
            return task
    return "classification"


def load_timm(name: str, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Build timm model ``name`` with random weights (or ``state_dict``); example input from its pretrained config."""
    timm = require("timm", "timm", "Loading a timm model")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ModelSourceError(
            f"timm has no model named '{name}' (model reference '{ref}')."
            + (f" Close matches: {', '.join(close)}." if close else ""),
            hint="timm.list_models('PATTERN*') lists the names; write timm:NAME with one of them.",
        )
    try:
        with seeded_init():
            model = timm.create_model(name, pretrained=False)
    except Exception as exc:
        raise ModelSourceError(f"Building timm model '{name}' failed: {describe(exc)}.", hint=_FACTORY_HINT) from exc
    if state_dict is not None:
        state_dict.load_into(model)
    model.eval()
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, height, width = config.get("input_size", (3, 224, 224))
    image = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    return LoadedModel(model, ref, name_example_inputs(model, image, where=f"'{ref}'"),
                       meta={"source": "timm", "task": "classification"})
