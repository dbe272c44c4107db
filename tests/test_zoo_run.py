"""`onnxgate zoo` end to end (issue 17's acceptance): a test zoo with a model that aborts the interpreter, one that
hangs past its timeout and one that allocates past its memory cap, next to models that pass. All three are
recorded with their outcome, the others pass; the zoo resumes after a kill -9 of its process without redoing
finished models and leaves no worker running; the same zoo on a local Ray cluster gives the same ledger modulo
timings; the dashboard renders in headless Chromium.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import jsonschema
import pytest

from onnxgate.cli.main import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

MODELS = '''
import os, time
from pathlib import Path
import torch
from torch import nn

FLAG = Path(__file__).with_name("blocked.flag")


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class Crash(Lin):
    def forward(self, x):
        os.abort()  # takes the interpreter down: SIGABRT


class Hang(Lin):
    def forward(self, x):
        time.sleep(3600)
        return x


class Hog(Lin):
    def forward(self, x):
        keep = [torch.ones(32, 1024, 1024) for _ in range(64)]  # 8 GiB, if nothing stopped it
        return x + len(keep)


class Blocked(Lin):
    def forward(self, x):  # runs while the test holds the flag file: the model a kill -9 interrupts
        while FLAG.exists():
            time.sleep(0.05)
        return super().forward(x)


def _seeded(cls, *shape):
    torch.manual_seed(0)
    return cls(), (torch.randn(*shape),)


def lin(): return _seeded(Lin, 2, 8)
def conv(): return _seeded(Conv, 2, 3, 8, 8)
def crash(): return _seeded(Crash, 2, 8)
def hang(): return _seeded(Hang, 2, 8)
def hog(): return _seeded(Hog, 2, 8)
def blocked(): return _seeded(Blocked, 2, 8)
'''

ZOO = '''
[zoo]
name = "acceptance"
timeout_s = 120
memory_mb = 1500

[defaults]
input = ["x:Bx8:float32"]
dim = ["B=1..4"]
strategy = "torchscript"  # the zoo machinery is under test here, not the exporters: the quicker rung

[[model]]
ref = "models/tiny.py:lin"
name = "lin"
tags = ["tiny"]

[[model]]
ref = "models/tiny.py:crash"
name = "crash"
tags = ["broken"]

[[model]]
ref = "models/tiny.py:conv"
name = "conv"
family = "conv"
tags = ["tiny"]
input = ["x:Bx3x8x8:float32"]

[[model]]
ref = "models/tiny.py:hang"
name = "hang"
timeout_s = 4
tags = ["broken"]

[[model]]
ref = "models/tiny.py:hog"
name = "hog"
memory_mb = 300
tags = ["broken"]

[[model]]
ref = "models/tiny.py:blocked"
name = "blocked"
tags = ["tiny"]
'''
BROKEN = {"crash": ("crashed", "crashed (SIGABRT)"), "hang": ("timeout", "timeout"), "hog": ("memory", "memory cap")}
SAME_FIELDS = ("model", "status", "verdict", "exit_code", "stage", "failure_class", "signal", "strategy", "opset",
               "family", "tags", "fingerprint", "domain")


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines() if line.strip()]


def _zoo_processes(marker: str) -> list[int]:
    """Processes whose command line names this test's zoo file: the zoo and every worker it forked."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _run_json(*args) -> tuple[int, dict]:
    """`onnxgate zoo ARGS --json` in this process: (exit code, the envelope it printed)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["zoo", *args, "--json"])
    return code, json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    (root / "models").mkdir()
    (root / "models" / "tiny.py").write_text(MODELS)
    (root / "zoo.toml").write_text(ZOO)
    return root / "zoo.toml"


@pytest.fixture(scope="module")
def resumed(zoo_file, tmp_path_factory):
    """Run the zoo in its own process, kill -9 it while 'blocked' runs (the five others finished), then run it
    again here: the resumed run must run 'blocked' only."""
    out = tmp_path_factory.mktemp("out") / "zoo"
    flag = zoo_file.parent / "models" / "blocked.flag"
    flag.touch()
    child = subprocess.Popen([sys.executable, "-m", "onnxgate.cli.main", "zoo", str(zoo_file), "-o", str(out),
                              "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "ledger.jsonl").is_file() and len(_ledger(out)) >= 5:
                break
            time.sleep(0.2)
        assert child.poll() is None, "the zoo ended before the kill"
        before_kill = _ledger(out)
        time.sleep(0.5)  # 'blocked' is in its worker, waiting on the flag
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    orphans = _zoo_processes(str(zoo_file))
    for _ in range(50):  # the workers die with their parent (PR_SET_PDEATHSIG)
        if not orphans:
            break
        time.sleep(0.1)
        orphans = _zoo_processes(str(zoo_file))
    flag.unlink()
    return {"out": out, "before_kill": before_kill, "orphans": orphans}


def test_kill_9_leaves_finished_models_in_the_ledger_and_no_worker_running(resumed):
    assert {r["model"] for r in resumed["before_kill"]} == {"lin", "crash", "conv", "hang", "hog"}
    assert resumed["orphans"] == [], "a worker outlived the killed zoo"


@pytest.fixture(scope="module")
def finished(resumed, zoo_file):
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--jobs", "2")
    shutil.copy(resumed["out"] / "zoo.html", resumed["out"] / "zoo-acceptance.html")  # later runs rewrite zoo.html
    return code, doc


def test_resumed_run_runs_only_the_unfinished_model(finished, resumed):
    code, doc = finished
    result = doc["result"]
    assert (result["ran"], result["resumed"]) == (1, 5)
    rows = _ledger(resumed["out"])
    counts = {name: sum(r["model"] == name for r in rows) for name in ("lin", "crash", "conv", "hang", "hog", "blocked")}
    assert counts == dict.fromkeys(counts, 1), f"a finished model ran again: {counts}"


def test_crash_hang_and_memory_hog_are_recorded_and_the_others_pass(finished):
    code, doc = finished
    models = {m["model"]: m for m in doc["result"]["models"]}
    for name, (status, failure_class) in BROKEN.items():
        row = models[name]
        assert (row["status"], row["verdict"], row["failure_class"]) == (status, "fail", failure_class), row
        assert row["exit_code"] == 3 and row["stage"] in ("load", "export"), row
        assert row["last_step"] and (Path(doc["result"]["out_dir"]) / row["log"]).is_file()
    assert models["hog"]["peak_mb"] > 300 and models["hog"]["signal"] == "SIGKILL"
    crash_log = (Path(doc["result"]["out_dir"]) / models["crash"]["log"]).read_text()
    assert "Fatal Python error: Aborted" in crash_log and "in forward" in crash_log  # where it died, for the user
    assert models["hang"]["seconds"] >= 4
    for name in ("lin", "conv", "blocked"):
        row = models[name]
        assert (row["status"], row["verdict"], row["exit_code"]) == ("ok", "pass", 0), row
        assert row["strategy"] == "torchscript" and row["domain"] == {"B": "B: 1..4"}
        assert (Path(doc["result"]["out_dir"]) / row["report"]).is_file()
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs/schemas/envelope.schema.json").read_text())
    jsonschema.validate(doc, schema)
    # The verdict: the first failing model in the zoo file's order gives the exit code (crash: 3).
    assert code == 3 and doc["exit_code"] == 3 and not doc["ok"]
    assert doc["reason"].startswith("3 of 6 models failed: crash (crashed (SIGABRT)); hang (timeout); hog (memory cap)")
    assert doc["result"]["failure_classes"]["memory cap"]["examples"][0]["model"] == "hog"
    assert doc["result"]["by_tag"]["broken"] == {"models": 3, "passed": 0, "pass_rate": 0.0}
    assert doc["result"]["by_tag"]["tiny"]["pass_rate"] == 1.0


def test_allow_fail_by_tag_passes_and_only_and_shard_select(finished, resumed, zoo_file):
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--allow-fail", "broken")
    assert code == 0 and doc["ok"] and doc["result"]["ran"] == 0
    assert sorted(doc["result"]["allowed_failures"]) == ["crash", "hang", "hog"]
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--allow-fail", "brokn")  # a typo fails closed
    assert code == 3 and doc["result"]["notes"] == ["--allow-fail 'brokn' matches no model of the zoo (by tag, "
                                                    "family or name)"]
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--only", "tiny")
    assert code == 0 and [m["model"] for m in doc["result"]["models"]] == ["lin", "conv", "blocked"]
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--shard", "2/2")
    assert [m["model"] for m in doc["result"]["models"]] == ["crash", "hang", "blocked"] and code == 3


def test_retry_failed_reruns_only_the_failed_models(finished, resumed, zoo_file):
    code, doc = _run_json(str(zoo_file), "-o", str(resumed["out"]), "--retry-failed", "--only", "broken",
                          "--jobs", "2")
    assert doc["result"]["ran"] == 3 and code == 3
    rows = _ledger(resumed["out"])
    assert {n: sum(r["model"] == n for r in rows) for n in ("lin", "crash", "hang", "hog")} == {
        "lin": 1, "crash": 2, "hang": 2, "hog": 2}


def test_same_zoo_on_ray_gives_the_same_ledger(finished, resumed, zoo_file, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        code, doc = _run_json(str(zoo_file), "-o", str(tmp_path / "ray"), "--executor", "ray", "--jobs", "2")
    finally:
        ray.shutdown()
    local = {r["model"]: {k: r.get(k) for k in SAME_FIELDS} for r in finished[1]["result"]["models"]}
    on_ray = {r["model"]: {k: r.get(k) for k in SAME_FIELDS} for r in doc["result"]["models"]}
    assert on_ray == local
    assert code == finished[0] and {r["executor"] for r in _ledger(tmp_path / "ray")} == {"ray"}


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dashboard_renders_sorts_and_links_reports(finished, resumed):
    assert CHROMIUM, "chromium is required in CI"
    from playwright.sync_api import sync_playwright

    page_html = resumed["out"] / "zoo-acceptance.html"
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file://") else None)
        page.goto(page_html.as_uri())
        plots = page.eval_on_selector_all(
            "svg[data-plot]", "els => els.map(e => [e.dataset.plot, e.getBoundingClientRect().width, "
                              "e.getBoundingClientRect().height, e.querySelectorAll('rect').length])")
        verdict = page.inner_text("#verdict")
        column = "#model-table tbody tr td:nth-child(9)"  # seconds
        page.click("#model-table th:nth-child(9)")
        ascending = [float(v) for v in page.eval_on_selector_all(column, "els => els.map(e => e.dataset.v)")]
        page.click("#model-table th:nth-child(9)")
        descending = [float(v) for v in page.eval_on_selector_all(column, "els => els.map(e => e.dataset.v)")]
        links = page.eval_on_selector_all("#model-table a", "els => els.map(e => e.getAttribute('href'))")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "zoo.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not requests, f"the dashboard fetched {requests}"
    assert "FAIL (exit code 3)" in verdict and "3 of 6 models passed" in verdict
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True) and len(ascending) == 6
    assert sorted(links) == [f"models/{n}/report.html" for n in ("blocked", "conv", "lin")]
    assert all((resumed["out"] / link).is_file() for link in links)
    names = {name for name, *_ in plots}
    assert {"pass-rate-family", "pass-rate-tag", "failure-classes", "strategy-mix", "seconds-distribution",
            "memory-distribution"} <= names
    for name, width, height, marks in plots:
        assert width > 100 and height > 30 and marks > 0, (name, width, height, marks)
