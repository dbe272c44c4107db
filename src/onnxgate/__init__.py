"""onnxgate: take a PyTorch model to a proven ONNX artifact.

The public face is small and blunt::

    import onnxgate
    result = onnxgate.export("torchvision:resnet18", "r18.onnx", config=onnxgate.ExportConfig(...))
    report = onnxgate.inspect("r18.onnx")

Importing onnxgate never imports torch: entry points that need it import it when called.
"""

# The subpackages ``export`` and ``verify`` share their names with the entry-point functions below. Import them
# first, so that later imports of their submodules do not rebind ``onnxgate.export`` to the package.
from . import export as _export_package  # noqa: F401  (torch-free at import time)
from . import verify as _verify_package  # noqa: F401
from ._version import __version__
from .errors import ExitCode, OnnxgateError
from .spec import Dim, ExportConfig, InputSpec, parse_dim, parse_input


def export(model, output=None, **kwargs):
    """Export a model (a reference string or an nn.Module) through the ladder. See ``onnxgate.export.export``."""
    from .export import export as _export

    return _export(model, output, **kwargs)


def inspect(path):
    """Structural report of an ONNX file (checker, shape inference, I/O, operators, onnxruntime load)."""
    from .verify.structure import check_structure

    return check_structure(path)


def verify(model, against=None, **kwargs):
    """Verify an ONNX file against its PyTorch model at every shape it claims. See ``onnxgate.verify.api.verify``."""
    from .verify.api import verify as _verify

    return _verify(model, against, **kwargs)


def load_model(ref, **kwargs):
    """Resolve a model reference to a ``LoadedModel``. See ``onnxgate.sources.load_model``."""
    from .sources import load_model as _load_model

    return _load_model(ref, **kwargs)


__all__ = ["__version__", "export", "verify", "inspect", "load_model", "Dim", "ExportConfig", "InputSpec", "parse_dim",
           "parse_input", "ExitCode", "OnnxgateError"]
