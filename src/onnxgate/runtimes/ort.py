"""ONNX Runtime: the one place onnxgate builds an onnxruntime session (CPU by default; CUDA/TensorRT providers when
asked for and present).

``open_session`` builds every session — the runner's, the transforms' verifier's, offline optimization's, the
benchmark's start-up probe's — from a path, serialized bytes or an ``onnx.ModelProto``, and is the one translation
of onnxruntime's load errors into ``RuntimeIncompatibleError``. Neither onnx nor onnxruntime is imported at module
load: the bundle verifier imports this module where onnx is not installed.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, RuntimeIncompatibleError, first_line

# onnxgate's level name -> onnxruntime's GraphOptimizationLevel member. "layout" adds the NCHWc layout transforms,
# tuned to this machine's CPU (offline optimization offers it; see transform/ort_optimize.py).
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}

# Parity is judged on the graph as written. ONNX Runtime's optimizer rewrites some graphs into what the user
# probably meant — it deletes Dropout nodes even when exported with training_mode=True — so a model exported in
# training mode would pass under "all" here and then misbehave in a runtime that honours the graph (or in ORT with
# optimizations off). Benchmarks, not verification, use the optimized levels.
VERIFY_OPT_LEVEL = "disable"

_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

def open_session(model: Any, *, what: str | None = None, opt_level: str = "all", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, providers: list[str] | None = None,
                 optimized_model_path: str | Path | None = None, log_severity: int = 3,
                 config: dict[str, str] | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model``: a path, serialized bytes or an ``onnx.ModelProto``
    (serialized through ``serde.to_bytes``, which refuses one over protobuf's 2 GiB limit: pass a path then).

    ``what`` names the model in errors (default: the path, or "the model"). ``providers`` defaults to CPU only, so
    results do not depend on which GPUs a machine happens to have; providers this onnxruntime lacks are dropped.
    ``optimized_model_path``: onnxruntime writes the graph it built at ``opt_level`` there (offline optimization).
    ``config``: session configuration entries (``SessionOptions.add_session_config_entry``).
    Raises ``RuntimeIncompatibleError`` when onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise BadInputError(f"Optimization level '{opt_level}' is not one of onnxruntime's levels.",
                            hint=f"Use one of: {', '.join(OPT_LEVELS)}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.log_severity_level = log_severity
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    if isinstance(model, (str, os.PathLike)):
        source, where = str(model), what or f"'{model}'"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source, where = bytes(model), what or "the model"
    else:  # an onnx.ModelProto
        from .. import serde

        source, where = serde.to_bytes(model), what or "the model"
    try:
        # onnxruntime's Python layer prints its provider fallback ("EP Error ... Falling back") on stdout, which
        # would corrupt `--json` output: keep it off stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            return ort.InferenceSession(source, so, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented/NoSuchFile classes
        raise RuntimeIncompatibleError(
            f"onnxruntime {ort.__version__} cannot load {where}: {first_line(exc)}",
            hint="Export at an opset this onnxruntime supports (--opset), upgrade onnxruntime, or check the model "
                 "with `onnxgate inspect`.",
        ) from exc


# Session config keys under which onnxruntime writes an optimized model's initializers to an external data file.
_EXTERNAL_FILE_KEY = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"


def optimize_offline(model: Any, level: str, out_path: str | Path, *, external_data: str | None = None,
                     external_min_bytes: int = 1024) -> Path:
    """onnxruntime's offline graph optimization: the graph a CPU session builds at ``level`` (a key of
    ``OPT_LEVELS``), written by onnxruntime to ``out_path``. Returns ``out_path``; read it with ``serde.load``.

    ``external_data``: a file name; onnxruntime writes every initializer of at least ``external_min_bytes`` into
    it, beside ``out_path``, instead of into the protobuf — the way to optimize a model over 2 GiB (pass ``model``
    as a path then: onnxruntime reads the weights from its external data files, nothing is serialized here)."""
    config = None
    if external_data is not None:
        config = {_EXTERNAL_FILE_KEY: external_data, _EXTERNAL_MIN_KEY: str(int(external_min_bytes))}
    open_session(model, what="the model to optimize", opt_level=level, providers=["CPUExecutionProvider"],
                 optimized_model_path=out_path, config=config)  # the hardware warning is recorded by the caller
    return Path(out_path)


class OrtRunner:
    """Runs an ONNX file, serialized model bytes or an ``onnx.ModelProto`` in onnxruntime (see ``open_session``)."""

    def __init__(self, model: Any, *, providers: list[str] | None = None, opt_level: str = "all",
                 intra_op_threads: int = 0, inter_op_threads: int = 0, what: str | None = None,
                 cast_float_inputs: bool = False):
        self.name = "onnxruntime"
        self.session = open_session(model, what=what, opt_level=opt_level, intra_op_threads=intra_op_threads,
                                    inter_op_threads=inter_op_threads, providers=providers)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # cast_float_inputs: float feeds in each input's own float type (an FP16 file without float32 I/O is fed
        # float16), so one set of feeds runs every precision of a model
        self._casts = ({i.name: _NP_OF_ORT[i.type] for i in self.session.get_inputs() if i.type in _NP_OF_ORT}
                       if cast_float_inputs else {})

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in inputs.items() if k in self.input_names}
        for name, dtype in self._casts.items():
            if name in feed:
                feed[name] = np.asarray(feed[name]).astype(dtype, copy=False)
        outs = self.session.run(None, feed)
        return dict(zip(self.output_names, outs))

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.session = None  # type: ignore[assignment]


def convert_to_ort_format(model_path: str | Path, out_dir: str | Path, *, target_platform: str = "arm",
                          type_reduction: bool = True) -> tuple[Path, Path]:
    """ONNX Runtime Mobile: the ``.ort`` format file and the operator config of a reduced build, written by
    onnxruntime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``, the "Fixed" optimization style at
    level "all" for ``target_platform``). Returns ``(ort_file, config_file)`` under ``out_dir``. The tool
    converts a whole folder: it is given a staging copy holding only this model. Raises
    ``RuntimeIncompatibleError`` when onnxruntime cannot convert it."""
    import shutil

    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from ..fsutil import staging_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staging_dir("ortformat") as tmp:
        staged = Path(tmp) / "model.onnx"
        shutil.copyfile(model_path, staged)
        from .. import serde  # the external-data files the model names (checked to stay in its folder) travel too

        for rel in serde.external_data_locations(serde.load(model_path, load_external_data=False)):
            (staged.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(model_path).parent / rel, staged.parent / rel)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(staged, out_dir, optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform, enable_type_reduction=type_reduction)
        except Exception as exc:  # the tool raises plain RuntimeError/ValueError for a model it cannot convert
            raise RuntimeIncompatibleError(
                f"onnxruntime {ort.__version__} cannot convert '{model_path}' to the ORT format: {first_line(exc)}",
                hint="Export at an opset this onnxruntime supports (--opset), or upgrade onnxruntime.") from exc
    ort_file = out_dir / "model.ort"
    configs = sorted(out_dir.glob("model.required_operators*.config"))
    if not ort_file.is_file() or not configs:
        raise RuntimeIncompatibleError(f"onnxruntime's ORT-format converter wrote no model for '{model_path}'.",
                                       hint="Run `python -m onnxruntime.tools.convert_onnx_models_to_ort` on it to "
                                            "see why.")
    return ort_file, configs[0]
