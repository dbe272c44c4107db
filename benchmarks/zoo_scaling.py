"""How `onnxgate zoo` scales (issue 17): the same small zoo (eight tiny MLPs and CNNs through the default ladder,
export + verify, dynamic batch) run from a fresh process with the local executor at 1 and 2 workers, and with the
Ray executor (a local cluster the command starts itself) at 1 and 2 CPUs. Wall time is the whole command, start-up
and warm-up included, as a user pays it; "sum of model s" adds the workers' own seconds.

    .venv/bin/python benchmarks/zoo_scaling.py [--models 8] [--no-append]

Ray's overhead per model = (Ray wall - local wall at the same parallelism - the cluster's start and stop) / models;
the start and stop are measured separately (ray.init + ray.shutdown in a fresh process). The table is printed and
appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = '''
import torch
from torch import nn


def _seeded(module, *shape):
    torch.manual_seed(0)
    return module.eval(), (torch.randn(*shape),)


def mlp(width):
    return lambda: _seeded(nn.Sequential(nn.Linear(32, width), nn.GELU(), nn.Linear(width, 10)), 2, 32)


def cnn(channels):
    return lambda: _seeded(nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3,
                                         padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)),
                           2, 3, 32, 32)


mlp_64, mlp_128, mlp_256, mlp_512 = mlp(64), mlp(128), mlp(256), mlp(512)
cnn_8, cnn_16, cnn_32, cnn_64 = cnn(8), cnn(16), cnn(32), cnn(64)
'''
NAMES = ["mlp_64", "cnn_8", "mlp_128", "cnn_16", "mlp_256", "cnn_32", "mlp_512", "cnn_64"]


def write_zoo(folder: Path, count: int) -> Path:
    (folder / "nets.py").write_text(MODELS)
    lines = ['[zoo]\nname = "scaling"\ntimeout_s = 600\nmemory_mb = 2000\n\n[defaults]\ndim = ["B=1..4"]\n']
    for name in (NAMES * (count // len(NAMES) + 1))[:count]:
        shape = "x:Bx32:float32" if name.startswith("mlp") else "x:Bx3x32x32:float32"
        lines.append(f'[[model]]\nref = "nets.py:{name}"\nname = "{name}_{len(lines)}"\ninput = ["{shape}"]\n')
    path = folder / "zoo.toml"
    path.write_text("\n".join(lines))
    return path


def run(zoo: Path, out: Path, *args: str) -> dict:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "onnxgate.cli.main", "zoo", str(zoo), "-o", str(out), *args, "--json"],
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    doc = json.loads(done.stdout)["result"]
    return {"wall": wall, "passed": doc["passed"], "models": doc["models_total"],
            "sum": sum(m["seconds"] for m in doc["models"])}


def ray_start_stop() -> float:
    code = ("import time, ray; t = time.monotonic(); ray.init(num_cpus=1, include_dashboard=False, "
            "log_to_driver=False); ray.shutdown(); print(time.monotonic() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    began = time.monotonic()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="zoo-scaling-") as tmp:
        zoo = write_zoo(Path(tmp), args.models)
        for label, extra in (("local, 1 worker", ["--jobs", "1"]), ("local, 2 workers", ["--jobs", "2"]),
                             ("ray, 1 CPU", ["--executor", "ray", "--jobs", "1"]),
                             ("ray, 2 CPUs", ["--executor", "ray", "--jobs", "2"])):
            rows[label] = run(zoo, Path(tmp) / label.replace(", ", "-").replace(" ", "_"), *extra)
            print(label, rows[label], flush=True)
        start_stop = ray_start_stop()
    n = args.models
    lines = [f"## Zoo scaling (issue 17): `.venv/bin/python benchmarks/zoo_scaling.py --models {n}`",
             "", f"Run on {dt.date.today()} ({time.monotonic() - began:.0f} s), {os.cpu_count()} cores shared with "
             f"other work (load average at the end {os.getloadavg()[0]:.1f}). {n} tiny models (MLPs and CNNs, "
             "default export ladder, dynamic batch 1..4, export + verify), each command from a fresh process.", "",
             "| executor | wall s | speed-up vs 1 local worker | models passed | sum of model s |", "|---|---|---|---|---|"]
    base = rows["local, 1 worker"]["wall"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['wall']:.1f} | {base / r['wall']:.2f}x | {r['passed']}/{r['models']} | {r['sum']:.1f} |")
    over1 = (rows["ray, 1 CPU"]["wall"] - rows["local, 1 worker"]["wall"] - start_stop) / n
    over2 = (rows["ray, 2 CPUs"]["wall"] - rows["local, 2 workers"]["wall"] - start_stop) / n
    lines += ["", f"Ray cluster start + stop (ray.init + ray.shutdown, fresh process): {start_stop:.1f} s. Ray overhead "
              f"per model beyond that: {over1:+.1f} s at 1 CPU, {over2:+.1f} s at 2 CPUs.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
