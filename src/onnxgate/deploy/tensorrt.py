"""TensorRT target: ``model.engine`` (FP32) and ``model_fp16.engine``, built from the verified ONNX file with
TensorRT's own ONNX parser and one optimization profile spanning the claimed shape domain (min / traced / max of
every dynamic dim), then verified with TensorRT against the reference over that domain.

An engine is built for the GPU it runs on, so without a CUDA device (CI, this project's machines) the target is
skipped with that reason: no artifact, never a pass. With a device but without the ``tensorrt`` package, the
missing extra is named (exit 8).
"""

from __future__ import annotations

from .check import Built, Context, Skipped
from .model import DEFAULTS


def convert(ctx: Context) -> list[Built]:
    from ..errors import require
    from ..runtimes.tensorrt import TensorRtRunner, build_engine, cuda_devices

    count, why = cuda_devices()
    if not count:
        raise Skipped(f"no CUDA device here ({why}): a TensorRT engine is built on the GPU it runs on")
    trt = require("tensorrt", "tensorrt", "The TensorRT target")
    folder = ctx.out_dir / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    profile = profile_of(ctx)
    built = []
    for variant, fp16 in (("fp32", False), ("fp16", True)):
        ctx.note(f"tensorrt: building the {variant} engine")
        engine = build_engine(ctx.onnx_path, folder / ("model.engine" if not fp16 else "model_fp16.engine"),
                              fp16=fp16, profile=profile)
        built.append(Built(variant, [engine], variant, variant, f"TensorRT {trt.__version__} on CUDA device 0 "
                           f"{DEFAULTS} (no runtime setting: the engine fixes its {variant} precision and its "
                           f"optimization profile {profile_text(profile)}, and runs only on this GPU model)",
                           lambda engine=engine: TensorRtRunner(engine)))
    return built


def profile_of(ctx: Context) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min / opt / max shape of every input from the claimed domain (a dim without a maximum: its traced size)."""
    def size(d, which):
        dim = ctx.dims[d]
        traced = dim.example or 2
        return {"min": dim.min, "opt": traced, "max": dim.max if dim.max is not None else traced}[which]

    return {s.name: tuple(tuple(size(d, w) if isinstance(d, str) else d for d in s.shape)
                          for w in ("min", "opt", "max")) for s in ctx.specs}


def profile_text(profile) -> str:
    return "; ".join(f"{n}: {'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))}" for n, (lo, _, hi) in profile.items())
