"""The image-classification endpoint's two halves: photos in (decoded with Pillow, preprocessed as the bundle
records), ranked labels out.

Preprocessing is the bundle's recorded spec run by its numpy/Pillow implementation (``onnxgate.preprocess``:
torchvision's Resize -> CenterCrop -> ToTensor -> Normalize to the rounding, proven against torchvision by
``onnxgate.preprocess.prove``); a one-channel model gets the grey image and the first mean/std.
Decoding is bounded before pixels are read: only common photo formats, at most ``MAX_PIXELS`` pixels (a small PNG can
declare a gigapixel canvas), and any decoder error is the client's (HTTP 400 naming the file).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from .protocol import RequestError

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000
MAX_IMAGES = 64  # per request, before the model's own batch limit is asked


def decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise RequestError(400, f"{where} must be a base64 string of an image file.", input=where)
    if text.startswith("data:") and "," in text[:200]:  # a data: URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64.", input=where) from None


def to_array(data: bytes, where: str, preprocess, channels: int, dtype: str) -> np.ndarray:
    """One image file's bytes as a C x crop x crop array of ``dtype``, preprocessed as the bundle records."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(400, f"The image {where} is empty.", input=where)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS or min(width, height) < 1:
                raise RequestError(413 if width * height > MAX_PIXELS else 400,
                                   f"The image {where} is {width}x{height} pixels; at most {MAX_PIXELS:,} are decoded.",
                                   input=where, allowed={"max_pixels": MAX_PIXELS})
            img.load()
            picture = img.convert("L" if channels == 1 else "RGB")
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError(413, f"The image {where} declares more pixels than Pillow decodes safely.", input=where,
                           allowed={"max_pixels": MAX_PIXELS}) from None
    except UnidentifiedImageError as exc:
        raise RequestError(400, f"The upload {where} is not an image in a supported format ({type(exc).__name__}).",
                           input=where, allowed={"formats": list(FORMATS)}) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt files
        raise RequestError(400, f"The image {where} cannot be decoded: {str(exc)[:200]}.", input=where) from None
    return np.ascontiguousarray(preprocess.array(picture, channels), dtype=dtype)


def scores(logits: np.ndarray) -> tuple[np.ndarray, str]:
    """Class scores per row and how they were obtained: the output itself when its rows are already
    probabilities, else its softmax."""
    logits = logits.astype(np.float64)
    finite = np.isfinite(logits).all()
    if finite and logits.min() >= 0 and np.allclose(logits.sum(axis=1), 1.0, atol=1e-3):
        return logits, "the model's output (rows are probabilities)"
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True), "softmax of the model's output"


def top_k(row: np.ndarray, k: int, labels: tuple[str, ...] | None) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else None, "score": float(row[i])} for i in order]
