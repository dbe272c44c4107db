"""``ZooReport``: the latest ledger row of every model this run owns, and the figures the dashboard shows.

Its verdict is the judge's (``outcome.py``, rule ``ZooReport``): it passes when every model passed or every failed
model carries a tag (or family, or name) given to ``--allow-fail``; otherwise it fails with the exit code of the
first failing model in the zoo file's order. ``zoo.json`` is ``to_dict()``; ``zoo.html`` its rendering.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__

ZOO_SCHEMA_VERSION = "1"
SECONDS_BINS = (10, 30, 60, 120, 300, 900)
MEMORY_BINS = (250, 500, 1000, 2000, 4000, 8000)


@dataclass
class ZooReport:
    zoo: str
    source: str
    out_dir: str
    models: list[dict[str, Any]]  # the latest ledger row of each selected model, in the zoo file's order
    executor: str = "local"
    jobs: int = 1
    shard: str | None = None
    allow_fail: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    ran: int = 0  # models run now
    resumed: int = 0  # models taken from the ledger (finished by an earlier run)
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def allowed(self, row: dict[str, Any]) -> bool:
        """A failure --allow-fail accepts: the model's tags, family or name include one of the given tags."""
        labels = {*row.get("tags", ()), row.get("family"), row.get("model")}
        return bool(labels & set(self.allow_fail))

    @property
    def passed_models(self) -> list[dict[str, Any]]:
        return [m for m in self.models if m.get("verdict") == "pass"]

    @property
    def failed_models(self) -> list[dict[str, Any]]:
        return [m for m in self.models if m.get("verdict") != "pass"]

    def pass_rate(self, rows: list[dict[str, Any]] | None = None) -> float | None:
        rows = self.models if rows is None else rows
        return round(sum(r.get("verdict") == "pass" for r in rows) / len(rows), 4) if rows else None

    def groups(self, key: str) -> dict[str, dict[str, Any]]:
        """Pass rate by ``family`` or by ``tags`` (a model counts once in each of its tags)."""
        buckets: dict[str, list[dict]] = defaultdict(list)
        for row in self.models:
            for label in (row.get("tags") or ["(no tag)"]) if key == "tags" else [row.get(key) or "?"]:
                buckets[label].append(row)
        return {label: {"models": len(rows), "passed": sum(r.get("verdict") == "pass" for r in rows),
                        "pass_rate": self.pass_rate(rows)} for label, rows in sorted(buckets.items())}

    def failure_classes(self) -> dict[str, dict[str, Any]]:
        """Each failure class with its count and up to three examples (model and reason)."""
        classes: dict[str, dict[str, Any]] = {}
        for row in self.failed_models:
            entry = classes.setdefault(row.get("failure_class") or "unknown", {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < 3:
                entry["examples"].append({"model": row["model"], "reason": (row.get("reason") or "")[:300]})
        return dict(sorted(classes.items(), key=lambda kv: -kv[1]["count"]))

    def strategy_mix(self) -> dict[str, int]:
        """How the passing exports were won: exporter and opset, with the repair when one was needed."""
        mix = Counter()
        for row in self.models:
            if row.get("strategy"):
                variant = f" ({row['variant']})" if row.get("variant") else ""
                label = f"{row['strategy']}{variant} opset {row.get('opset')}"
                mix[label + (f" + {row['repair']}" if row.get("repair") else "")] += 1
        return dict(mix.most_common())

    def distribution(self, key: str, bins: tuple[float, ...]) -> dict[str, int]:
        """Models per bin of ``key``; "peak_mb" is the larger of the model's worker and its export attempts'."""
        counts = Counter()
        for row in self.models:
            value = max(row.get(key) or 0.0, row.get("attempt_peak_mb") or 0.0) if key == "peak_mb" else row.get(key)
            if isinstance(value, (int, float)):
                upper = next((b for b in bins if value < b), None)
                counts[f"< {upper:g}" if upper is not None else f">= {bins[-1]:g}"] += 1
        labels = [f"< {b:g}" for b in bins] + [f">= {bins[-1]:g}"]
        return {label: counts.get(label, 0) for label in labels}

    def summary(self) -> str:
        allowed = sum(self.allowed(m) for m in self.failed_models)
        rate = self.pass_rate()
        return (f"{len(self.passed_models)} of {len(self.models)} models passed"
                + (f" ({rate:.0%})" if rate is not None else "")
                + (f"; {allowed} failure(s) allowed by --allow-fail" if allowed else ""))

    def to_dict(self) -> dict[str, Any]:
        from ..outcome import judge

        verdict = judge(self)
        return {
            "schema_version": ZOO_SCHEMA_VERSION, "onnxgate_version": __version__, "zoo": self.zoo,
            "source": self.source, "out_dir": self.out_dir, "executor": self.executor, "jobs": self.jobs,
            "shard": self.shard, "stages": list(self.stages), "allow_fail": list(self.allow_fail), "ran": self.ran,
            "resumed": self.resumed, "wall_seconds": round(self.wall_seconds, 2),
            "verdict": "pass" if verdict.passed else "fail", "exit_code": verdict.exit_code, "reason": verdict.reason,
            "hint": verdict.hint, "summary": self.summary(),
            "models_total": len(self.models), "passed": len(self.passed_models), "failed": len(self.failed_models),
            "allowed_failures": [m["model"] for m in self.failed_models if self.allowed(m)],
            "pass_rate": self.pass_rate(), "by_family": self.groups("family"), "by_tag": self.groups("tags"),
            "failure_classes": self.failure_classes(), "strategy_mix": self.strategy_mix(),
            "seconds_distribution": self.distribution("seconds", SECONDS_BINS),
            "peak_mb_distribution": self.distribution("peak_mb", MEMORY_BINS),
            "notes": self.notes, "models": self.models,
        }

    def to_html(self) -> str:
        from .html import render_zoo_html

        return render_zoo_html(self.to_dict())
