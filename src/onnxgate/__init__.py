"""onnxgate: take a PyTorch model to a proven ONNX artifact.

The public face is small and blunt: entry points taking a reference or a path, returning a result object::

    import onnxgate
    result = onnxgate.export("torchvision:resnet18", "r18.onnx", config=onnxgate.ExportConfig(...))
    checked = onnxgate.verify("r18.onnx", "torchvision:resnet18")
    report = onnxgate.run("torchvision:resnet18", "out/")          # the whole job: export ... bundle
    onnxgate.verify_bundle("out/bundle")                           # torch-free, onnx-free

Everything public is listed in ``__all__`` (a test holds it to the modules). Importing onnxgate never imports
torch or onnx: entry points import what they need when called.
"""

# The subpackages ``export``, ``verify``, ``bench`` and ``bundle`` share their names with entry points below. Their
# ``__init__`` modules are light (names load lazily), so import them first: a later import of one of their
# submodules then no longer rebinds ``onnxgate.export`` & co. from the function to the package.
from . import bench as _bench_package  # noqa: F401
from . import bundle as _bundle_package  # noqa: F401
from . import export as _export_package  # noqa: F401
from . import verify as _verify_package  # noqa: F401
from ._version import __version__
from .errors import ExitCode, OnnxgateError
from .spec import Dim, ExportConfig, InputSpec, parse_dim, parse_input


def export(model, output=None, **kwargs):
    """Export a model (a reference string or an nn.Module) through the ladder -> ``ExportResult``.
    See ``onnxgate.export.export``."""
    from .export import export as _export

    return _export(model, output, **kwargs)


def inspect(path):
    """Structural report of an ONNX file (checker, shape inference, I/O, operators, onnxruntime load)."""
    from .verify.structure import check_structure

    return check_structure(path)


def verify(model, against=None, **kwargs):
    """Verify an ONNX file against its PyTorch model at every shape it claims -> ``VerifyResult``.
    See ``onnxgate.verify.api.verify``."""
    from .verify.api import verify as _verify

    return _verify(model, against, **kwargs)


def load_model(ref, **kwargs):
    """Resolve a model reference to a ``LoadedModel``. See ``onnxgate.sources.load_model``."""
    from .sources import load_model as _load_model

    return _load_model(ref, **kwargs)


def optimize(model_path, out, **kwargs):
    """Optimize an ONNX file with every transform re-verified -> ``TransformReport``.
    See ``onnxgate.transform.optimize.optimize``."""
    from .transform.optimize import optimize as _optimize

    return _optimize(model_path, out, **kwargs)


def quantize(model_path, out, **kwargs):
    """INT8-quantize an ONNX file within an accuracy budget -> ``QuantizeReport``.
    See ``onnxgate.transform.quantize.quantize``."""
    from .transform.quantize import quantize as _quantize

    return _quantize(model_path, out, **kwargs)


def bench(model, **kwargs):
    """Benchmark a model against PyTorch eager and across runtimes -> ``BenchReport``.
    See ``onnxgate.bench.api.bench``."""
    from .bench.api import bench as _bench

    return _bench(model, **kwargs)


def bundle(ref, out_dir, **kwargs):
    """Export, verify and write a portable bundle of ``ref`` -> the bundle's path.
    See ``onnxgate.pipeline.bundle_from_ref``."""
    from .pipeline import bundle_from_ref

    return bundle_from_ref(ref, out_dir, **kwargs)


def verify_bundle(path, **kwargs):
    """Re-verify a bundle without PyTorch (checksums, golden outputs) -> ``BundleVerification``."""
    from .bundle.verify import verify_bundle as _verify_bundle

    return _verify_bundle(path, **kwargs)


def run(ref, out_dir, **kwargs):
    """The main job: export -> verify -> optimize -> quantize -> bench -> bundle -> ``PipelineReport``.
    See ``onnxgate.pipeline.run``."""
    from .pipeline import run as _run

    return _run(ref, out_dir, **kwargs)


__all__ = ["__version__", "export", "verify", "inspect", "load_model", "optimize", "quantize", "bench", "bundle",
           "verify_bundle", "run", "Dim", "ExportConfig", "InputSpec", "parse_dim", "parse_input", "ExitCode",
           "OnnxgateError"]
