"""The export test corpus: models of different families that the ladder must export and prove.

Shared by ``tests/test_zoo_exports.py`` (asserts each one) and ``benchmarks/export_corpus.py`` (prints the table
of strategy, opset, seconds and peak memory). Each entry: (ref, --input specs, --dim specs).
"""

from __future__ import annotations

IMAGE = ["x:Bx3x224x224:float32"]
BATCH = ["B=1..16"]
TEXT = ["input_ids:BxS:int64:0..999", "attention_mask:BxS:int64:1..1"]
TEXT_DIMS = ["B=1..8", "S=4..64@16"]

TORCHVISION_CLASSIFIERS = [
    "resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x0_5",
    "mnasnet0_5", "regnet_x_400mf", "densenet121", "convnext_tiny", "vit_b_16",
]
TIMM = ["resnet10t", "mobilenetv3_small_050", "vit_tiny_patch16_224"]

CORPUS: list[tuple[str, list[str], list[str]]] = [
    *[(f"torchvision:{n}", IMAGE, BATCH) for n in TORCHVISION_CLASSIFIERS],
    ("torchvision:ssdlite320_mobilenet_v3_large", [], []),  # detection: one image, static shape
    ("torchvision:lraspp_mobilenet_v3_large", ["x:Bx3xHxW:float32"], ["B=1..4", "H=128..512@224", "W=128..512@224"]),
    *[(f"timm:{n}", IMAGE, BATCH) for n in TIMM],
    ("onnxgate.examples.tiny_transformers:bert", TEXT, TEXT_DIMS),
    ("onnxgate.examples.tiny_transformers:gpt2", TEXT, TEXT_DIMS),
    ("onnxgate.examples.tiny_transformers:t5", [*TEXT, "decoder_input_ids:BxT:int64:0..999"], [*TEXT_DIMS, "T=2..32@8"]),
]

# Models `onnxgate verify` must pass at batch 1, 3 and 7 and, for the CNNs, two other spatial sizes (issue 3).
VERIFY_CASES: dict[str, tuple[list[str], list[str]]] = {
    "torchvision:resnet18": (["x:Bx3xSxS:float32"], ["B=1..7@2", "S=160..288@224"]),
    "torchvision:mobilenet_v3_small": (["x:Bx3xSxS:float32"], ["B=1..7@2", "S=160..288@224"]),
    "torchvision:vit_b_16": (["x:Bx3x224x224:float32"], ["B=1..7@2"]),
    "onnxgate.examples.tiny_transformers:bert": (TEXT, ["B=1..7@2", "S=8..32@16"]),
}
