"""Hugging Face models from a local folder: ``hf:PATH``, a folder written by ``save_pretrained``.

Loading is fully offline (``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` during the call): onnxgate never
contacts the Hub. Remote code (``trust_remote_code``) is never run. The class comes from
``config.architectures[0]`` (what ``save_pretrained`` recorded) when transformers has it, else ``AutoModel``.

Outputs are made export-friendly: ``return_dict=True`` gives a ModelOutput (a dict the exporter flattens into
named outputs) and ``use_cache=False`` keeps decoders from returning key/value cache objects.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError, require
from ._text import describe
from .model import LoadedModel
from .weights import StateDict

_BATCH = 2
_SEQUENCE = 16
_DECODER_SEQUENCE = 8  # differs from _SEQUENCE so an exporter never mistakes the two lengths for one dimension
_TOKEN_ID_LIMIT = 1000  # random ids below this stay inside any real vocabulary, special tokens aside
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def load_hf(folder_text: str, ref: str, state_dict: StateDict | None) -> LoadedModel:
    """Load the Hugging Face model saved in ``folder_text``, with token-id (or pixel) example inputs."""
    folder = Path(folder_text).expanduser()
    if not folder.is_dir():
        raise ModelSourceError(
            f"Hugging Face model folder '{folder_text}' of model reference '{ref}' does not exist.",
            hint="hf: takes a local folder written by model.save_pretrained(FOLDER); onnxgate never downloads "
            "from the Hub, so download a Hub model first (e.g. huggingface-cli download NAME --local-dir FOLDER).",
        )
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"Hugging Face model folder '{folder_text}' has no config.json.",
            hint="Point hf: at the folder that model.save_pretrained(FOLDER) wrote (config.json plus weights).",
        )
    with _offline():
        transformers = require("transformers", "transformers", "Loading a Hugging Face model")
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise ModelSourceError(
                f"The config.json in '{folder_text}' cannot be read: {describe(exc)}.",
                hint="Re-save the model with save_pretrained using this version of transformers.",
            ) from exc
        config.return_dict = True
        if hasattr(config, "use_cache"):
            config.use_cache = False
        architectures = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, architectures[0], None) if architectures else None
        model_class = model_class or transformers.AutoModel
        try:
            model = model_class.from_pretrained(folder, config=config, local_files_only=True)
        except Exception as exc:
            raise ModelSourceError(
                f"Loading {model_class.__name__} from '{folder_text}' failed: {describe(exc)}.",
                hint="The folder needs the weights save_pretrained writes (model.safetensors or pytorch_model.bin) "
                "next to config.json; models that need trust_remote_code are not supported.",
            ) from exc
    if state_dict is not None:
        state_dict.load_into(model)
    model.eval()
    meta = {"source": "huggingface", "architecture": type(model).__name__, "model_type": config.model_type}
    return LoadedModel(model, ref, _example_inputs(model, config), meta=meta)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _example_inputs(model: Any, config: Any) -> dict[str, Any] | None:
    """Token ids (and mask, decoder ids) for text models, pixels for vision models, else None (use --input)."""
    import torch

    parameters = inspect.signature(model.forward).parameters
    generator = torch.Generator().manual_seed(0)
    text_config = config.get_text_config()
    vocab_size = getattr(text_config, "vocab_size", None)
    if "input_ids" in parameters and vocab_size:
        high = min(vocab_size, _TOKEN_ID_LIMIT)
        length = min(_SEQUENCE, getattr(text_config, "max_position_embeddings", None) or _SEQUENCE)
        inputs = {"input_ids": torch.randint(0, high, (_BATCH, length), generator=generator)}
        if "attention_mask" in parameters:
            inputs["attention_mask"] = torch.ones(_BATCH, length, dtype=torch.int64)
        if config.is_encoder_decoder and "decoder_input_ids" in parameters:
            inputs["decoder_input_ids"] = torch.randint(0, high, (_BATCH, _DECODER_SEQUENCE), generator=generator)
        return inputs
    image_size = getattr(config, "image_size", None)
    if "pixel_values" in parameters and image_size:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.rand(_BATCH, channels, height, width, generator=generator)}
    return None
