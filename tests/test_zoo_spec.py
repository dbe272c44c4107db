"""The zoo file, the ledger and the zoo's verdict, without running models: a bad zoo file is exit 2 naming the model
and the key before anything runs; the built-in zoos load offline; a torn ledger line (a kill mid-write) is skipped;
the exit-code rule; a worker's own workers die with it (what a kill -9 of the zoo relies on)."""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from onnxgate.cli.main import main
from onnxgate.errors import BadInputError
from onnxgate.outcome import judge
from onnxgate.zoo import Ledger, ZooReport, load_zoo
from onnxgate.zoo.ledger import pending
from onnxgate.zoo.spec import select

GOOD = '''
[zoo]
name = "unit"
[defaults]
input = ["x:Bx8:float32"]
dim = ["B=1..4"]
[[model]]
ref = "nets/tiny.py:lin"
tags = ["a"]
[[model]]
ref = "torchvision:resnet18"
dim = ["B=1..8"]
tags = ["b"]
[[model]]
ref = "onnxgate.examples.tiny_transformers:bert"
name = "bert"
stages = ["optimize", "bench"]
'''


def _zoo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zoo.toml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, *extra: str) -> dict:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["zoo", str(_zoo(tmp_path, text)), "-o", str(tmp_path / "out"), *extra, "--json"])
    doc = json.loads(buffer.getvalue())
    assert code == 2 and doc["exit_code"] == 2 and doc["error"]["type"] == "BadInputError", doc
    assert not (tmp_path / "out" / "ledger.jsonl").exists(), "a bad zoo must not start anything"
    return doc


def test_models_resolve_with_defaults_stages_names_and_relative_refs(tmp_path):
    zoo = load_zoo(str(_zoo(tmp_path, GOOD)))
    lin, resnet, bert = zoo.models
    assert (zoo.name, lin.name, resnet.name, bert.name) == ("unit", "tiny.lin", "resnet18", "bert")
    assert lin.ref == f"{tmp_path / 'nets' / 'tiny.py'}:lin"  # relative to the zoo file, not the cwd
    assert resnet.run.export.dims[0].max == 8 and lin.run.export.dims[0].max == 4  # the model's key wins
    assert (lin.run.bench, lin.run.optimize, lin.run.bundle) == ("none", False, False)  # export + verify only
    assert bert.stages == ("export", "verify", "optimize", "bench") and (bert.run.bench, bert.run.optimize) == (
        "quick", True)
    assert (resnet.family, lin.family) == ("resnet", "tiny") and resnet.labels() == {"b", "resnet", "resnet18"}
    assert len({m.fingerprint for m in zoo.models}) == 3


def test_fingerprint_follows_options_not_tags(tmp_path):
    base = load_zoo(str(_zoo(tmp_path, GOOD))).models[1]
    retagged = load_zoo(str(_zoo(tmp_path, GOOD.replace('tags = ["b"]', 'tags = ["c"]')))).models[1]
    redimmed = load_zoo(str(_zoo(tmp_path, GOOD.replace("B=1..8", "B=1..16")))).models[1]
    assert base.fingerprint == retagged.fingerprint != redimmed.fingerprint


