"""ONNX Runtime runner (CPU by default; CUDA/TensorRT providers when asked for and present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RuntimeIncompatibleError

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}

# Parity is judged on the graph as written. ONNX Runtime's optimizer rewrites some graphs into what the user
# probably meant — it deletes Dropout nodes even when exported with training_mode=True — so a model exported in
# training mode would pass under "all" here and then misbehave in a runtime that honours the graph (or in ORT with
# optimizations off). Benchmarks, not verification, use the optimized levels.
VERIFY_OPT_LEVEL = "disable"


class OrtRunner:
    """Runs an ONNX file or serialized model bytes in onnxruntime.

    ``providers`` defaults to CPU only, so results do not depend on which GPUs a machine happens to have.
    """

    def __init__(self, model: str | Path | bytes, *, providers: list[str] | None = None,
                 opt_level: str = "all", intra_op_threads: int = 0, inter_op_threads: int = 0):
        import onnxruntime as ort

        self.name = "onnxruntime"
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = inter_op_threads
        so.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented classes
            where = "the model" if isinstance(model, bytes) else f"'{model}'"
            raise RuntimeIncompatibleError(
                f"onnxruntime {ort.__version__} cannot load {where}: {str(exc).strip().splitlines()[0][:400]}",
                hint="Export at an opset this onnxruntime supports (--opset), or upgrade onnxruntime.",
            ) from exc
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in inputs.items() if k in self.input_names}
        outs = self.session.run(None, feed)
        return dict(zip(self.output_names, outs))

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.session = None  # type: ignore[assignment]
