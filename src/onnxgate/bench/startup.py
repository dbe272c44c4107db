"""Start-up time and peak memory, each runner in a fresh process of its own.

Start-up is from starting a cold Python process to the first result: interpreter, imports, loading the model,
first inference — what a CLI tool, a serverless function or an autoscaled replica pays. Peak resident memory is
read in the same process after a few more inferences; measured anywhere else, the runtimes' figures would mix (the
benchmark process holds PyTorch, every runtime and the model at once). See ``_probe.py`` for the child's side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..runtimes.ort import OPT_LEVELS
from .runners import PYTORCH, Config

PROBE = Path(__file__).with_name("_probe.py")
STEADY_RUNS = 3  # inferences after the first before reading peak memory
TIMEOUT_S = 600


@dataclass
class Startup:
    side: str
    config_id: str
    startup_s: float | None = None  # median over the repeats
    runs_s: list[float] = field(default_factory=list)
    import_s: float | None = None  # phases of the median run
    load_s: float | None = None
    first_run_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def save_feed(feed: dict[str, np.ndarray], folder: Path) -> list[list[str]]:
    """One .npy per input (names are never used as file names, so any input name is safe)."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, (name, array) in enumerate(feed.items()):
        path = folder / f"input{i}.npy"
        np.save(path, array, allow_pickle=False)
        pairs.append([name, str(path)])
    return pairs


def measure_startup(config: Config, *, feed_files: list[list[str]], model_path: str | None,
                    source: dict | None, repeats: int) -> Startup:
    """Run the probe ``repeats`` times for ``config``; the median start-up, and that run's phases and memory."""
    result = Startup(config.side, config.id)
    if config.runtime == PYTORCH and not (source and source.get("ref")):
        result.error = "the PyTorch model has no reference a fresh process could load it from"
        return result
    spec = {"runtime": config.runtime, "threads": config.threads, "model": model_path, "source": source,
            "ort_level": OPT_LEVELS[config.opt_level or "all"], "feed": feed_files, "runs": STEADY_RUNS,
            "precision": config.precision}
    runs = []
    for _ in range(repeats):
        started = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, str(PROBE), json.dumps(spec)], capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result.error = f"the probe did not finish within {TIMEOUT_S} s"
            return result
        reply = _last_json_line(proc.stdout)
        if proc.returncode != 0 or reply is None or not reply.get("ok"):
            result.error = (reply or {}).get("error") or (
                f"the probe process failed (exit {proc.returncode}): {_tail(proc.stderr)}")
            return result
        runs.append((reply["first_result_at"] - started, reply))
    runs.sort(key=lambda item: item[0])
    median_s, median = runs[len(runs) // 2]
    result.startup_s, result.runs_s = median_s, [s for s, _ in runs]
    result.import_s, result.load_s, result.first_run_s = median["import_s"], median["load_s"], median["first_run_s"]
    result.peak_rss_mb = median["peak_rss_bytes"] / 2 ** 20
    return result


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"