@pytest.mark.parametrize("change, says", [
    (("dim = [\"B=1..8\"]", "dimm = [\"B=1..8\"]"), "[[model]] #2 ('torchvision:resnet18') key 'dimm' is not a key "
                                                    "onnxgate knows: did you mean 'dim'?"),
    (('tags = ["a"]', 'tags = ["a"]\ntimeout_s = "5"'), "[[model]] #1 ('nets/tiny.py:lin') key 'timeout_s' must be "
                                                         "a number of seconds > 0 (it is the string '5')"),
    (('tags = ["a"]', 'tags = ["a"]\ninput = ["x:Bx8:floot32"]'), "model 'tiny.lin' (#1): --input 'x:Bx8:floot32': "
                                                                 "unknown dtype 'floot32'"),
    (('name = "bert"', 'name = "resnet18"'), "models #2 and #3 are both named 'resnet18'"),
    (('stages = ["optimize", "bench"]', 'stages = ["optimise"]'), "[[model]] #3"),
    (('stages = ["optimize", "bench"]', 'stages = ["deploy"]'), "the deploy stage is on but no targets are named"),
    (("[zoo]", "[zooo]"), "key 'zooo' is not a key onnxgate knows: did you mean 'zoo'?"),
])
def test_a_bad_zoo_file_is_exit_2_naming_model_and_key(tmp_path, change, says):
    doc = _error(tmp_path, GOOD.replace(*change))
    assert says in doc["error"]["message"], doc["error"]["message"]
    assert doc["hint"]


@pytest.mark.parametrize("args, says", [
    (("--shard", "3/2"), "--shard '3/2' is not a shard"),
    (("--jobs", "0"), "--jobs 0 is not a number of workers"),
    (("--address", "auto"), "--address names a Ray cluster, but the executor is local"),
    (("--executor", "dask"), "--executor 'dask' is not an executor"),
    (("--only", "bret"), "--only 'bret' matches no model of zoo 'unit' (by tag, family or name). Close: bert"),
])
def test_bad_flags_are_exit_2(tmp_path, args, says):
    assert says in _error(tmp_path, GOOD, *args)["error"]["message"]


def test_unknown_builtin_and_empty_zoo(tmp_path):
    with pytest.raises(BadInputError, match="Did you mean 'torchvision'"):
        load_zoo("torchvison")
    with pytest.raises(BadInputError, match="lists no models"):
        load_zoo(str(_zoo(tmp_path, "[zoo]\nname = 'empty'\n")))


def test_builtin_zoos_load_offline():
    import torchvision.models

    tv = load_zoo("torchvision")
    assert {m.ref.split(":")[1] for m in tv.models} == set(torchvision.models.list_models(module=torchvision.models))
    assert all(m.run.export.reinit_degenerate and m.tags[0] in ("small", "medium", "large", "huge") for m in tv.models)
    assert next(m for m in tv.models if m.name == "inception_v3").run.export.inputs[0].shape == ("B", 3, 299, 299)
    assert len(load_zoo("timm").models) == 18
    transformers = load_zoo("transformers")
    assert [m.name for m in transformers.models] == ["bert", "distilbert", "albert", "electra", "gpt2", "t5", "bart",
                                                     "vit"]
    assert transformers.models[0].tags == ("text", "encoder") and transformers.models[4].tags == ("text", "decoder")


def test_shards_partition_the_zoo():
    models = load_zoo("timm").models
    shards = [select(models, shard=(i, 3)) for i in (1, 2, 3)]
    assert sorted(m.name for s in shards for m in s) == sorted(m.name for m in models)
    assert {len(s) for s in shards} == {6}


def test_ledger_skips_a_torn_line_and_resumes_by_fingerprint(tmp_path):
    models = load_zoo(str(_zoo(tmp_path, GOOD))).models
    ledger = Ledger(tmp_path)
    ledger.append({"model": models[0].name, "fingerprint": models[0].fingerprint, "verdict": "pass"})
    ledger.append({"model": models[1].name, "fingerprint": models[1].fingerprint, "verdict": "fail"})
    with open(ledger.path, "a") as f:
        f.write('{"model": "bert", "verdict": "pa')  # a kill in the middle of a write
    ledger.append({"model": models[2].name, "fingerprint": "stale", "verdict": "pass"})
    assert [r["model"] for r in ledger.rows()] == ["tiny.lin", "resnet18", "bert"] and ledger.torn == 1
    todo, done = pending(list(models), ledger.latest(), retry_failed=False)
    assert [m.name for m in todo] == ["bert"] and [m.name for m in done] == ["tiny.lin", "resnet18"]
    todo, _ = pending(list(models), ledger.latest(), retry_failed=True)
    assert [m.name for m in todo] == ["resnet18", "bert"]


