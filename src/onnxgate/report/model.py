"""The ``Report`` of one pipeline run: every stage's facts under ``stages``, one verdict decided by the judge.

``report.json`` is this object's ``to_dict()`` (schema ``docs/schemas/report.schema.json``, version
``REPORT_SCHEMA_VERSION``); ``report.html`` its rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._version import __version__
from ..errors import ExitCode

REPORT_SCHEMA_VERSION = "1"


@dataclass
class PipelineReport:
    ref: str
    out_dir: str
    stages: dict[str, dict] = field(default_factory=dict)
    verdict: str = "fail"
    exit_code: int = int(ExitCode.INTERNAL)
    reason: str | None = None
    hint: str | None = None
    stage: str | None = None  # the stage the verdict came from (stages.Stage; a pass: the last stage that ran)
    cause: str | None = None  # the kind of failure within its exit code (outcome.Outcome.cause)

    def to_dict(self) -> dict:
        return {"schema_version": REPORT_SCHEMA_VERSION, "onnxgate_version": __version__, "ref": self.ref,
                "out_dir": self.out_dir, "verdict": self.verdict, "exit_code": self.exit_code,
                "reason": self.reason, "hint": self.hint, "stage": self.stage, "cause": self.cause,
                "stages": self.stages}

    def to_html(self) -> str:
        from .html import render_html

        return render_html(self.to_dict())

    def _repr_html_(self) -> str:  # Jupyter renders the report inline
        return self.to_html()
