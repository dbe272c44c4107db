"""What each of issue 28's four checks adds to the main job, on resnet18 and a BERT encoder (tiny config).

    .venv/bin/python benchmarks/beyond_sampling.py [--write]     # --write: replace its section in RESULTS.md

Each figure is a whole `onnxgate` process timed here, the two sides of a difference run one after the other:
* noise: `onnxgate verify model.onnx --against REF` (tolerances from the model's own float32 noise) minus the same
  with `--rtol 1e-3 --atol 1e-4` (fixed tolerances: no noise runs);
* hunt: `onnxgate run ...` minus the same with `--hunt-budget 0`, and the seconds the hunt records in the report;
* batch invariance: the seconds the bundle's proof records in its claim (`claim.batching.seconds`);
* signing: `onnxgate sign BUNDLE --key KEY`, and `onnxgate verify BUNDLE --trust KEY.pub` minus `verify BUNDLE`.
`uptime` is printed before and after: the figures mean something only when nothing else ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONNXGATE = str(Path(sys.executable).parent / "onnxgate")
MODELS = [
    ("resnet18", "torchvision:resnet18", ["x:Bx3x224x224:float32"], ["B=1..8@2"]),
    ("bert (tiny config)", "onnxgate.examples.tiny_transformers:bert",
     ["input_ids:BxS:int64:0..1000", "attention_mask:BxS:int64:1..2"], ["B=1..8@2", "S=4..64@16"]),
]
HEAD = "# Beyond sampling: what each check adds to `onnxgate run` (issue 28, `beyond_sampling.py --write`)"


def timed(*argv: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([ONNXGATE, *argv, "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        doc = {"exit_code": done.returncode, "reason": done.stderr.strip().splitlines()[-1:]}
    if doc.get("exit_code"):
        raise SystemExit(f"{' '.join(argv)}: exit {doc.get('exit_code')}: {doc.get('reason')}")
    return seconds, doc


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def measure(name: str, ref: str, inputs: list[str], dims: list[str], tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    flags = [*(f"--input={s}" for s in inputs), *(f"--dim={d}" for d in dims), "--bench", "none", "--no-optimize"]
    run_s, doc = timed("run", ref, *flags, "-o", str(tmp / "on"), "--force")
    off_s, _ = timed("run", ref, *flags, "--hunt-budget", "0", "-o", str(tmp / "off"), "--force")
    hunt = (doc["result"]["stages"].get("hunt") or {})
    manifest = json.loads((tmp / "on" / "bundle" / "manifest.json").read_text())
    batching = (manifest.get("claim") or {}).get("batching") or {}
    model, against = str(tmp / "on" / "model.onnx"), ["--against", ref, *(f"--input={s}" for s in inputs),
                                                      *(f"--dim={d}" for d in dims)]
    noise_s, _ = timed("verify", model, *against)
    fixed_s, _ = timed("verify", model, *against, "--rtol", "1e-3", "--atol", "1e-4")
    key = tmp / "signing.key"
    timed("sign", "--generate-key", str(key), "--force")
    sign_s, _ = timed("sign", str(tmp / "on" / "bundle"), "--key", str(key))
    plain_s, _ = timed("verify", str(tmp / "on" / "bundle"))
    trust_s, _ = timed("verify", str(tmp / "on" / "bundle"), "--trust", f"{key}.pub")
    row = {"model": name, "run_s": run_s, "run_no_hunt_s": off_s, "hunt_recorded_s": hunt.get("seconds"),
           "hunt_evaluations": hunt.get("evaluations"), "noise_verify_s": noise_s, "fixed_verify_s": fixed_s,
           "batching_s": batching.get("seconds"), "batching_sizes": batching.get("sizes"), "sign_s": sign_s,
           "verify_bundle_s": plain_s, "verify_bundle_trust_s": trust_s}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | run s | noise: verify s (fixed tol -> noise) | hunt: run s without -> with (recorded, "
             "evaluations) | batch invariance s (sizes) | sign s | verify BUNDLE s (plain -> --trust) |",
             "|" + " --- |" * 7]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['run_s']:.1f} | {r['fixed_verify_s']:.1f} -> {r['noise_verify_s']:.1f} "
            f"(+{r['noise_verify_s'] - r['fixed_verify_s']:.1f}) | {r['run_no_hunt_s']:.1f} -> {r['run_s']:.1f} "
            f"(+{r['run_s'] - r['run_no_hunt_s']:.1f}; {r['hunt_recorded_s']} s, {r['hunt_evaluations']} evals) | "
            f"{r['batching_s']} ({r['batching_sizes']}) | {r['sign_s']:.1f} | {r['verify_bundle_s']:.1f} -> "
            f"{r['verify_bundle_trust_s']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    before = uptime()
    print(f"uptime before: {before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="beyond-sampling-") as tmp:
        rows = [measure(*m, Path(tmp) / str(i)) for i, m in enumerate(MODELS)]
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    text = (f"{HEAD}\n\n`.venv/bin/python benchmarks/beyond_sampling.py --write` on {time.strftime('%Y-%m-%d')}: "
            "whole processes, one after the other (see the script's docstring for what each difference is). "
            f"`uptime` before: `{before}`; after: `{after}`.\n\n{table(rows)}\n")
    print(text)
    if args.write:
        from results_md import replace_section

        replace_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