def _row(name: str, verdict: str, code: int, tags=(), family=None) -> dict:
    return {"model": name, "verdict": verdict, "exit_code": code, "tags": list(tags), "family": family or name,
            "failure_class": None if verdict == "pass" else "x", "seconds": 1.0, "peak_mb": 10.0}


def test_verdict_first_failure_in_zoo_order_unless_allowed():
    rows = [_row("a", "pass", 0), _row("b", "fail", 4, tags=["flaky"]), _row("c", "fail", 3, family="vit")]
    assert judge(ZooReport("z", "f", "out", rows)).exit_code == 4
    assert judge(ZooReport("z", "f", "out", rows, allow_fail=("flaky",))).exit_code == 3
    both = judge(ZooReport("z", "f", "out", rows, allow_fail=("flaky", "vit")))
    assert both.passed and both.exit_code == 0
    assert judge(ZooReport("z", "f", "out", rows, allow_fail=("b", "c"))).passed  # a model's name is a tag too
    report = ZooReport("z", "f", "out", rows).to_dict()
    assert report["pass_rate"] == round(1 / 3, 4) and report["verdict"] == "fail"
    assert report["by_family"]["vit"] == {"models": 1, "passed": 0, "pass_rate": 0.0}


def _grandchild(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


def _child(pid_file: str) -> None:
    from onnxgate.worker import run_in_worker

    run_in_worker(_grandchild, pid_file)


def test_a_workers_own_worker_dies_with_it(tmp_path):
    import torch  # noqa: F401 - imported before the fork, as the zoo does (the workers start at once)

    from onnxgate.worker import TIMEOUT, run_in_worker

    pid_file = tmp_path / "grandchild.pid"
    outcome = run_in_worker(_child, str(pid_file), timeout_s=3)
    assert outcome.status == TIMEOUT
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the worker's own worker {pid} outlived it")


def test_ray_declarations_are_capped_at_the_largest_live_node():
    from onnxgate.zoo.executors import _largest_node

    class FakeRay:  # the shape of ray.nodes(): a task declaring more than any node has would wait forever
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 8e9}},
                    {"Alive": False, "Resources": {"CPU": 64.0, "memory": 1e12}},
                    {"Alive": True, "Resources": {"CPU": 2.0, "memory": 16e9}}]

    assert _largest_node(FakeRay) == {"CPU": 4.0, "memory": 16e9}


def test_the_ledger_summary_of_a_report_names_the_winning_rung_and_its_repair():
    from onnxgate.zoo.task import failure_class, summarize

    attempts = [{"strategy": "dynamo", "opset": 23, "outcome": "export_error", "peak_mb": 10.0,
                 "diagnosis": {"id": "unsupported_aten_op", "cause": "c", "fix": "f"}},
                {"strategy": "dynamo", "opset": 23, "outcome": "ok", "variant": "strict", "peak_mb": 99.0,
                 "repairs": {"adaptive_pool": ["head.pool"]}}]
    report = {"verdict": "pass", "exit_code": 0, "stages": {
        "export": {"ok": True, "winner": 1, "attempts": attempts},
        "verify": {"domains": {"B": {"summary": "B: 1..4", "narrower": False}}}}}
    row = summarize(report)
    assert (row["stage"], row["strategy"], row["variant"], row["repair"], row["fallbacks"]) == (
        "verify", "dynamo", "strict", "adaptive_pool", 1)
    assert row["attempt_peak_mb"] == 99.0 and row["domain"] == {"B": "B: 1..4"}
    mix = ZooReport("z", "f", "out", [{"model": "m", **row}]).strategy_mix()
    assert mix == {"dynamo (strict) opset 23 + adaptive_pool": 1}
    failed = summarize({"verdict": "fail", "exit_code": 3, "reason": "every export attempt failed", "stages": {
        "export": {"ok": False, "winner": None, "attempts": attempts[:1]}}})
    assert failed["stage"] == "export" and failed["diagnosis"]["id"] == "unsupported_aten_op"
    assert failure_class({**failed, "status": "ok"}) == "export failed: unsupported_aten_op"


