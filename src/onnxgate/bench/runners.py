"""The configurations a benchmark measures, and the runner for each.

A *side* is one way to ship the model: PyTorch eager, or one ONNX variant in one runtime (``onnxruntime:base``,
``openvino:int8``). A *configuration* is a side at one thread count (and, for ONNX Runtime, one graph optimization
level). Every side is measured at 1 thread and at all usable cores, and compared at its best configuration: a
baseline pinned to a thread count that suits it badly would flatter the other side.

OpenVINO is measured as a deployment runs it (PERFORMANCE mode, which may compute in bfloat16) and, where that is
not float32, also pinned to float32 (``precision="f32"``): the faster one may fail its verification at its own
precision, and then the pinned one is the OpenVINO configuration that can be recommended.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

PYTORCH, ONNXRUNTIME, OPENVINO = "pytorch", "onnxruntime", "openvino"
RUNTIMES = (PYTORCH, ONNXRUNTIME, OPENVINO)
EAGER = "eager"  # the variant name of the PyTorch side
BASE = "base"  # the variant name of the ONNX file being benchmarked (other variants are named by the caller)
PYTORCH_SIDE = f"{PYTORCH}:{EAGER}"  # the baseline every ratio is taken against


@dataclass(frozen=True)
class Variant:
    """An ONNX file to benchmark. ``verified``: it passed parity verification (only verified variants can be
    recommended)."""

    name: str
    path: str
    verified: bool = False


@dataclass(frozen=True)
class Config:
    runtime: str
    variant: str
    threads: int
    opt_level: str | None = None  # onnxruntime only
    precision: str | None = None  # OpenVINO only: a pinned INFERENCE_PRECISION_HINT (None: the runtime's choice)

    @property
    def side(self) -> str:
        return f"{self.runtime}:{self.variant}"

    @property
    def id(self) -> str:
        level = f"/{self.opt_level}" if self.opt_level else ""
        precision = f"/{self.precision}" if self.precision else ""
        return f"{self.side}{level}{precision}/t{self.threads}"


def plan(variants: list[Variant], *, runtimes: tuple[str, ...], threads: tuple[int, ...],
         opt_levels: tuple[str, ...], openvino_precisions: tuple[str | None, ...] = (None,)) -> list[Config]:
    """Every configuration to measure. Optimization levels are swept on the base variant only: the other
    variants are what an optimizer already produced, measured at ONNX Runtime's default level ("all").
    ``openvino_precisions``: None (OpenVINO's own choice) and any pinned precision to measure as well."""
    configs = [Config(PYTORCH, EAGER, t) for t in threads] if PYTORCH in runtimes else []
    for variant in variants:
        if ONNXRUNTIME in runtimes:
            levels = opt_levels if variant.name == BASE else ("all",)
            configs += [Config(ONNXRUNTIME, variant.name, t, level) for level in levels for t in threads]
        if OPENVINO in runtimes:
            configs += [Config(OPENVINO, variant.name, t, precision=p) for p in openvino_precisions for t in threads]
    return configs


def settings_of(config: Config) -> dict[str, Any]:
    """Every setting ``open_runner`` passes to the runtime for ``config``, by the runtime's own names: what a
    recommendation records, and exactly what its verification and timing ran with (``open_runner`` builds the
    runner from this dict). None: not passed, the runtime's own choice."""
    if config.runtime == PYTORCH:
        return {"torch.set_num_threads": config.threads}
    if config.runtime == ONNXRUNTIME:
        return {"providers": ["CPUExecutionProvider"], "graph_optimization_level": config.opt_level or "all",
                "intra_op_num_threads": config.threads}
    # OpenVINO the way a deployment runs it: PERFORMANCE execution mode (which may compute float32 models in
    # bfloat16 on CPUs that support it; ``runner.inference_precision`` says what it chose), LATENCY hint, a fixed
    # thread count, one infer request reused between calls.
    return {"device": "CPU", "EXECUTION_MODE_HINT": "PERFORMANCE", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": config.threads, "INFERENCE_PRECISION_HINT": config.precision}


def thread_setup(config: Config):
    """What must run before each timed block of ``config`` when several are interleaved: PyTorch's thread count is
    process-wide, so it is set again before each of its blocks; None for runtimes that keep it per session."""
    if config.runtime != PYTORCH:
        return None
    import torch

    return lambda: torch.set_num_threads(config.threads)


@contextmanager
def open_runner(config: Config, *, model_path: str | Path | None, module: Any = None,
                input_names: list[str] | None = None) -> Iterator[Any]:
    """The runner of ``config``, built from ``settings_of(config)``, with its thread count in force while the
    block runs."""
    settings = settings_of(config)
    if config.runtime == PYTORCH:
        import torch

        from ..runtimes.torch_runner import TorchRunner

        previous = torch.get_num_threads()
        torch.set_num_threads(settings["torch.set_num_threads"])  # process-wide: restored when the block ends
        try:
            with TorchRunner(module, input_names=list(input_names or [])) as runner:
                yield runner
        finally:
            torch.set_num_threads(previous)
    elif config.runtime == ONNXRUNTIME:
        from ..runtimes.ort import OrtRunner

        with OrtRunner(model_path, providers=settings["providers"], opt_level=settings["graph_optimization_level"],
                       intra_op_threads=settings["intra_op_num_threads"]) as runner:
            yield runner
    else:
        from ..runtimes.openvino import OpenVinoRunner

        with OpenVinoRunner(model_path, settings["device"], execution_mode=settings["EXECUTION_MODE_HINT"],
                            performance_hint=settings["PERFORMANCE_HINT"], threads=settings["INFERENCE_NUM_THREADS"],
                            precision_hint=settings["INFERENCE_PRECISION_HINT"]) as runner:
            yield runner


# Ties "within noise" (overlapping confidence intervals) are broken by the fewest moving parts, in this order: the
# base file before a transformed variant (optimized, FP16, INT8), onnxruntime before OpenVINO, onnxruntime's default
# optimization level ("all") before the others, the runtime's own precision before a pinned one, the runtime's
# default thread count (all usable cores) before another; then the faster median.
PREFERENCE = ("fewest moving parts: the base file before a transformed variant, onnxruntime before OpenVINO, "
              "onnxruntime's default optimization level (all) before the others, the runtime's own precision before "
              "a pinned one, the default thread count (all usable cores) before another")
_LEVEL_RANK = {"all": 0, "extended": 1, "basic": 2, "disable": 3}
_RUNTIME_RANK = {ONNXRUNTIME: 0, OPENVINO: 1, PYTORCH: 2}


def preference(config: Config, default_threads: int) -> tuple[int, ...]:
    """The sort key of ``PREFERENCE`` (lower is preferred)."""
    return (int(config.variant != BASE), _RUNTIME_RANK.get(config.runtime, 3),
            _LEVEL_RANK.get(config.opt_level or "all", 4), int(config.precision is not None),
            int(config.threads != default_threads))
