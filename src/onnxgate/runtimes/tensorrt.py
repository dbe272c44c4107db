"""TensorRT: build an engine from an ONNX file and run it (the ``[tensorrt]`` extra, a CUDA device).

``cuda_devices()`` asks the CUDA driver itself (``libcuda``) how many devices there are, without importing
tensorrt or torch: on a machine without a GPU (CI, most laptops) the TensorRT target is skipped with that reason
before any extra is needed. ``build_engine`` parses the ONNX file with TensorRT's own parser and builds a
serialized engine with one optimization profile (min/opt/max per input from the verified shape domain), in FP32 or
FP16. ``TensorRtRunner`` runs an engine with device buffers held by PyTorch's CUDA allocator (torch is already
there wherever onnxgate verifies against PyTorch).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..errors import RuntimeIncompatibleError, first_line, require


def cuda_devices() -> tuple[int, str | None]:
    """(number of CUDA devices, why none) from the driver API; (0, reason) where there is no driver or device."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA driver (libcuda.so.1) on this machine"
    if lib.cuInit(0) != 0:
        return 0, "the CUDA driver found no usable device (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the CUDA driver reports no device"
    return count.value, None


def build_engine(model_path: str | Path, engine_path: str | Path, *, fp16: bool,
                 profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
                 workspace_mb: int = 2048) -> Path:
    """Build a serialized TensorRT engine for ``model_path`` at ``engine_path``. ``profile``: input name ->
    (min, opt, max) shapes, one optimization profile (static inputs give the same shape three times)."""
    trt = require("tensorrt", "tensorrt", "The TensorRT target")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode from TensorRT 10 on
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeIncompatibleError(f"TensorRT {trt.__version__} cannot parse '{model_path}': {errors[:600]}",
                                       hint="Export at an opset TensorRT supports (--target tensorrt==10.0).")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for name, (low, mid, high) in profile.items():
        opt.set_shape(name, low, mid, high)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeIncompatibleError(f"TensorRT {trt.__version__} could not build an engine for '{model_path}'.",
                                       hint="Run with a narrower shape domain (--dim) or FP32 only.")
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


class TensorRtRunner:
    """Runs a serialized engine on CUDA device 0; feeds and outputs are numpy arrays keyed by tensor name."""

    def __init__(self, engine_path: str | Path):
        trt = require("tensorrt", "tensorrt", "The TensorRT runner")
        self._torch = require("torch", "torch", "The TensorRT runner's device buffers")
        if not self._torch.cuda.is_available():
            raise RuntimeIncompatibleError("PyTorch sees no CUDA device, so TensorRT's buffers cannot be allocated.",
                                           hint="Install a CUDA build of torch on the GPU machine.")
        self.name = "tensorrt"
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        try:
            self._engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            self._context = self._engine.create_execution_context()
        except Exception as exc:
            raise RuntimeIncompatibleError(f"TensorRT cannot load '{engine_path}': {first_line(exc)}",
                                           hint="Rebuild the engine on this GPU and TensorRT version.") from exc
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._trt = trt

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for name in self.input_names:
            array = np.ascontiguousarray(inputs[name])
            tensor = torch.from_numpy(array).cuda()
            keep.append(tensor)
            self._context.set_input_shape(name, tuple(array.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            tensor = torch.empty(shape, dtype=getattr(torch, dtype.name), device="cuda")
            outputs[name] = tensor
            self._context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeIncompatibleError("TensorRT failed to run the engine.", hint="See TensorRT's log.")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def __enter__(self) -> "TensorRtRunner":
        return self

    def __exit__(self, *exc) -> None:
        self._context = None
