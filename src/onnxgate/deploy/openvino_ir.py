"""OpenVINO IR target: ``model.xml``/``.bin`` (FP32 weights) and ``model_fp16.xml``/``.bin`` (weights compressed to
FP16), both written by OpenVINO's own converter (``runtimes/openvino.convert_to_ir``) from the verified ONNX file.

Each is verified in OpenVINO Runtime at the precision it will run at, stated in the report: the FP32 IR with
``INFERENCE_PRECISION_HINT=f32`` (judged with FP32 tolerances, as the ONNX file), the FP16 IR at the CPU's own
default (``PERFORMANCE`` mode: bf16 on CPUs with bfloat16 support, else f32), judged with the reduced-precision
tolerance of FP16 weights or BF16 compute. Where the default is bf16 and that fails (the real MobileNetV2's logits
err by up to 0.6 in bf16), the FP16 IR is verified pinned to f32 instead, and the report says to pin it and why. The IR keeps the ONNX file's dynamic dims, so both are verified over the
claimed shape domain.
"""

from __future__ import annotations

from .check import Built, Context


def convert(ctx: Context) -> list[Built]:
    import openvino as ov

    from ..runtimes.openvino import OpenVinoRunner, convert_to_ir

    folder = ctx.out_dir / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    version = ov.get_version().split("-")[0]
    built = []
    for variant, compress in (("fp32", False), ("fp16", True)):
        ctx.note(f"openvino: converting to IR ({variant} weights)")
        xml, bin_ = convert_to_ir(ctx.onnx_path, folder / ("model.xml" if not compress else "model_fp16.xml"),
                                  compress_to_fp16=compress)
        if not compress:
            built.append(Built(variant, [xml, bin_], "fp32", "fp32", f"OpenVINO {version} CPU, "
                               "INFERENCE_PRECISION_HINT=f32", lambda xml=xml: OpenVinoRunner(
                                   xml, execution_mode="PERFORMANCE", precision_hint="f32")))
            continue
        compute = OpenVinoRunner.default_precision("CPU") or "f32"
        precision = "bf16" if compute == "bf16" else "fp16"
        pinned = Built(variant, [xml, bin_], "fp16", "fp16 weights, f32 compute", f"OpenVINO {version} CPU, "
                       "INFERENCE_PRECISION_HINT=f32", lambda xml=xml: OpenVinoRunner(
                           xml, execution_mode="PERFORMANCE", precision_hint="f32"))
        built.append(Built(variant, [xml, bin_], precision, f"fp16 weights, {compute} compute",
                           f"OpenVINO {version} CPU, PERFORMANCE mode, INFERENCE_PRECISION_HINT={compute} (the "
                           "CPU's default)", lambda xml=xml: OpenVinoRunner(xml, execution_mode="PERFORMANCE"),
                           fallback=pinned if compute != "f32" else None))
    return built
