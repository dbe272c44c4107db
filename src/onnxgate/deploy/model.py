"""What ``onnxgate deploy`` returns: one row per artifact written (a target may write several: OpenVINO FP32 and
FP16-compressed IR), each with the evidence behind its verdict, and the report that the judge rules on.

Statuses of an artifact (``DeployedArtifact.status``):

    passed          converted, then run on its runtime and compared with the reference through verify/parity.py
    failed          converted, but its numbers differ from the reference (exit 4, the target named)
    not converted   the converter or its runtime refused the model (exit 6, the target named)
    skipped         cannot run here (no CUDA device for TensorRT; Core ML from a bundle without PyTorch): no
                    artifact, never a pass
    unverified      converted, checked structurally only (Core ML on Linux): "converted, not numerically
                    verified", never a pass
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadInputError

TARGETS = ("openvino", "ort-mobile", "tflite", "tensorrt", "coreml")
PASSED, FAILED, NOT_CONVERTED, SKIPPED, UNVERIFIED = ("passed", "failed", "not converted", "skipped",
                                                      "unverified")
UNVERIFIED_TEXT = "converted, not numerically verified"
# The conditions an artifact was verified under (issue 24, Build 3): every row's ``runtime`` names the settings it ran
# with, either "with the runtime's defaults" (nothing passed by the caller: a passed row holds as the runtime runs the
# file by default) or "verified only under <setting>; not verified under the runtime's defaults" (``only_under``: the
# format cannot carry or enforce the setting, or the runtime ignores it). The report and the manifest keep ``runtime``.
DEFAULTS = "with the runtime's defaults"
ONLY_UNDER = "verified only under"


def under_defaults(runtime: str | None) -> bool:
    """Whether a row's ``runtime`` says it was verified as the runtime runs the file by default (a row that fell
    back to a pinned setting quotes the defaults that failed, so "only under" decides first)."""
    return bool(runtime) and ONLY_UNDER not in runtime and DEFAULTS in runtime


def only_under(settings: str, why: str = "") -> str:
    """The statement of a row verified only under ``settings`` (a format that cannot carry or enforce them)."""
    return f"{ONLY_UNDER} {settings}; not verified under the runtime's defaults" + (f" ({why})" if why else "")


def parse_targets(text: str | list[str] | tuple[str, ...] | None, *, where: str = "--to") -> tuple[str, ...]:
    """``"openvino,ort-mobile"`` (or a list of names) -> the targets, in order, once each; unknown names are
    bad input naming the closest known one."""
    import difflib

    items = text.split(",") if isinstance(text, str) else list(text or ())
    names: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        alias = {"ov": "openvino", "ort": "ort-mobile", "ort_mobile": "ort-mobile", "litert": "tflite",
                 "trt": "tensorrt"}.get(item, item)
        if alias not in TARGETS:
            close = difflib.get_close_matches(alias, TARGETS, n=1)
            raise BadInputError(f"{where}: '{item}' is not a deploy target.",
                                hint=(f"Did you mean '{close[0]}'? " if close else "")
                                + f"Targets: {', '.join(TARGETS)} (comma-separated).")
        if alias not in names:
            names.append(alias)
    if not names:
        raise BadInputError(f"{where}: no deploy target given.", hint=f"Name one or more of: {', '.join(TARGETS)}.")
    return tuple(names)


@dataclass
class DeployedArtifact:
    """One artifact of one target, and how it was proven (or why it was not)."""

    target: str
    variant: str  # "fp32", "fp16", "engine-fp16", ...
    status: str
    files: list[str] = field(default_factory=list)  # relative to the targets folder
    bytes: int = 0
    precision: str | None = None  # what it computes in, e.g. "fp16 weights, bf16 compute"
    runtime: str | None = None  # what ran it, with which settings: DEFAULTS or ``only_under`` (see under_defaults)
    shapes: str | None = None  # "dynamic: B 1..8" or "static: x 1x3x224x224"
    layout: str | None = None  # e.g. "input x: NCHW -> NHWC"
    tolerance: str | None = None
    max_abs_err: float | None = None
    tolerance_used: float | None = None  # of the worst output, over every feed
    top1_agreement: float | None = None
    top1_on: str | None = None  # "real data (12 rows)" or "random feeds (6 rows)"
    latency_ms: float | None = None  # p50 at the traced sizes
    feeds: int = 0
    reason: str | None = None  # why it failed / was skipped / what was checked
    seconds: float = 0.0
    parity: dict[str, Any] | None = None  # the ParityReport, as verify reports it

    @property
    def label(self) -> str:
        return f"{self.target} ({self.variant})" if self.variant else self.target

    def verdict_text(self) -> str:
        return UNVERIFIED_TEXT if self.status == UNVERIFIED else self.status

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict_text()
        return data


@dataclass
class DeployReport:
    """Every artifact of one ``deploy``: the verdict is the worst row (failed -> 4, not converted -> 6)."""

    source: str  # the model reference or the bundle
    onnx: str  # the ONNX file the artifacts were made from
    reference: str  # "PyTorch" or "the bundle's golden outputs"
    out_dir: str
    requested: list[str]
    artifacts: list[DeployedArtifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[DeployedArtifact]:
        return [a for a in self.artifacts if a.status == FAILED]

    @property
    def not_converted(self) -> list[DeployedArtifact]:
        return [a for a in self.artifacts if a.status == NOT_CONVERTED]

    @property
    def passed(self) -> bool:
        return not self.failed and not self.not_converted

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for a in self.artifacts:
            counts[a.verdict_text()] = counts.get(a.verdict_text(), 0) + 1
        return ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing deployed"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "onnx": self.onnx,
                "reference": self.reference, "out_dir": self.out_dir, "requested": list(self.requested),
                "artifacts": [a.to_dict() for a in self.artifacts], "notes": list(self.notes)}


TABLE_COLUMNS = ("target", "artifact", "size", "precision", "shapes", "max error", "top-1", "latency", "verdict")


def table_rows(artifacts: list[dict[str, Any]]) -> list[list[str]]:
    """The per-target table (the CLI, the HTML report and the benchmark print the same rows), from ``to_dict()``
    rows; why a target did not pass is printed under the table (``reasons``)."""
    from ..verify.compare import sci

    rows = []
    for a in artifacts:
        files = a.get("files") or []
        name = (files[0] + (f" (+{len(files) - 1})" if len(files) > 1 else "")) if files else "-"
        err = "-" if a.get("max_abs_err") is None else sci(a["max_abs_err"])
        if a.get("tolerance_used") is not None:
            err += f" ({a['tolerance_used']:.0%} of tol)"
        top1 = "-" if a.get("top1_agreement") is None else f"{a['top1_agreement']:.1%}"
        latency = "-" if a.get("latency_ms") is None else f"{a['latency_ms']:.2f} ms"
        rows.append([a["target"], name, human_size(a.get("bytes") or 0), a.get("precision") or "-",
                     a.get("shapes") or "-", err, top1, latency, a.get("verdict") or a.get("status")])
    return rows


def reasons(artifacts: list[dict[str, Any]]) -> list[str]:
    """One line per artifact that did not pass: its target and why."""
    return [f"{a['target']}{' (' + a['variant'] + ')' if a.get('variant') else ''}: {a['verdict']}: {a['reason']}"
            for a in artifacts if a.get("status") != PASSED and a.get("reason")]


def human_size(n: int) -> str:
    if not n:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
