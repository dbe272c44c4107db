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

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import RuntimeIncompatibleError
from .check import Built, Context
from .model import DEFAULTS

WORKER = Path(__file__).with_name("_onnx2tf_worker.py")
CONVERT_TIMEOUT_S = 1800
HEARTBEAT_S = 15.0  # a progress line this often while onnx2tf converts (MobileNetV2: about 150 s)


def convert(ctx: Context) -> list[Built]:
    from ..errors import require

    require("ai_edge_litert", "tflite", "Verifying the TFLite target (the LiteRT interpreter)")
    from .converter_env import converter_python

    python = converter_python(ctx.note)
    folder = ctx.out_dir / "tflite"
    folder.mkdir(parents=True, exist_ok=True)
    ctx.note(f"tflite: converting with onnx2tf ({planned_shapes(ctx)}; channels last)")
    report = _run_worker(python, ctx, folder)
    built = []
    for variant, path in report["files"].items():
        final = folder / ("model.tflite" if variant == "fp32" else "model_fp16.tflite")
        shutil.move(path, final)
        layouts, dynamic = layouts_of(final, ctx)
        text = describe_layouts(layouts)
        ctx.note(f"tflite: the {variant} file {kept_shapes(ctx, dynamic)}")
        built.append(Built(variant, [final], variant, "fp32" if variant == "fp32" else "fp16 weights, fp32 compute",
                           f"LiteRT (ai-edge-litert) CPU {DEFAULTS} (default threads, XNNPACK delegate, no option "
                           f"passed; inputs in the file's own layout, stated with it), converted by onnx2tf "
                           f"{report.get('onnx2tf')} / TensorFlow {report.get('tensorflow')}", _opener(final, layouts),
                           dynamic=dynamic, layout=text))
    _tidy(folder, keep={b.files[0].name for b in built})
    return built


def planned_shapes(ctx: Context) -> str:
    """What onnx2tf is asked for: each dynamic dim at its traced size, and the batch (axis 0) left to onnx2tf,
    which keeps it dynamic (issue 27 item 7: the step said "static shapes" while the batch stayed dynamic)."""
    sizes = ctx.traced
    batch = {s.shape[0] for s in ctx.specs if s.shape and isinstance(s.shape[0], str)}
    fixed = [f"{d}={sizes[d]}" for d in ctx.dims if d not in batch]
    parts = [f"batch {', '.join(sorted(batch))} kept dynamic"] if batch else []
    parts += [f"built at {', '.join(fixed)}"] if fixed else []
    return "; ".join(parts) or "every shape static, as in the ONNX file"


def kept_shapes(ctx: Context, dynamic: set[str]) -> str:
    """What the converted file keeps dynamic and what it fixed, found in its signature."""
    sizes = ctx.traced
    fixed = [f"{d}={sizes[d]}" for d in ctx.dims if d not in dynamic]
    kept = f"keeps {', '.join(sorted(dynamic))} dynamic" if dynamic else "has static shapes only"
    return kept + (f" and fixes {', '.join(fixed)} (verified there)" if fixed else "")


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
    stdout, stderr, returncode = _run_with_heartbeat(command, folder / "work", ctx.note)
    proc = subprocess.CompletedProcess(command, returncode, stdout, stderr)
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


def _run_with_heartbeat(command: list[str], work: Path, note) -> tuple[str, str, int]:
    """Run the converter with its output in files (TensorFlow's and onnx2tf's lines never reach onnxgate's
    output), saying every HEARTBEAT_S seconds that it is still converting. Returns (stdout, stderr, exit code)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "ABSL_MIN_LOG_LEVEL": "3"}
    out_path, err_path = work / "convert.out", work / "convert.err"
    start = time.monotonic()
    with open(out_path, "w+", encoding="utf-8") as out, open(err_path, "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        while True:
            try:
                proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > CONVERT_TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    raise RuntimeIncompatibleError(f"onnx2tf did not finish within {CONVERT_TIMEOUT_S} s.",
                                                   hint="Deploy the other targets without tflite.") from None
                note(f"tflite: onnx2tf still converting ({elapsed:.0f} s)")
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), proc.returncode


@contextlib.contextmanager
def quiet_native_info():
    """LiteRT's C++ runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on the first run in
    a process, straight to file descriptor 2 (no Python logger, no environment variable silences it): while the
    block runs, descriptor 2 goes to a scratch file, and every line but ``INFO:`` ones is written back after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:  # unnamed: nothing to sweep
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines()
                    if not line.startswith("INFO: ")]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def layouts_of(path: Path, ctx: Context) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(each input's and output's permutation from the ONNX layout to the TFLite file's, the dims the file keeps
    dynamic), found by comparing shapes (-1 in the file's signature matches any size; one run at the traced sizes
    gives the output shapes). Where the shapes cannot tell (C == H == W), onnx2tf's own rule holds: channels last
    from rank 3 on."""
    from ..runtimes.litert import LiteRtRunner

    with quiet_native_info():  # the first LiteRT run of the process: the only one that prints
        return _layouts_of(LiteRtRunner(path), ctx)


def _layouts_of(probe, ctx: Context) -> tuple[dict[str, tuple[int, ...]], set[str]]:
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
