"""Convert an ONNX file to TFLite with onnx2tf, in the converter's own process (TensorFlow stays out of onnxgate's).

Protocol:  python _onnx2tf_worker.py MODEL OUT_DIR SHAPES_JSON
SHAPES_JSON maps each input to the static shape to build for. Prints one JSON line last on stdout:
{"ok": true, "files": {"fp32": "...", "fp16": "..."}, "onnx2tf": "1.29.24", "tensorflow": "2.21.0"} or
{"ok": false, "error": "..."}. Imports nothing from onnxgate: it runs with the converter environment's Python.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    model, out_dir, shapes = argv[0], Path(argv[1]), json.loads(argv[2])
    # TensorFlow's C++ log, gRPC's and absl's stay quiet (issue 27 item 7); the parent captures what is left
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    report: dict = {"ok": False}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            import onnx2tf
            import tensorflow as tf

            _quiet_python_logs(tf)

            report.update(onnx2tf=onnx2tf.__version__, tensorflow=tf.__version__)
            onnx2tf.convert(input_onnx_file_path=model, output_folder_path=str(out_dir), non_verbose=True,
                            copy_onnx_input_output_names_to_tflite=True,
                            overwrite_input_shape=[f"{n}:{','.join(map(str, s))}" for n, s in shapes.items()])
        stem = Path(model).stem
        files = {v: str(out_dir / f"{stem}_float{b}.tflite") for v, b in (("fp32", 32), ("fp16", 16))}
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            tail = " ".join(log.getvalue().split()[-60:])
            report["error"] = f"onnx2tf wrote no {', '.join(Path(m).name for m in missing)}: {tail[-800:]}"
        else:
            report.update(ok=True, files=files)
    except BaseException as exc:  # noqa: BLE001  onnx2tf raises anything, and calls sys.exit on some failures
        tail = " ".join(log.getvalue().split()[-40:])
        report["error"] = f"{type(exc).__name__}: {str(exc)[:400]} {tail[-600:]}".strip()
    print(json.dumps(report), flush=True)
    return 0


def _quiet_python_logs(tf) -> None:
    """absl's and TensorFlow's Python loggers at ERROR (their INFO/WARNING lines are noise to the user)."""
    import logging

    tf.get_logger().setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; a converter Python without it has nothing to quiet
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
