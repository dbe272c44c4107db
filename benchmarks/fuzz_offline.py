"""The larger, offline fuzz run: the seeded generator of ``tests/test_fuzz_onnx.py`` with many more cases, plus a
base model exported by onnxgate itself (when torch is installed).

    .venv/bin/python benchmarks/fuzz_offline.py [--onnx 10000] [--toml 2000] [--seed 7] [--markdown]

Every mutated ONNX file goes through `onnxgate inspect --json` and `onnxgate verify --json` (half of them with
``--data``, so verify reads the metadata's input specs), every mutated onnxgate.toml through ``load_toml``; each
case runs in a forked worker (a native crash is counted, not fatal). Prints one row per family and probe: tried,
exit 0, clean error (a documented exit code with the JSON envelope), traceback (an exception escaped: exit 1),
crash (the worker died: signal, abort, timeout), wrongly exit 0 (the mutation certainly breaks the input, or
``verify`` had nothing to verify against), no JSON (stdout was not one JSON document).

hypothesis and atheris are not installed in the project's environment, so this run uses the seeded generator; its
cases are reproducible from the seed. ``--show N`` prints the first N failures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("onnxgate_fuzz_cases", ROOT / "tests" / "test_fuzz_onnx.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def exported_base(tmp: Path):
    """A small model exported by `onnxgate export` (dynamic batch), its source renamed to a module that does not
    exist: verify must not run it either way, and the run stays torch-model-free."""
    try:
        import numpy as np
        import onnx
        import torch
    except ImportError:
        return {}
    from onnxgate.export import export
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    path = tmp / "exported.onnx"
    torch.manual_seed(0)
    config = ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),), dims=(parse_dim("B=1..4@2"),))
    export(Net(), path, config=config, force=True)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "onnxgate.source":
            prop.value = "onnxgate_fuzz_no_such_module:Net"
    return {"exported": (model, {"x": np.ones((2, 1, 8, 8), dtype=np.float32)})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=int, default=10000, help="mutated ONNX files (two probes each)")
    parser.add_argument("--toml", type=int, default=2000, help="mutated onnxgate.toml files")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--show", type=int, default=20, help="failures to print")
    parser.add_argument("--json-out", type=Path, help="also write the table and failures as JSON")
    args = parser.parse_args()

    fuzz = _fuzz_module()
    with tempfile.TemporaryDirectory(prefix="onnxgate-fuzz-") as tmp:
        tmp_path = Path(tmp)
        extra = exported_base(tmp_path)
        fuzz._preimport()
        cases = fuzz.build_cases(tmp_path / "cases", seed=args.seed, onnx_count=args.onnx, toml_count=args.toml,
                                 extra_bases=extra)
        started = time.perf_counter()
        done = [0]

        def progress(n: int) -> None:
            if n - done[0] >= 2000 or n == len(cases):
                done[0] = n
                print(f"  {n}/{len(cases)} cases", file=sys.stderr)

        results = fuzz.run_cases(cases, tmp_path / "results.jsonl", progress=progress)
        seconds = time.perf_counter() - started
    rows = fuzz.tabulate(cases, results)
    bad = fuzz.failures(cases, results)
    bases = ", ".join(["mlp", "conv", "embed", *extra])
    print(f"{len(cases)} cases (seed {args.seed}; {args.onnx} ONNX files from {bases}; {args.toml} toml files) "
          f"in {seconds:.0f} s\n")
    print(fuzz.markdown_table(rows))
    if bad:
        print(f"\n{len(bad)} failing cases; the first {min(args.show, len(bad))}:")
        for line in bad[: args.show]:
            print("  " + line)
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": {k: dict(v) for k, v in rows.items()}, "failures": bad},
                                            indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
