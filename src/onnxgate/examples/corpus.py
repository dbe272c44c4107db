"""The export test corpus: models of different families that the ladder must export and prove.

Shared by ``tests/test_zoo_exports.py`` (asserts each one) and ``benchmarks/export_corpus.py`` (prints the table
of strategy, opset, seconds and peak memory). Each entry: (ref, --input specs, --dim specs).
"""

from __future__ import annotations

import functools

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

# Held-out-style models whose forward() decides on input *values* (issue 23): a rung can handle them only by assuming
# the example's value (draft export specializes it, tracing bakes it in). Every rung must refuse them or export a graph
# right on both sides; `tests/test_draft_soundness.py` holds them to that with the draft rung forced first.
VALUE_DEPENDENT: list[tuple[str, list[str], list[str]]] = [
    ("onnxgate.examples.corpus:branch_on_values", ["x:Bx6:float32"], ["B=1..8"]),  # `if x.sum() > 0:`
    ("onnxgate.examples.corpus:item_as_size", ["x:Bx6:float32"], ["B=1..8"]),  # `.item()` used as a size
    ("onnxgate.examples.corpus:loop_bound_from_value", ["x:Bx6:float32"], ["B=1..8"]),  # `range(int(t.item()))`
]
# The same decision written as a graph can hold it: exported, and right on both sides.
VALUE_BRANCH_AS_WHERE = ("onnxgate.examples.corpus:branch_as_where", ["x:Bx6:float32"], ["B=1..8"])


@functools.cache
def _value_models() -> dict:
    import torch
    from torch import nn

    class BranchOnValues(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1

    class ItemAsSize(nn.Module):
        def forward(self, x):
            n = int(x.abs().max().item()) % 3 + 1
            return x.repeat(1, n)

    class LoopBoundFromValue(nn.Module):
        def forward(self, x):
            for _ in range(int(x.mean().clamp(0, 3).item())):
                x = x * 2
            return x

    class BranchAsWhere(nn.Module):
        def forward(self, x):
            return torch.where(x.sum() > 0, x * 2, x - 1)

    return {"branch": BranchOnValues, "item": ItemAsSize, "loop": LoopBoundFromValue, "where": BranchAsWhere}


def branch_on_values():
    return _value_models()["branch"]().eval()


def item_as_size():
    return _value_models()["item"]().eval()


def loop_bound_from_value():
    return _value_models()["loop"]().eval()


def branch_as_where():
    return _value_models()["where"]().eval()
