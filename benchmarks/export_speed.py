"""Plain `torch.onnx.export` vs `onnxgate export` (ladder + full verification), side by side in one run.

Each side runs as its own fresh process (imports, model construction and export included, the same on both sides),
one model after the other, alternating which side goes first. Peak memory is the peak over time of the summed
proportional set size (PSS) of the process and all its children (onnxgate's export attempts run in forked workers
that share the model's pages; PSS counts a shared page once, where summing RSS would count it per process).

    .venv/bin/python benchmarks/export_speed.py [--only NAME] [--write]   # --write: replace the table in RESULTS.md

It prints ``uptime`` before and after (the figures mean something only on a machine where nothing else runs), and per
model the sizes the proof probed and the domain it claims (a change that makes the export cheaper must leave the
claims as they were: compare this table before and after).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# name, onnxgate ref, --input specs, --dim specs (the plain export gets the same dynamic dims)
MODELS = [
    ("resnet18", "torchvision:resnet18", ["x:Bx3x224x224:float32"], ["B=1..8@2"]),
    ("mobilenet_v3_large", "torchvision:mobilenet_v3_large", ["x:Bx3x224x224:float32"], ["B=1..8@2"]),
    ("efficientnet_b0", "torchvision:efficientnet_b0", ["x:Bx3x224x224:float32"], ["B=1..8@2"]),
    # torchvision initializes the ViT head to zeros: without --reinit-degenerate onnxgate refuses to call a
    # random-weight ViT verified (exit 4), which is right, but is not the export this table times.
    ("vit_b_16", "torchvision:vit_b_16", ["x:Bx3x224x224:float32"], ["B=1..8@2"], ["--reinit-degenerate"]),
    ("bert (tiny config)", "onnxgate.examples.tiny_transformers:bert",
     ["input_ids:BxS:int64:0..1000", "attention_mask:BxS:int64:1..2"], ["B=1..8@2", "S=4..64@16"]),
    ("gpt2 (tiny config)", "onnxgate.examples.tiny_transformers:gpt2",
     ["input_ids:BxS:int64:0..1000", "attention_mask:BxS:int64:1..2"], ["B=1..8@2", "S=4..64@16"]),
    # a timm conv/attention hybrid (random weights): the corpus row that cost 107 s vs a plain 9 s under load
    ("timm fastvit_t8", "timm:fastvit_t8", ["x:Bx3x256x256:float32"], ["B=1..8@2"]),
    # issue 25's hopeless model: H is frozen by a Python branch on a size ('if H == self.window_size'); every rung
    # must refuse, and the target is a refusal in <= 2x the time of one plain export attempt (was 378 s vs 28 s)
    ("timm tiny_vit_5m_224 (H dynamic: refused)", "timm:tiny_vit_5m_224", ["x:Bx3xHx224:float32"],
     ["B=1..8@2", "H=224..448@224"]),
    ("timm beit_base_patch16_224 (dynamo capture fails)", "timm:beit_base_patch16_224", ["x:Bx3x224x224:float32"],
     ["B=1..8@2"]),
]

PLAIN = textwrap.dedent('''
    import sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    from onnxgate.sources import load_model
    from onnxgate.spec import parse_input, parse_dim
    ref, out, inputs, dims = sys.argv[1], sys.argv[2], sys.argv[3].split(";"), sys.argv[4].split(";")
    loaded = load_model(ref)
    specs = [parse_input(s) for s in inputs]
    sizes = {d.name: d.example for d in map(parse_dim, dims)}
    args, shapes = [], []
    for spec in specs:
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.dtype.startswith("int"):
            args.append(torch.randint(0, 100, shape, dtype=getattr(torch, spec.dtype)))
        else:
            args.append(torch.randn(*shape))
        shapes.append({a: torch.export.Dim.DYNAMIC for a, d in enumerate(spec.shape) if isinstance(d, str)})
    model = loaded.module.eval()
    names = [s.name for s in specs]
    kwargs = dict(zip(names, args)) if ref.startswith("onnxgate.examples") else None
    try:
        torch.onnx.export(model, () if kwargs else tuple(args), out, kwargs=kwargs, dynamo=True,
                          dynamic_shapes=dict(zip(names, shapes)) if kwargs else tuple(shapes), input_names=names)
        print("ok")
    except Exception as exc:
        print("failed:", type(exc).__name__, str(exc).splitlines()[0][:120])
''')


def _pss_tree(pid: int) -> int:
    """Summed PSS (bytes) of ``pid`` and its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(cmd: list[str]) -> tuple[float, float, str, str, float]:
    """(wall seconds, peak MB of the process tree, last stdout line or the failure, all of stdout, CPU seconds of the
    whole process tree — user + system, every descendant waited for — which a busy machine does not inflate)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _pss_tree(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    last = re.sub(r"\x1b\[[0-9;]*m|\[\d+m", "", (out.strip().splitlines() or [""])[-1])  # no ANSI colours
    if proc.returncode:
        last += f" (exit {proc.returncode}: {(err.strip().splitlines() or [''])[-1][:120]})"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, peak / 2**20, last, out, cpu


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def claims(json_text: str) -> list[tuple[str, str, str]]:
    """(dim, sizes probed, domain claimed) of the winner's proof, from ``onnxgate export --json``."""
    import json

    try:
        result = json.loads(json_text).get("result") or {}
    except ValueError:
        return []
    won = result.get("winner")
    parity = (result.get("attempts") or [{}])[won].get("parity") if won is not None else None
    rows = []
    for dim, domain in ((parity or {}).get("domains") or {}).items():
        rows.append((dim, ", ".join(map(str, domain.get("probes") or [])), domain.get("summary") or ""))
    return rows


