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
from .spec import Dim, ExportConfig, InputSpec, QuantizeConfig, RunConfig, VerifyConfig, parse_dim, parse_input


def export(model, output=None, *, config: ExportConfig | None = None, example_inputs=None, weights: str | None = None,
           arch: str | None = None, trust_pickle: bool = False, force: bool = False, progress=None):
    """Export a model (a reference string or an nn.Module) through the ladder -> ``ExportResult``.
    ``config``: inputs, dims, strategy, opset... (``ExportConfig``). See ``onnxgate.export.export``."""
    from .export import export as _export

    return _export(model, output, config=config, example_inputs=example_inputs, weights=weights, arch=arch,
                   trust_pickle=trust_pickle, force=force, progress=progress)


def inspect(path):
    """Structural report of an ONNX file (checker, shape inference, I/O, operators, onnxruntime load)."""
    from .verify.structure import check_structure

    return check_structure(path)


def verify(model, against=None, *, config: ExportConfig | None = None, settings: VerifyConfig | None = None,
           data=None, tolerances=None, proof=None, **options):
    """Verify an ONNX file against its PyTorch model at every shape it claims -> ``VerifyResult``.
    ``config``: input specs and dims (``ExportConfig``); ``settings``: runtimes, tolerances, data... (``VerifyConfig``).
    See ``onnxgate.verify.api.verify``."""
    from .verify.api import verify as _verify

    return _verify(model, against, config=config, settings=settings, data=data, tolerances=tolerances, proof=proof,
                   **options)


def load_model(ref, *, weights: str | None = None, arch: str | None = None, trust_pickle: bool = False):
    """Resolve a model reference to a ``LoadedModel``. See ``onnxgate.sources.load_model``."""
    from .sources import load_model as _load_model

    return _load_model(ref, weights=weights, arch=arch, trust_pickle=trust_pickle)


def optimize(model_path, out, *, level: str | None = "basic", simplifier: str | None = "onnxslim", fold: bool = True,
             fuse: bool = True, fp16: bool = False, keep_io_types: bool = True, fp16_keep_ops: tuple[str, ...] = (),
             feeds=None, preprocess: str | None = None, force: bool = False, progress=None):
    """Optimize an ONNX file with every transform re-verified -> ``TransformReport``.
    See ``onnxgate.transform.optimize.optimize``."""
    from .transform.optimize import optimize as _optimize

    return _optimize(model_path, out, level=level, simplifier=simplifier, fold=fold, fuse=fuse, fp16=fp16,
                     keep_io_types=keep_io_types, fp16_keep_ops=fp16_keep_ops, feeds=feeds, preprocess=preprocess,
                     force=force, progress=progress)


def quantize(model_path, out, *, mode: str = "static", calib=None, eval_data=None, labels=None, class_names=None,
             labels_key: str = "labels", preprocess: str | None = None, method: str = "minmax",
             per_channel: bool = True, max_accuracy_drop: float | None = None, max_error: float | None = None,
             max_float_nodes: int = 8, force: bool = False, equalize: bool = False, bias_correction: bool = False,
             progress=None):
    """INT8-quantize an ONNX file within an accuracy budget -> ``QuantizeReport`` (the options of
    ``QuantizeConfig``). See ``onnxgate.transform.quantize.quantize``."""
    from .transform.quantize import quantize as _quantize

    return _quantize(model_path, out, mode=mode, calib=calib, eval_data=eval_data, labels=labels,
                     class_names=class_names, labels_key=labels_key, preprocess=preprocess, method=method,
                     per_channel=per_channel, max_accuracy_drop=max_accuracy_drop, max_error=max_error,
                     max_float_nodes=max_float_nodes, force=force, equalize=equalize,
                     bias_correction=bias_correction, progress=progress)


def bench(model, *, against=None, variants=(), config: ExportConfig | None = None, settings=None,
          base_verified: bool | None = None, weights: str | None = None, arch: str | None = None,
          trust_pickle: bool = False, data=None, shipped=None, progress=None):
    """Benchmark a model against PyTorch eager and across runtimes -> ``BenchReport``.
    ``settings``: a ``onnxgate.bench.BenchSettings``. See ``onnxgate.bench.api.bench``."""
    from .bench.api import bench as _bench

    return _bench(model, against=against, variants=variants, config=config, settings=settings,
                  base_verified=base_verified, weights=weights, arch=arch, trust_pickle=trust_pickle, data=data,
                  shipped=shipped, progress=progress)


def bundle(ref, out_dir, *, config: ExportConfig | None = None, force: bool = False, tarball: bool = False,
           progress=None, on_stage=None):
    """Export, verify and write a portable bundle of ``ref`` -> the bundle's path.
    See ``onnxgate.pipeline.bundle_from_ref``."""
    from .pipeline import bundle_from_ref

    return bundle_from_ref(ref, out_dir, config=config, force=force, tarball=tarball, progress=progress,
                           on_stage=on_stage)


def verify_bundle(bundle, *, runtime: str | None = None, trust=None):
    """Re-verify a bundle (a folder, a ``.tar.gz`` or what ``bundle.open`` returned) without PyTorch (checksums,
    golden outputs) -> ``BundleVerification``."""
    from .bundle.verify import verify_bundle as _verify_bundle

    return _verify_bundle(bundle, runtime=runtime, trust=trust)


def run(ref, out_dir, *, config: ExportConfig | None = None, data=None, evaluate=None, force: bool = False,
        bundle: bool = True, targets: tuple[str, ...] = (), bench: str | None = "quick", optimize: bool = True,
        quantize: QuantizeConfig | None = None, progress=None, weights: str | None = None, arch: str | None = None,
        trust_pickle: bool = False, deploy: tuple[str, ...] = (), eval_data=None, eval_labels=None,
        preprocess: str | None = None, on_stage=None, hunt_budget: int | None = None):
    """The main job: export -> verify -> optimize -> quantize -> bench -> bundle -> ``PipelineReport``.
    ``config``: the export (``ExportConfig``); ``quantize``: the INT8 stage (``QuantizeConfig``). A whole job read
    from flags or onnxgate.toml (a ``RunConfig``, see ``configure.load_toml``) runs with ``pipeline.run_job``.
    See ``onnxgate.pipeline.run``."""
    from .pipeline import run as _run

    return _run(ref, out_dir, config=config, data=data, evaluate=evaluate, force=force, bundle=bundle,
                targets=targets, bench=bench, optimize=optimize, quantize=quantize, progress=progress,
                weights=weights, arch=arch, trust_pickle=trust_pickle, deploy=deploy, eval_data=eval_data,
                eval_labels=eval_labels, preprocess=preprocess, on_stage=on_stage, hunt_budget=hunt_budget)


__all__ = ["__version__", "export", "verify", "inspect", "load_model", "optimize", "quantize", "bench", "bundle",
           "verify_bundle", "run", "Dim", "ExportConfig", "VerifyConfig", "QuantizeConfig", "RunConfig", "InputSpec", "parse_dim", "parse_input", "ExitCode",
           "OnnxgateError"]
