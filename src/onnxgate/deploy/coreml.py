"""Core ML target: ``model.mlpackage`` (an ML program) converted from the PyTorch model by coremltools (the
``[coreml]`` extra; coremltools no longer converts from ONNX, so a bundle without PyTorch skips it).

Core ML executes only on Apple platforms. On Linux the artifact is checked structurally: the spec loads, and its
inputs and outputs have the ONNX file's names, shapes (the traced sizes: converted static) and element types. That
is reported as "converted, not numerically verified", never as passed.
"""

from __future__ import annotations

import os

import numpy as np

from .check import Context, Skipped, total_bytes
from .model import NOT_CONVERTED, UNVERIFIED, DeployedArtifact

# Core ML's ArrayFeatureType element types (FLOAT32 = 65568, FLOAT16 = 65552, INT32 = 131104, DOUBLE = 65600)
_CT_TYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


def convert(ctx: Context) -> list[DeployedArtifact]:
    from ..errors import require

    if ctx.loaded is None:
        raise Skipped("Core ML converts from PyTorch (coremltools has no ONNX frontend) and this bundle carries "
                      "no PyTorch model: deploy from the model reference instead")
    ct = require("coremltools", "coreml", "The Core ML target")
    import torch

    os.environ.setdefault("TQDM_DISABLE", "1")
    folder = ctx.out_dir / "coreml"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.mlpackage"
    specs = ctx.static_specs()
    feed = ctx.traced_feed()
    outputs = list(ctx.traced_outputs())
    row = DeployedArtifact("coreml", "mlprogram", NOT_CONVERTED, ["coreml/model.mlpackage"],
                           precision="fp16 compute (ML program default)",
                           runtime=f"coremltools {ct.__version__} (structure only: Core ML runs on Apple platforms; "
                                   "not run, so verified under no setting, its compute units included)",
                           shapes="static: " + ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}" for s in specs))
    ctx.note("coreml: converting with coremltools")
    try:
        with torch.no_grad():
            traced = torch.jit.trace(ctx.loaded.module.eval(), tuple(torch.from_numpy(feed[s.name]) for s in specs))
        model = ct.convert(traced, inputs=[ct.TensorType(name=s.name, shape=tuple(s.shape), dtype=np.dtype(s.dtype).type)
                                           for s in specs], outputs=[ct.TensorType(name=n) for n in outputs],
                           convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
        model.save(str(path))
    except Exception as exc:  # coremltools raises ValueError/RuntimeError/NotImplementedError for unsupported ops
        from ..errors import first_line

        row.reason = f"coremltools {ct.__version__} cannot convert the model: {first_line(exc, 500)}"
        return [row]
    row.bytes = total_bytes([path])
    problems = structure_problems(ct.utils.load_spec(str(path)), specs, outputs)
    row.status = NOT_CONVERTED if problems else UNVERIFIED
    row.reason = ("the converted spec does not match the ONNX file: " + "; ".join(problems) if problems else
                  "spec loads; inputs " + ", ".join(s.name for s in specs) + " and outputs " + ", ".join(outputs)
                  + " match the ONNX file's names and shapes; numbers not checked (Core ML cannot run on Linux)")
    return [row]


def structure_problems(spec, specs, outputs: list[str]) -> list[str]:
    """What differs between the Core ML spec's interface and the ONNX file's (names, shapes, element types)."""
    problems = []
    got_in = {i.name: i.type.multiArrayType for i in spec.description.input}
    for s in specs:
        arr = got_in.get(s.name)
        if arr is None:
            problems.append(f"no input '{s.name}' (has {', '.join(got_in)})")
            continue
        if tuple(arr.shape) != tuple(s.shape):
            problems.append(f"input '{s.name}' has shape {list(arr.shape)}, not {list(s.shape)}")
        allowed = {s.dtype, {"float32": "float16", "int64": "int32"}.get(s.dtype)}
        if _CT_TYPES.get(arr.dataType) not in allowed:
            problems.append(f"input '{s.name}' has element type {_CT_TYPES.get(arr.dataType, arr.dataType)}")
    got_out = [o.name for o in spec.description.output]
    if got_out != outputs:
        problems.append(f"outputs {got_out}, not {outputs}")
    return problems
