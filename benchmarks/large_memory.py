"""Peak memory of a model over 2 GB, stage by stage: a plain `torch.onnx.export` vs `onnxgate run` (issue 18).

Both sides run as fresh processes, one after the other (plain first), with the plain export snippet and the
process-tree PSS sampling of ``export_speed.py`` (a page shared by onnxgate's forked export worker and its parent
is counted once). The onnxgate side is ``onnxgate run REF --bench none`` (export with the ladder's checks and full
verification, verify, optimize, bundle); its per-stage figures are the run report's ``stages.memory`` (each stage's
peak resident memory in the pipeline's process, what was resident when it began, and the largest forked worker).

    .venv/bin/python benchmarks/large_memory.py [--ref torchvision:vit_h_14] [--input x:Bx3x224x224:float32]
        [--dim B=1..2@2] [--gate-arg=--reinit-degenerate] [--keep report.json] [--write]
    # --write: replace the section in RESULTS.md (torchvision's ViT heads are zero-initialized: random weights need
    # --reinit-degenerate, else the run fails as "not verifiable with these weights")
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_speed as es  # noqa: E402  (the PLAIN snippet and the PSS sampler)

ROOT = Path(__file__).resolve().parents[1]
HEAD = "# Models over 2 GB: peak memory per stage, plain export vs onnxgate (issue 18)"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="torchvision:vit_h_14")
    parser.add_argument("--input", action="append", default=None)
    parser.add_argument("--dim", action="append", default=None)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--keep", default=None, help="Write onnxgate's report.json here.")
    parser.add_argument("--gate-arg", action="append", default=[],
                        help="Another argument for `onnxgate run` (e.g. --gate-arg=--reinit-degenerate).")
    args = parser.parse_args()
    inputs, dims = args.input or ["x:Bx3x224x224:float32"], args.dim or ["B=1..2@2"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        plain = es.measure([es.PY, "-c", es.PLAIN, args.ref, f"{tmp}/plain.onnx", ";".join(inputs), ";".join(dims)])
        print(f"plain: {plain[0]:.1f} s, {plain[1]:.0f} MB: {plain[2]}", flush=True)
        for leftover in Path(tmp).iterdir():  # gigabytes of weights: gone before the other side runs
            leftover.unlink()
        out = Path(tmp) / "out"
        gate = es.measure([es.PY, "-m", "onnxgate.cli.main", "run", args.ref, "-o", str(out), "--bench", "none",
                           "--json", *[f"--input={s}" for s in inputs], *[f"--dim={d}" for d in dims],
                           *args.gate_arg])
        print(f"onnxgate: {gate[0]:.1f} s, {gate[1]:.0f} MB", flush=True)
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    if args.keep:
        Path(args.keep).write_text(json.dumps(report, indent=1))
    return _print(args, plain, gate, report)


def _print(args, plain, gate, report: dict) -> int:
    stages = report.get("stages", {})
    memory = stages.get("memory", {})
    estimate = memory.get("export", {}).get("estimate", {})
    lines = [f"| side / stage | seconds | peak MB | resident at start MB | largest forked worker MB | result |",
             "|" + " --- |" * 6,
             f"| plain `torch.onnx.export(dynamo=True)` (process tree, PSS) | {plain[0]:.1f} | {plain[1]:.0f} | - | - | "
             f"{plain[2]} |",
             f"| `onnxgate run --bench none` (process tree, PSS) | {gate[0]:.1f} | {gate[1]:.0f} | - | - | "
             f"exit {report.get('exit_code', '?')}, verdict {report.get('verdict', '?')}"
             + (f": {str(report['reason'])[:400]}" if report.get("reason") else "") + " |"]
    for name, m in memory.items():
        result = _stage_result(name, stages.get(name, {}))
        lines.append(f"| onnxgate stage `{name}` (pipeline process, RSS) | {m.get('seconds', '-')} | "
                     f"{m.get('peak_rss_mb', '-')} | {m.get('start_rss_mb', '-')} | {m.get('children_peak_mb', '-')} | "
                     f"{result} |")
    table = "\n".join(lines)
    note = (f"Weights: {estimate.get('weights_mb', '?')} MB; the export's memory check estimated a peak of "
            f"{estimate.get('estimated_peak_mb', '?')} MB ({estimate.get('needed_mb', '?')} MB beyond the loaded "
            f"model) against {estimate.get('available_mb', '?')} MB available.")
    print(table + "\n\n" + note)
    if args.write:
        _write(args, table, note)
    return 0


def _stage_result(name: str, stage: dict) -> str:
    if name == "export":
        return "ok" if stage.get("ok") else "failed"
    if name == "optimize":
        return ", ".join(f"{t['name']} {t['status']}" for t in stage.get("transforms", []))
    if name == "bundle":
        return "bundle verified" if stage.get("verification", {}).get("passed") else "bundle not verified"
    return "passed" if stage.get("passed") else "-"


def _write(args, table: str, note: str) -> None:
    results = ROOT / "benchmarks" / "RESULTS.md"
    text = results.read_text()
    command = (f"`.venv/bin/python benchmarks/large_memory.py --ref {args.ref} "
               + " ".join(f"--input {s}" for s in args.input or ["x:Bx3x224x224:float32"]) + " "
               + " ".join(f"--dim {d}" for d in args.dim or ["B=1..2@2"])
               + "".join(f" --gate-arg={a}" for a in args.gate_arg) + " --write`")
    section = (f"{HEAD}\n\nProduced by {command} on {time.strftime('%Y-%m-%d')}, load average at the end "
               f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs shared the machine; wall seconds "
               f"are inflated by them, memory is not). {note}\n\n{table}\n")
    if HEAD in text:
        start = text.index(HEAD)
        end = text.find("\n# ", start + len(HEAD))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
