"""OpenVINO IR target: ``model.xml``/``.bin`` (FP32 weights) and ``model_fp16.xml``/``.bin`` (weights compressed to
FP16), both written by OpenVINO's own converter (``runtimes/openvino.convert_to_ir``) from the verified ONNX file.

Conditions, enforced where the format can and stated where it cannot (issue 24, Build 3). Each IR carries the
setting it is verified under in its rt_info ``runtime_options`` (``INFERENCE_PRECISION_HINT``: ``f32`` for the FP32
IR), OpenVINO's own place for a model's compile settings. Each IR is first verified the way a user runs it:
``core.compile_model(path, "CPU")`` with no setting passed (the CPU's default precision: bf16 on CPUs with bfloat16
support, else f32). The FP32 IR is judged there with FP32 tolerances, the FP16 IR with the reduced-precision
tolerance of FP16 weights or BF16 compute. When that fails (the real MobileNetV2's logits err by up to 0.875 in
bf16), the IR is verified pinned to f32 instead, and its row says "verified only under INFERENCE_PRECISION_HINT=f32;
not verified under the runtime's defaults": OpenVINO 2026.4's CPU plugin applies only KV-cache and
dynamic-quantization options from ``runtime_options`` (``Config::applyRtInfo``), not the precision hint, so the IR
records the setting (serve reads it back, ``recorded_options``) but cannot enforce it on a caller who passes none.
The IR keeps the ONNX file's dynamic dims, so every run is verified over the claimed shape domain.
"""

from __future__ import annotations

from pathlib import Path

from .check import Built, Context
from .model import DEFAULTS, only_under

PIN = "INFERENCE_PRECISION_HINT"


def convert(ctx: Context) -> list[Built]:
    import openvino as ov

    from ..runtimes.openvino import OpenVinoRunner, convert_to_ir

    folder = ctx.out_dir / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    version = ov.get_version().split("-")[0]
    default = OpenVinoRunner.default_precision("CPU") or "f32"
    built = []
    for variant, compress in (("fp32", False), ("fp16", True)):
        ctx.note(f"openvino: converting to IR ({variant} weights)")
        recorded = "f32" if not compress else default  # what the IR records: the setting its claim rests on
        xml, bin_ = convert_to_ir(ctx.onnx_path, folder / ("model.xml" if not compress else "model_fp16.xml"),
                                  compress_to_fp16=compress, runtime_options={PIN: recorded})
        files = [xml, bin_]
        if not compress:
            precision, text = "fp32", "fp32"
        else:
            precision, text = ("bf16" if default == "bf16" else "fp16"), f"fp16 weights, {default} compute"
        pinned = Built(variant, files, "fp16" if compress else "fp32", "fp16 weights, f32 compute" if compress
                       else "fp32", pinned_text(version), _opener(xml, "f32", rerecord=compress and recorded != "f32"))
        built.append(Built(variant, files, precision, text, defaults_text(version, default, recorded),
                           _opener(xml, None), fallback=pinned if default != "f32" else None))
    return built


def defaults_text(version: str, default: str, recorded: str) -> str:
    """The row's runtime for an IR run as a user runs it (no setting passed); quoted by a pinned row that fell back."""
    return (f"OpenVINO {version} CPU {DEFAULTS} (compile_model(path, 'CPU'), no setting passed; this CPU computes "
            f"in {default} by default); the IR records {PIN}={recorded} in its rt_info runtime_options")


def pinned_text(version: str) -> str:
    """The row's runtime for an IR that held only pinned to f32."""
    return (f"OpenVINO {version} CPU, {PIN}=f32 passed to compile_model: " + only_under(
        f"{PIN}=f32", f"the IR records it in rt_info runtime_options, which OpenVINO {version}'s CPU plugin does "
        "not apply by itself: pass it to compile_model"))


def _opener(xml: Path, precision: str | None, *, rerecord: bool = False):
    """``precision`` None: OpenVINO's defaults, nothing passed. Else pinned; ``rerecord``: the IR's recorded
    setting is rewritten to the pinned one first (the FP16 IR that failed at the CPU's default), so the file that
    ships records the setting it was verified under."""
    def open_runner():
        from ..runtimes.openvino import OpenVinoRunner, record_options

        if precision is None:
            return OpenVinoRunner(xml, execution_mode=None)
        if rerecord:
            record_options(xml, {PIN: precision})
        return OpenVinoRunner(xml, execution_mode="PERFORMANCE", precision_hint=precision)
    return open_runner
