"""Model sources: resolve a model reference (``file.py:Net``, ``torchvision:resnet18``, ``hf:PATH``, a model
file...) to a PyTorch module plus example inputs. Importing this package does not import torch."""

from .loader import load_model, parse_ref
from .model import LoadedModel

__all__ = ["load_model", "parse_ref", "LoadedModel"]
