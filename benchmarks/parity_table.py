"""Export and verify the issue-3 reference models, printing max abs error per output and per shape.

    .venv/bin/python benchmarks/parity_table.py [--runtime openvino]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

import onnxgate
from onnxgate.examples.corpus import VERIFY_CASES
from onnxgate.spec import ExportConfig, parse_dim, parse_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", action="append", default=None)
    args = parser.parse_args()
    runtimes = tuple(args.runtime or ["onnxruntime"])
    table = Table(title="parity against PyTorch (max abs error)")
    for col in ("model", "runtime", "output", "feed", "sizes", "max abs err", "max rel err", "verdict"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for ref, (inputs, dims) in VERIFY_CASES.items():
            config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)),
                          reinit_degenerate=True)  # torchvision's ViT head is zero-initialized
            path = Path(tmp) / "m.onnx"
            onnxgate.export(ref, path, config=config, force=True)
            result = onnxgate.verify(path, runtimes=runtimes)
            for parity in result.parities:
                for case in parity.cases:
                    sizes = ",".join(f"{k}={v}" for k, v in case.sizes.items())
                    for c in case.comparisons:
                        table.add_row(ref, parity.candidate, c.name, case.label, sizes, f"{c.max_abs_err:.1e}",
                                      f"{c.max_rel_err:.1e}", "ok" if c.passed else f"FAIL {c.reason}")
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