def winner(json_text: str) -> str:
    import json

    try:
        doc = json.loads(json_text)
    except ValueError:
        return "?"
    result = doc.get("result") or {}
    attempts, won = result.get("attempts") or [], result.get("winner")
    if won is None:
        return f"refused (exit {doc.get('exit_code')})"
    a = attempts[won]
    extra = [a["variant"]] if a.get("variant") else []
    extra += [f"repair {r}" for r in a.get("repairs") or {}]
    return f"{a['strategy']}{' (' + ', '.join(extra) + ')' if extra else ''} @ {a['opset']}, rung {won + 1}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows, domains = [], []
    before = uptime()
    print(f"uptime before: {before}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ref, inputs, dims, *extra) in enumerate(m for m in MODELS if args.only in m[0]):
            plain_cmd = [PY, "-c", PLAIN, ref, f"{tmp}/plain.onnx", ";".join(inputs), ";".join(dims)]
            gate_cmd = [PY, "-m", "onnxgate.cli.main", "export", ref, "-o", f"{tmp}/gate.onnx", "--force", "--json",
                        *[f"--input={s}" for s in inputs], *[f"--dim={d}" for d in dims], *(extra[0] if extra else [])]
            order = [("plain", plain_cmd), ("onnxgate", gate_cmd)]
            results = {}
            for side, cmd in order if i % 2 == 0 else order[::-1]:  # alternate who runs first
                results[side] = measure(cmd)
                print(f"{name}: {side} {results[side][0]:.1f} s, {results[side][1]:.0f} MB", flush=True)
            plain, gate = results["plain"], results["onnxgate"]
            rows.append((name, plain[0], plain[4], plain[1], plain[2], gate[0], gate[4], gate[1], winner(gate[3])))
            domains += [(name, *row) for row in claims(gate[3])] or [(name, "-", "-", winner(gate[3]))]
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    return _print(rows, domains, (before, after), args.write)


def _print(rows, domains, load: tuple[str, str], write: bool) -> int:
    lines = ["| model | plain wall s | plain CPU s | plain peak MB | plain export | onnxgate wall s | onnxgate CPU s | "
             "onnxgate peak MB | onnxgate winner | wall ratio | CPU ratio | memory ratio |", "|" + " --- |" * 12]
    for name, ps, pc, pm, presult, gs, gc, gm, won in rows:
        lines.append(f"| {name} | {ps:.1f} | {pc:.1f} | {pm:.0f} | {presult} | {gs:.1f} | {gc:.1f} | {gm:.0f} | {won} | "
                     f"{gs / ps:.2f}x | {gc / pc:.2f}x | {gm / pm:.2f}x |")
    lines += ["", "| model | dim | sizes probed (in order) | domain claimed |", "|" + " --- |" * 4]
    lines += [f"| {name} | {dim} | {probed} | {claim} |" for name, dim, probed, claim in domains]
    lines += ["", f"uptime before: `{load[0]}`; after: `{load[1]}`"]
    table = "\n".join(lines)
    print(table)
    if write:
        results = ROOT / "benchmarks" / "RESULTS.md"
        text = results.read_text()
        head = "# Export speed: plain torch.onnx.export vs onnxgate export (issue 25, `export_speed.py --write`)"
        section = (f"{head}\n\nProduced by `.venv/bin/python benchmarks/export_speed.py --write` on "
                   f"{time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; `uptime` before and after is under the "
                   "tables (wall seconds mean something only when nothing else ran; the CPU columns, user + system "
                   "seconds of each side's whole process tree, are what a busy machine inflates least). Targets: "
                   "median wall ratio <= 1.5x and memory ratio <= 1.3x over the models both sides export, no model "
                   f"above 2.5x; the claimed domains unchanged.\n\n{table}\n")
        if head in text:
            start = text.index(head)
            end = text.find("\n# ", start + len(head))
            text = text[:start] + section + (text[end:] if end != -1 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
