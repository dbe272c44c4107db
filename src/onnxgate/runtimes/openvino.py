"""OpenVINO runner: a second, independent runtime to check an ONNX file against, and the one the benchmark times.

openvino is an optional extra, imported when a runner is built. Outputs are keyed by the ONNX output names. This is
the only place onnxgate compiles an OpenVINO model.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BadInputError, RuntimeIncompatibleError, first_line, require


class OpenVinoRunner:
    """Runs an ONNX file in OpenVINO on ``device`` (CPU by default).

    ``execution_mode`` defaults to ``ACCURACY``: with OpenVINO's default (``PERFORMANCE``) the CPU plugin computes
    float32 models in bfloat16 on CPUs that support it, an error of ~1e-3 that is OpenVINO's choice, not the
    model's. A benchmark measures what a deployment would get: ``execution_mode="PERFORMANCE"``,
    ``performance_hint="LATENCY"`` and a fixed thread count (``threads``; None: OpenVINO's choice).
    ``inference_precision`` says what OpenVINO chose to compute in (``f32``, ``bf16``, ...), so a report can say so;
    ``precision_hint`` pins it (``"f32"``: float32 even in PERFORMANCE mode, a configuration that can be verified
    with float32 tolerances where the bf16 one cannot).

    ``execution_mode=None`` with no other setting compiles exactly as a user who passes nothing does
    (``core.compile_model(path, device)``): OpenVINO's defaults, and nothing read from the IR's ``runtime_options``
    that OpenVINO itself does not apply (``recorded_options`` says what an IR records; ``apply_recorded=True``
    passes it, as serve and bench do).

    Each compiled model keeps one infer request, reused between calls; outputs are copied once, so the caller owns
    them. The CPU plugin runs dynamic shapes as they are. Devices that need static shapes get the model reshaped
    to each new set of input shapes and recompiled on first use (cached per shape set).
    """

    def __init__(self, model_path: str | Path, device: str = "CPU", *, execution_mode: str | None = "ACCURACY",
                 threads: int | None = None, performance_hint: str | None = None, precision_hint: str | None = None,
                 apply_recorded: bool = False):
        ov = require("openvino", "openvino", "The OpenVINO runner")
        self.name = "openvino"
        self.device = device
        self._config: dict[str, object] = dict(recorded_options(model_path)) if apply_recorded else {}
        if execution_mode is not None:
            self._config["EXECUTION_MODE_HINT"] = execution_mode
        if performance_hint is not None:
            self._config["PERFORMANCE_HINT"] = performance_hint
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision_hint is not None:
            self._config["INFERENCE_PRECISION_HINT"] = precision_hint
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(model_path))
        except Exception as exc:  # OpenVINO raises a generic RuntimeError for every frontend failure
            raise self._incompatible(f"cannot read '{model_path}'", exc) from exc
        self.input_names = [p.get_any_name() for p in self._model.inputs]
        self.output_names = [p.get_any_name() for p in self._model.outputs]
        self._compiled: dict[tuple, object] = {}
        self._static_only = False
        try:  # no setting at all: compiled from the path, as `core.compile_model(path, device)` does it
            self._compiled[()] = (self._core.compile_model(self._model, device, self._config) if self._config
                                  else self._core.compile_model(str(model_path), device))
        except Exception as exc:
            if not self._model.is_dynamic():
                raise self._incompatible(f"cannot compile '{model_path}' for {device}", exc) from exc
            self._static_only = True

    @property
    def inference_precision(self) -> str | None:
        """The element type OpenVINO computes in (``f32``, ``bf16``, ``f16``; ``dynamic`` in ACCURACY mode: the
        model's own precision), as the compiled model reports it; None before a static-shape device has compiled
        anything, or when the device does not say."""
        compiled = next(iter(self._compiled.values()), None)
        if compiled is None:
            return None
        try:
            return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except Exception:  # a plugin without the property
            return None

    @staticmethod
    def default_precision(device: str = "CPU") -> str | None:
        """What ``device`` computes float32 models in when nothing pins it (``bf16`` on CPUs with bfloat16
        support, else ``f32``); None when OpenVINO is missing or the device does not say."""
        try:
            import openvino as ov

            return ov.Core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()
        except Exception:  # no openvino, no such device, or a plugin without the property
            return None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise BadInputError(f"The feed has no value for input(s) {', '.join(missing)}.",
                                hint=f"The model's inputs are: {', '.join(self.input_names)}.")
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self.input_names}
        compiled = self._compiled_for(feed)
        try:
            # the compiled model's own infer request, created once and reused; outputs alias its buffers
            results = compiled(feed, share_inputs=True, share_outputs=True)
        except Exception as exc:
            raise self._incompatible("failed to run the model", exc) from exc
        # copy: result arrays alias the infer request's buffers, which the next call overwrites
        return {name: np.array(results[port]) for name, port in zip(self.output_names, compiled.outputs)}

    def _compiled_for(self, feed: dict[str, np.ndarray]):
        if not self._static_only:
            return self._compiled[()]
        key = tuple((name, arr.shape) for name, arr in feed.items())
        if key not in self._compiled:
            model = self._model.clone()
            model.reshape({name: list(arr.shape) for name, arr in feed.items()})
            try:
                self._compiled[key] = self._core.compile_model(model, self.device, self._config)
            except Exception as exc:
                raise self._incompatible(f"cannot compile the model for {self.device} at shapes {dict(key)}",
                                         exc) from exc
        return self._compiled[key]

    def _incompatible(self, what: str, exc: Exception) -> RuntimeIncompatibleError:
        import openvino as ov

        return RuntimeIncompatibleError(
            f"OpenVINO {ov.get_version()} {what}: {first_line(exc)}",
            hint="Export at an opset this OpenVINO supports (--opset), upgrade openvino, or use another device.",
        )

    def __enter__(self) -> "OpenVinoRunner":
        return self

    def __exit__(self, *exc) -> None:
        self._compiled.clear()


RUNTIME_OPTIONS = "runtime_options"  # the IR's rt_info section OpenVINO reads compile settings from


def convert_to_ir(model_path: str | Path, xml_path: str | Path, *, compress_to_fp16: bool,
                  runtime_options: dict[str, str] | None = None) -> tuple[Path, Path]:
    """OpenVINO IR (``.xml`` + ``.bin``) from an ONNX file through OpenVINO's own converter
    (``openvino.convert_model``, then ``openvino.save_model``; ``compress_to_fp16`` stores the weights in float16,
    which the CPU plugin expands back to its inference precision). ``runtime_options`` (e.g.
    ``{"INFERENCE_PRECISION_HINT": "f32"}``) are written into the IR's rt_info ``runtime_options``, OpenVINO's own
    place for the settings a model is meant to be compiled with (``model.set_rt_info(value, ["runtime_options",
    key])``). Returns ``(xml, bin)``. Raises ``RuntimeIncompatibleError`` when OpenVINO cannot convert the model."""
    ov = require("openvino", "openvino", "The OpenVINO IR target")
    xml_path = Path(xml_path)
    try:
        model = ov.convert_model(str(model_path))
        for key, value in (runtime_options or {}).items():
            model.set_rt_info(str(value), [RUNTIME_OPTIONS, key])
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # OpenVINO raises generic RuntimeError/OpConversionFailure for every frontend failure
        raise RuntimeIncompatibleError(f"OpenVINO {ov.get_version()} cannot convert '{model_path}' to IR: "
                                       f"{first_line(exc)}",
                                       hint="Export at an opset this OpenVINO supports (--opset), or upgrade "
                                            "openvino.") from exc
    return xml_path, xml_path.with_suffix(".bin")


def run_model(model, feeds, device: str = "CPU") -> list[list[np.ndarray]]:
    """Every output (in the model's order) of an OpenVINO model on each feed: an IR's path or an in-memory
    ``ov.Model`` (NNCF's quantized model before it is written), compiled under OpenVINO's defaults for ``device``,
    as a user who passes nothing runs it. The outputs are copies the caller owns."""
    ov = require("openvino", "openvino", "Running an OpenVINO model")
    compiled = ov.Core().compile_model(str(model) if isinstance(model, (str, Path)) else model, device)
    return [[np.array(got[port]) for port in compiled.outputs] for got in (compiled(feed) for feed in feeds)]


def recorded_options(model_path: str | Path) -> dict[str, str]:
    """The settings an IR records in its rt_info ``runtime_options`` (``{}`` for an ONNX file or an IR without
    them). OpenVINO's CPU plugin applies only some of them by itself (KV-cache and dynamic-quantization options, in
    2026.4; not ``INFERENCE_PRECISION_HINT``): a caller that wants the IR run as it was verified passes them."""
    if Path(model_path).suffix.lower() != ".xml":
        return {}
    ov = require("openvino", "openvino", "Reading an OpenVINO IR")
    model = ov.Core().read_model(str(model_path))
    if not model.has_rt_info(RUNTIME_OPTIONS):
        return {}
    return {key: str(value.astype(str)) for key, value in model.get_rt_info(RUNTIME_OPTIONS).astype(dict).items()}


def record_options(xml_path: str | Path, runtime_options: dict[str, str]) -> None:
    """Rewrite an IR's rt_info ``runtime_options`` in place (read, set, save: the weights are written back as they
    are stored, FP16 included)."""
    ov = require("openvino", "openvino", "Writing an OpenVINO IR")
    xml_path = Path(xml_path)
    model = ov.Core().read_model(str(xml_path))
    for key, value in runtime_options.items():
        model.set_rt_info(str(value), [RUNTIME_OPTIONS, key])
    staged = xml_path.with_name(xml_path.stem + ".rewrite.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)
    del model
    staged.replace(xml_path)
    staged.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))


class OpenVinoSession:
    """Serving on OpenVINO: a session with onnxruntime's ``run(output_names, feed)`` face, so serve's executor, batch
    probe and golden self-check run on it unchanged. Compiled the way ``onnxgate bench`` measured and verified an
    OpenVINO configuration: CPU, ``EXECUTION_MODE_HINT=PERFORMANCE``, ``PERFORMANCE_HINT=LATENCY``, the
    configuration's thread count, and ``INFERENCE_PRECISION_HINT`` pinned to the precision it was verified at (so this
    machine cannot pick another one, e.g. bf16 where f32 was verified): ``precision``, or, when None, what the IR
    records in its rt_info ``runtime_options`` (the setting its deploy verification held under). Each thread gets
    its own infer request (a request is not safe to share between threads); outputs are copies the caller owns."""

    def __init__(self, model_path: str | Path, *, threads: int | None, precision: str | None = None):
        ov = require("openvino", "openvino", "`onnxgate serve --runtime openvino`")
        self.version = ov.get_version().split("-")[0]
        config: dict[str, object] = {**recorded_options(model_path), "EXECUTION_MODE_HINT": "PERFORMANCE",
                                     "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises a generic RuntimeError for every failure
            raise RuntimeIncompatibleError(f"OpenVINO {self.version} cannot compile '{model_path}' for CPU with "
                                           f"{config}: {first_line(exc)}",
                                           hint="Serve it with --runtime onnxruntime.") from exc
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.threads = int(threads or 0)
        self.config = config
        self._ports = {port.get_any_name(): port for port in self.compiled.outputs}
        self._local = threading.local()

    def describe(self) -> str:
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return (f"OpenVINO {self.version} CPU, PERFORMANCE mode, LATENCY hint, INFERENCE_PRECISION_HINT="
                f"{self.precision}{threads}")

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        return [np.array(result[self._ports[name]], copy=True) for name in output_names]
