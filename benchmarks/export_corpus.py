"""Export every model of the test corpus and print the ladder's table: which strategy won, at which opset, how
long it took, peak memory, and how many attempts failed first.

    .venv/bin/python benchmarks/export_corpus.py [--only SUBSTRING] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import onnxgate
from onnxgate.errors import OnnxgateError
from onnxgate.examples.corpus import CORPUS
from onnxgate.spec import ExportConfig, parse_dim, parse_input


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    table = Table(title="export corpus")
    for col in ("model", "winner", "opset", "seconds (winner)", "peak MB", "failed attempts", "total s", "outcome"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for ref, inputs, dims in CORPUS:
            if args.only not in ref:
                continue
            config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)))
            start = time.perf_counter()
            try:
                result = onnxgate.export(ref, Path(tmp) / "m.onnx", config=config, force=True)
                won = result.attempts[result.winner]
                row = dict(model=ref, winner=won.strategy, opset=won.opset_emitted, seconds=won.seconds,
                           peak_mb=won.peak_mb, fallbacks=result.fallbacks, outcome="ok",
                           failed=[f"{a.strategy}@{a.opset}: {a.outcome}" for a in result.attempts[:result.winner]])
            except OnnxgateError as exc:
                row = dict(model=ref, winner="-", opset=None, seconds=None, peak_mb=None, fallbacks=None,
                           outcome=f"{type(exc).__name__}: {exc.message[:100]}", failed=[])
            row["total_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            table.add_row(ref, row["winner"], str(row["opset"]), str(row["seconds"]), str(row["peak_mb"]),
                          str(row["fallbacks"]), str(row["total_s"]), row["outcome"])
            print(json.dumps(row), file=sys.stderr, flush=True)
    Console(width=160).print(table)
    print(f"{sum(1 for r in rows if r['fallbacks'])} of {len(rows)} models needed a fallback")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["outcome"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