# ---- a model's whole process tree (security issue 22, findings 3 and 4) ---------------------------------------------

TREE_MODELS = '''
import os, subprocess, sys, time
import torch

HOG = "import time; x = b'\\\\1' * (500 * 2**20); time.sleep(60)"
DAEMON = ("import os, sys, time\\n"
          "if os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n"
          "        open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)\\n    os._exit(0)\\n")


def hog():  # its build starts another Python that touches 500 MB in a session of its own
    child = subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True)
    open(os.path.join(os.path.dirname(__file__), "hog.pid"), "w").write(str(child.pid))
    child.wait()


def daemon():  # its build leaves a daemon (fork, setsid, fork) behind and fails
    subprocess.run([sys.executable, "-c", DAEMON, os.path.join(os.path.dirname(__file__), "daemon.pid")], check=True)
    while not os.path.getsize(os.path.join(os.path.dirname(__file__), "daemon.pid")):
        time.sleep(0.05)
    raise RuntimeError("no model here")
'''


def _gone(pid: int, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="the cap needs Linux /proc")
def test_a_subprocess_over_the_cap_is_the_models_memory_outcome_and_no_grandchild_survives(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "tree.py").write_text(TREE_MODELS)
    (tmp_path / "nets" / "daemon.pid").write_text("")
    zoo = _zoo(tmp_path, '[zoo]\nname = "tree"\ntimeout_s = 20\n[defaults]\ninput = ["x:2x8:float32"]\n'
                         '[[model]]\nref = "nets/tree.py:hog"\nmemory_mb = 250\n[[model]]\nref = "nets/tree.py:daemon"\n')
    with redirect_stdout(io.StringIO()):
        main(["zoo", str(zoo), "-o", str(tmp_path / "out"), "--jobs", "1"])
    rows = {row["model"]: row for row in map(json.loads, (tmp_path / "out" / "ledger.jsonl").read_text().splitlines())}
    hog, daemon = rows["tree.hog"], rows["tree.daemon"]
    assert hog["status"] == "memory" and hog["failure_class"] == "memory cap", hog
    assert "memory cap of 250 MB" in hog["reason"] and hog["peak_mb"] >= 250, hog
    assert daemon["verdict"] == "fail" and "no model here" in daemon["reason"], daemon
    for name in ("hog.pid", "daemon.pid"):
        pid = int((tmp_path / "nets" / name).read_text())
        assert _gone(pid), f"{name[:-4]}'s process {pid} outlived its model's worker"


# ---- finding 7: a hostile zoo file is exit 2, not a traceback ---------------------------------------------------------

def test_a_zoo_file_nested_5000_deep_is_exit_2(tmp_path):
    deep = GOOD.replace('tags = ["a"]', "tags = " + "[" * 5000 + "]" * 5000)
    assert "nests arrays or tables too deeply" in _error(tmp_path, deep)["error"]["message"]


@pytest.mark.parametrize("change, key", [
    (("[zoo]", "[zoo]\nmemory_mb = 99999999999"), "key 'zoo.memory_mb'"),
    (('tags = ["a"]', 'tags = ["a"]\nmemory_mb = inf'), "model 'tiny.lin' (#1): key 'memory_mb'"),
])
def test_a_memory_cap_above_the_machines_memory_is_exit_2(tmp_path, change, key):
    from onnxgate.worker import total_memory_mb

    doc = _error(tmp_path, GOOD.replace(*change))
    assert key in doc["error"]["message"] and f"this machine's {total_memory_mb()} MB" in doc["error"]["message"], doc
