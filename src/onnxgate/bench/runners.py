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


@contextmanager
def open_runner(config: Config, *, model_path: str | Path | None, module: Any = None,
                input_names: list[str] | None = None) -> Iterator[Any]:
    """The runner of ``config``, with its thread count in force while the block runs."""
    if config.runtime == PYTORCH:
        import torch

        from ..runtimes.torch_runner import TorchRunner

        previous = torch.get_num_threads()
        torch.set_num_threads(config.threads)  # process-wide: restored when the block ends
        try:
            with TorchRunner(module, input_names=list(input_names or [])) as runner:
                yield runner
        finally:
            torch.set_num_threads(previous)
    elif config.runtime == ONNXRUNTIME:
        from ..runtimes.ort import OrtRunner

        with OrtRunner(model_path, opt_level=config.opt_level or "all", intra_op_threads=config.threads) as runner:
            yield runner
    else:
        from ..runtimes.openvino import OpenVinoRunner

        # OpenVINO the way a deployment runs it: PERFORMANCE execution mode (which may compute float32 models in
        # bfloat16 on CPUs that support it; ``runner.inference_precision`` says what it chose), LATENCY hint, a fixed
        # thread count, one infer request reused between calls.
        with OpenVinoRunner(model_path, "CPU", execution_mode="PERFORMANCE", performance_hint="LATENCY",
                            threads=config.threads, precision_hint=config.precision) as runner:
            yield runner
