"""LiteRT / TFLite target: ``model_float32.tflite`` and ``model_float16.tflite`` (FP16 weights), converted from the
verified ONNX file by onnx2tf (in its own environment and process: ``converter_env.py``), verified in the LiteRT
interpreter (``ai-edge-litert``, the ``[tflite]`` extra) against the reference.

Why onnx2tf: it converts from the ONNX file every other target starts from (the artifact that was proven), and it
converts the reference set (resnet18, mobilenet_v3_large, a BERT encoder) on the pinned stack. litert-torch, the
alternative from PyTorch, would downgrade pydantic and typing_extensions in onnxgate's environment.

onnx2tf is given the traced sizes; it keeps the batch dim dynamic (-1 in the file's signature, resized per feed
by the interpreter), so that dim is verified over the claimed domain and every other dim at its traced size.
Layout: onnx2tf moves channels last (NCHW -> NHWC) on 3-D to 5-D inputs and outputs, the layout mobile kernels
run; the report states each input's and output's layout, and the LiteRT runner transposes ONNX-layout feeds to it.
INT8 TFLite is not built yet.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import RuntimeIncompatibleError
from .check import Built, Context

WORKER = Path(__file__).with_name("_onnx2tf_worker.py")
CONVERT_TIMEOUT_S = 1800


def convert(ctx: Context) -> list[Built]:
    from ..errors import require

    require("ai_edge_litert", "tflite", "Verifying the TFLite target (the LiteRT interpreter)")
    from .converter_env import converter_python

    python = converter_python(ctx.note)
    folder = ctx.out_dir / "tflite"
    folder.mkdir(parents=True, exist_ok=True)
    ctx.note("tflite: converting with onnx2tf (static shapes, channels last)")
    report = _run_worker(python, ctx, folder)
    built = []
    for variant, path in report["files"].items():
        final = folder / ("model.tflite" if variant == "fp32" else "model_fp16.tflite")
        shutil.move(path, final)
        layouts, dynamic = layouts_of(final, ctx)
        text = describe_layouts(layouts)
        built.append(Built(variant, [final], variant, "fp32" if variant == "fp32" else "fp16 weights, fp32 compute",
                           f"LiteRT (ai-edge-litert) CPU, onnx2tf {report.get('onnx2tf')} / TensorFlow "
                           f"{report.get('tensorflow')}", _opener(final, layouts), dynamic=dynamic, layout=text))
    _tidy(folder, keep={b.files[0].name for b in built})
    return built


def _opener(path: Path, layouts: dict[str, tuple[int, ...]]):
    def open_runner():
        from ..runtimes.litert import LiteRtRunner

        return LiteRtRunner(path, layouts=layouts)
    return open_runner


def _run_worker(python: str, ctx: Context, folder: Path) -> dict:
    shapes = {s.name: list(s.shape) for s in ctx.static_specs()}
    staged = folder / "work" / "model.onnx"  # onnx2tf rewrites its input file (simplified): never the bundle's
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.onnx_path, staged)
    command = [python, str(WORKER), str(staged), str(folder / "work"), json.dumps(shapes)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeIncompatibleError(f"onnx2tf did not finish within {CONVERT_TIMEOUT_S} s.",
                                       hint="Deploy the other targets without tflite.") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not report or not report.get("ok"):
        why = (report or {}).get("error") or (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        why = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", why).split())  # onnx2tf colours and wraps its messages
        raise RuntimeIncompatibleError(f"onnx2tf cannot convert '{ctx.onnx_path}': {why[:900]}",
                                       hint="Deploy the other targets without tflite, or simplify the model "
                                            "(onnxgate optimize) and deploy the bundle again.")
    return report


def layouts_of(path: Path, ctx: Context) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(each input's and output's permutation from the ONNX layout to the TFLite file's, the dims the file keeps
    dynamic), found by comparing shapes (-1 in the file's signature matches any size; one run at the traced sizes
    gives the output shapes). Where the shapes cannot tell (C == H == W), onnx2tf's own rule holds: channels last
    from rank 3 on."""
    from ..runtimes.litert import LiteRtRunner

    probe = LiteRtRunner(path)
    layouts, feed, fixed = {}, {}, set()
    for spec, static in zip(ctx.specs, ctx.static_specs()):
        signature = probe.input_signatures.get(spec.name)
        if signature is None:
            raise RuntimeIncompatibleError(f"the converted file has no input '{spec.name}' (it has "
                                           f"{', '.join(probe.input_names)}).", hint="Re-convert the model.")
        perm = _match(spec.name, tuple(static.shape), signature)
        order = perm or tuple(range(len(static.shape)))
        layouts.update({spec.name: perm} if perm else {})
        fixed |= {d for axis, d in spec.dynamic_axes.items() if signature[order.index(axis)] != -1}
        feed[spec.name] = np.zeros([static.shape[i] for i in order], dtype=probe.input_dtypes[spec.name])
    got = probe.run(feed)
    for name, ref in ctx.traced_outputs().items():
        perm = _match(name, np.shape(ref), np.shape(got[name])) if name in got else None
        layouts.update({name: perm} if perm else {})
    return layouts, set(ctx.dims) - fixed


def _match(name: str, shape: tuple[int, ...], tfl: tuple[int, ...]) -> tuple[int, ...] | None:
    """The permutation that turns the ONNX ``shape`` into the TFLite file's ``tfl`` (None: the same layout)."""
    def fits(candidate) -> bool:
        return len(candidate) == len(tfl) and all(t in (-1, s) for s, t in zip(candidate, tfl))

    perm = _last(len(shape))
    if len(shape) >= 3 and fits(tuple(shape[i] for i in perm)):
        return perm
    if fits(shape):
        return None
    raise RuntimeIncompatibleError(f"'{name}' has the shape {list(tfl)} in the TFLite file, neither the ONNX shape "
                                   f"{list(shape)} nor its channels-last form.", hint="Re-convert the model.")


def _last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1) if rank >= 3 else tuple(range(rank))


def describe_layouts(layouts: dict[str, tuple[int, ...]]) -> str:
    if not layouts:
        return "same layout as the ONNX file"
    names = {3: "NCW -> NWC", 4: "NCHW -> NHWC", 5: "NCDHW -> NDHWC"}
    return "; ".join(f"{n}: {names.get(len(p), 'channels last')} (transpose {p})" for n, p in layouts.items())


def _tidy(folder: Path, keep: set[str]) -> None:
    """Only the artifacts stay: onnx2tf's saved_model and scratch files go."""
    for entry in folder.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
