"""What each runtime version supports: the newest ONNX opset and IR version it implements.

Data, each row with its source. For the *installed* onnxruntime, loading the model is the authority
(``structure.ort_load_check``); this table answers for versions that are not installed.

Source for onnxruntime rows: onnxruntime's docs/Versioning.md "Version matrix" (ONNX Runtime release version →
ONNX opset version implemented → supported IR version). Releases newer than the table are assumed to support at least
the newest row.
"""

from __future__ import annotations

ORT_SOURCE = "onnxruntime docs/Versioning.md, version matrix"

# (major, minor) -> (newest ai.onnx opset, newest IR version)
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 10): (15, 8),
    (1, 11): (15, 8),
    (1, 12): (17, 8),
    (1, 13): (17, 8),
    (1, 14): (18, 8),
    (1, 15): (19, 9),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
    (1, 19): (21, 10),
    (1, 20): (21, 10),
    (1, 21): (22, 10),
    (1, 22): (23, 11),
}

def _minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def ort_support(version: str) -> tuple[int, int]:
    """(newest opset, newest IR version) the given onnxruntime version implements."""
    key = _minor(version)
    if key in ORT_SUPPORT:
        return ORT_SUPPORT[key]
    older = [k for k in ORT_SUPPORT if k <= key]
    return ORT_SUPPORT[max(older)] if older else min(ORT_SUPPORT.values())


def installed_ort_max_opset() -> int:
    import onnxruntime

    return ort_support(onnxruntime.__version__)[0]
