"""Attack probes for the security issue, run against a source tree as a user would run the CLI.

    python benchmarks/security_probe.py [--src PATH_TO_SRC] [--append-results]

Each probe is a file someone else wrote (a .pt2 with a pickled payload, an ONNX file naming code as its source, a
model calling sys.exit, a model that segfaults, a bundle with a symlink or a tar bomb), run through the commands
that would meet it, each in a fresh process. A payload that runs creates a marker file. Outcomes per probe family:
tried / clean error (documented non-zero exit, no traceback) / traceback / crash (killed by a signal) / wrongly
exit 0 / payload ran. `--src` points at another checkout's src/ to measure an older version the same way (the
before/after table of the issue note).

Second round (issue 22) adds: .pt2 archives whose zip structure disagrees with itself (a duplicated entry name with
the payload first, where Python's zipfile reads the last copy and torch's reader the first; junk before the archive;
an entry outside the archive's layout), TorchScript archives that write a file through `torch.from_file` at load
or in forward, `kill -9` of the console script at random points (any onnxgate process still alive 2 s later, or an
output that appears after the kill, is an "orphan"), a zoo model whose build starts a process over the zoo's memory
cap (and a `setsid` grandchild), NaN/Inf requests to `onnxgate serve` (a response that is not strict JSON, or a 200
for a non-finite input, is "wrongly exit 0"), and a bundle whose manifest raises its own tolerances to 1e30.

    python benchmarks/security_probe.py --only kill,serve     # a subset of families (substring of the family name)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' builders: one way to make each payload and model

from helpers import Payload, tiny_linear  # noqa: E402


def make_pt2_cases(work: Path, marker: Path) -> dict[str, Path]:
    import torch

    good = work / "good.pt2"
    torch.export.save(torch.export.export(tiny_linear(), (torch.randn(2, 4),)), good)
    payload = pickle.dumps(Payload(marker))

    def rewrite(name: str, edit) -> Path:
        out = work / name
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                data = edit(info.filename, zin.read(info.filename))
                if data is not None:
                    zout.writestr(info.filename, data)
        return out

    def pickled_weight(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return payload if name.endswith("data/weights/weight_0") else data

    cases = {"pickled weight": rewrite("weight.pt2", pickled_weight),
             "pickled sample inputs": rewrite("sample.pt2", lambda n, d: payload if "sample_inputs" in n else d)}
    fake = work / "fake.pt2"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("fake/archive_format", "pt2")
        archive.writestr("version", "8.0")
        archive.writestr("serialized_exported_program.json", "{}")
        archive.writestr("serialized_state_dict.pt", payload)
    cases["fake .pt2"] = fake
    renamed = work / "renamed.pt"
    shutil.copy(cases["pickled weight"], renamed)
    cases[".pt2 renamed .pt"] = renamed
    return cases


def tiny_onnx(path: Path, *, source: str | None = None, nan: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [float("nan") if nan else 1.5] * 4)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if source:
        helper.set_model_props(model, {"onnxgate.source": source, "onnxgate.inputs": json.dumps(["x:2x4:float32"])})
    onnx.save(model, path)
    return path


def make_bundle(work: Path) -> Path:
    """A real bundle of the tiny model, written by the current onnxgate (the cases then damage copies of it)."""
    import numpy as np

    model = tiny_onnx(work / "b.onnx")
    np.savez(work / "in.npz", x=np.ones((2, 4), np.float32))
    np.savez(work / "out.npz", y=np.full((2, 4), 1.5, np.float32))
    out = work / "bundle"
    subprocess.run([sys.executable, "-m", "onnxgate.cli.main", "bundle", str(model), "-o", str(out), "--golden",
                    str(work / "in.npz"), "--reference", str(work / "out.npz")], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    return out


def bundle_cases(work: Path, bundle: Path) -> dict[str, Path]:
    cases = {}
    link = Path(shutil.copytree(bundle, work / "b_symlink"))
    manifest = json.loads((link / "manifest.json").read_text())
    os.symlink("/etc/passwd", link / "notes.txt")
    manifest["files"]["notes.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (link / "manifest.json").write_text(json.dumps(manifest))
    cases["listed symlink to /etc/passwd"] = link
    out = Path(shutil.copytree(bundle, work / "b_model_link"))
    target = work / "elsewhere.onnx"
    shutil.move(out / "model.onnx", target)
    os.symlink(target, out / "model.onnx")
    cases["model.onnx symlink out of the bundle"] = out
    files = Path(shutil.copytree(bundle, work / "b_files_list"))
    manifest = json.loads((files / "manifest.json").read_text())
    manifest["files"] = list(manifest["files"])
    (files / "manifest.json").write_text(json.dumps(manifest))
    cases["manifest files as a list"] = files
    dotdot = work / "dotdot.tar.gz"
    with tarfile.open(dotdot, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
        info = tarfile.TarInfo("bundle/../../escaped.txt")
        data = b"x"
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    cases["tar member with .."] = dotdot
    bomb = work / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        import io

        for i in range(12000):
            info = tarfile.TarInfo(f"bundle/f{i}")
            tar.addfile(info, io.BytesIO(b""))
    cases["tar with 12,000 members"] = bomb
    return cases


EXITING = {
    "sys.exit(0) in __init__": "import sys, torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                               "        super().__init__()\n        sys.exit(0)\n",
    "sys.exit(0) in forward": "import sys, torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n"
                              "        sys.exit(0)\ndef example():\n    return Net(), (torch.randn(2, 4),)\n",
    "segfault in forward": "import ctypes, torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n"
                           "        ctypes.string_at(0)\n        return x\ndef example():\n"
                           "    return Net(), (torch.randn(2, 4),)\n",
}


def run(argv: list[str], src: Path, cwd: Path, timeout: float = 120) -> tuple[int | None, str]:
    """`onnxgate ARGV` as the console script runs it (entry() where the tree has one, else main())."""
    code = ("import sys\nfrom onnxgate.cli import main as m\n"
            "sys.exit(m.entry() if hasattr(m, 'entry') else m.main())")
    try:
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, env={**os.environ, "PYTHONPATH": str(src)})
    except subprocess.TimeoutExpired:
        return None, "timeout"
    return proc.returncode, proc.stderr


def classify(code: int | None, err: str, marker: Path) -> str:
    if marker.exists():
        marker.unlink()
        return "payload ran"
    if code is None:
        return "hang"
    if code < 0:
        return "crash"
    if "Traceback" in err:
        return "traceback"
    return "wrongly exit 0" if code == 0 else "clean error"


def probes(work: Path, marker: Path) -> list[tuple[str, str, list[str]]]:
    out = []
    onnx_file = tiny_onnx(work / "m.onnx")
    for label, path in make_pt2_cases(work, marker).items():
        for command, argv in {
            "export": ["export", str(path), "-o", str(work / "o.onnx")],
            "bundle": ["bundle", str(path), "-o", str(work / "ob")],
            "run": ["run", str(path), "-o", str(work / "or"), "--bench", "none"],
            "bench": ["bench", str(path), "--quick"],
            "verify --against": ["verify", str(onnx_file), "--against", str(path)],
            "verify (recorded)": ["verify", str(tiny_onnx(work / f"rec_{path.stem}.onnx", source=str(path)))],
        }.items():
            out.append((f"pt2 payload via {command}", label, argv))
    (work / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    for i, source in enumerate(("sys:exit", "os:abort", "http.server:test", f"{work / 'evil.py'}:Net")):
        path = tiny_onnx(work / f"s{i}.onnx", source=source, nan=True)
        out.append(("recorded source", source, ["verify", str(path)]))
    for label, text in EXITING.items():
        path = work / f"m_{abs(hash(label))}.py"
        path.write_text(text)
        ref = f"{path}:{'Net' if '__init__' in label else 'example'}"
        out.append(("model ends the process", f"{label} (export)", ["export", ref, "-o", str(work / "x.onnx")]))
        out.append(("model ends the process", f"{label} (run)", ["run", ref, "-o", str(work / "xr"), "--bench",
                                                                   "none"]))
    for label, path in bundle_cases(work, make_bundle(work)).items():
        out.append(("bundle containment", label, ["verify", str(path)]))
    return out



def duplicate_entry_pt2(good: Path, dynamic: Path, work: Path, marker: Path) -> dict[str, Path]:
    """Archives that mean one thing to Python's zipfile and another to torch's reader (miniz), and program JSON that
    makes torch run code: the builders of tests/test_security_pt2.py (one way to build each variant), 17 of them."""
    from test_security_pt2 import json_variants, variants

    return {**variants(good, work, marker), **json_variants(good, dynamic, work, marker)}


def torchscript_cases(work: Path, target: Path) -> dict[str, Path]:
    """TorchScript archives that create a file with chosen bytes through torch.from_file (no Python runs)."""
    import torch

    class AtForward(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x):
            t = torch.from_file(self.path, True, 16, dtype=torch.uint8)
            t.fill_(65)
            return x * 2 + t[0].float() * 0

    class AtLoad(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path
            self.t = torch.zeros(16, dtype=torch.uint8)

        def forward(self, x):
            return x + 1

        @torch.jit.export
        def __getstate__(self):
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]):
            self.path = state[0]
            self.training = state[1]
            self.t = torch.from_file(self.path, True, 16, dtype=torch.uint8).fill_(66)

    cases = {}
    for label, cls in (("torch.from_file in forward", AtForward), ("torch.from_file at load", AtLoad)):
        path = work / f"ts_{cls.__name__}.pt"
        torch.jit.script(cls(str(target))).save(str(path))
        cases[label] = path
    target.unlink(missing_ok=True)
    return cases


SLOW_MODEL = """import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    def forward(self, x):
        return self.body(x)
def example():
    return Net().eval(), (torch.randn(2, 64),)
"""


def onnxgate_processes(needle: str) -> list[int]:
    """PIDs whose command line mentions NEEDLE (a unique output path), the probe's own excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_probe(argv: list[str], output: Path, delay: float, src: Path, cwd: Path) -> str:
    """Start `onnxgate ARGV`, SIGKILL the console script after DELAY s; anything alive 2 s later, or an output that
    appears after the kill, is an orphan."""
    import signal
    import time

    code = ("import sys\nfrom onnxgate.cli import main as m\n"
            "sys.exit(m.entry() if hasattr(m, 'entry') else m.main())")
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(src)})
    time.sleep(delay)
    if proc.poll() is not None:
        return "finished before the kill"
    existed = output.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    alive = onnxgate_processes(str(output))
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if alive:
        return "orphan"
    time.sleep(3.0)
    return "orphan" if output.exists() and not existed else "clean error"


def kill_cases(work: Path) -> list[tuple[str, list[str], Path, float]]:
    model = work / "slow_model.py"
    model.write_text(SLOW_MODEL)
    cases = []
    for command, delays in (("export", (2.5, 4.5, 6.5)), ("bundle", (3.0, 6.0)), ("run", (3.0, 6.0, 9.0))):
        for delay in delays:
            out = work / f"kill_{command}_{str(delay).replace('.', '_')}{'.onnx' if command == 'export' else ''}"
            argv = [command, f"{model}:example", "-o", str(out)] + (["--bench", "none"] if command == "run" else [])
            cases.append((f"kill -9 {command} at {delay} s", argv, out, delay))
    return cases


ZOO_MODEL = """import subprocess, sys, torch
def hog():
    subprocess.run([sys.executable, "-c", "b = b'x' * (3 * 2**30); import time; time.sleep(3)"], check=True)
    return torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),)
def setsid_hog():
    subprocess.Popen([sys.executable, "-c", "b = b'x' * (3 * 2**30); import time; time.sleep(30)"],
                     start_new_session=True)
    import time; time.sleep(8)
    return torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),)
def setsid_sleeper():
    subprocess.Popen(["sleep", "4242"], start_new_session=True)
    return torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),)
"""


def zoo_probe(work: Path, factory: str, src: Path) -> str:
    """A zoo model whose build starts a process: over the 1500 MB cap it must be that model's memory-cap outcome;
    a `setsid` grandchild must not outlive the zoo."""
    (work / "zoo_models.py").write_text(ZOO_MODEL)
    toml = work / f"zoo_{factory}.toml"
    toml.write_text(f'[zoo]\nname = "probe"\ntimeout_s = 120\nmemory_mb = 1500\n\n[[model]]\n'
                    f'ref = "zoo_models.py:{factory}"\nname = "{factory}"\nstages = ["export"]\n')
    out = work / f"zoo_out_{factory}"
    code, err = run(["zoo", str(toml), "-o", str(out), "--jobs", "1"], src, work, timeout=300)
    survivors = [pid for pid in onnxgate_processes("4242" if factory == "setsid_sleeper" else "2**30")]
    for pid in survivors:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if survivors:
        return "orphan"
    if factory == "setsid_sleeper":
        return classify(code, err, work / "nothing") if code != 0 else "clean error"
    ledger = out / "ledger.jsonl"
    text = ledger.read_text() if ledger.exists() else ""
    if code == 0 or '"status": "passed"' in text:
        return "wrongly exit 0"
    if "Traceback" in err:
        return "traceback"
    return "clean error" if '"status": "memory"' in text else "not stopped by the cap"


def serve_probes(work: Path, bundle: Path, src: Path) -> list[tuple[str, str]]:
    """Hostile tensors to a running `onnxgate serve`: every answer must be strict JSON, non-finite inputs a 4xx."""
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys\nfrom onnxgate.cli import main as m\n"
            "sys.exit(m.entry() if hasattr(m, 'entry') else m.main())")
    server = subprocess.Popen([sys.executable, "-c", code, "serve", str(bundle), "--port", str(port),
                               "--model-name", "probe"], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(src)})
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        model = "probe"

        def strict(raw: bytes):
            def refuse(token):
                raise ValueError(f"non-JSON token {token}")
            return json.loads(raw, parse_constant=refuse)

        bodies = {
            "JSON 1e999 (inf)": b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1e999,1,1,1,1,1,1,1]}]}',
            "JSON 1e39 (inf in float32)": b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32",'
                                          b'"data":[1e39,1,1,1,1,1,1,1]}]}',
            "JSON NaN literal": b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[NaN,1,1,1,1,1,1,1]}]}',
        }
        import struct

        raw = struct.pack("<8f", float("nan"), *([1.0] * 7))
        header = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        binary = (header + raw, {"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
        cases = {label: (body, {"Content-Type": "application/json"}) for label, body in bodies.items()}
        cases["binary tensor with NaN"] = binary
        for label, (body, headers) in cases.items():
            request = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=body, headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=10)
                status, payload = response.status, response.read()
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
            except Exception:
                results.append((label, "crash"))
                continue
            try:
                strict(payload)
            except ValueError:
                results.append((label, "wrongly exit 0"))
                continue
            results.append((label, "wrongly exit 0" if status < 400 else "traceback" if status >= 500
                            else "clean error"))
        try:
            urllib.request.urlopen(base + "/v2/health/live", timeout=5)
        except Exception:
            results.append(("server alive afterwards", "crash"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


def tampered_tolerance_bundle(work: Path, bundle: Path) -> Path:
    """A bundle whose manifest vouches for itself: tolerances 1e30, golden outputs replaced, checksums recomputed."""
    import hashlib

    import numpy as np

    out = Path(shutil.copytree(bundle, work / "b_tolerance"))
    manifest = json.loads((out / "manifest.json").read_text())

    def raise_tolerances(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("rtol", "atol") and isinstance(value, (int, float)):
                    node[key] = 1e30
                else:
                    raise_tolerances(value)
        elif isinstance(node, list):
            for value in node:
                raise_tolerances(value)

    raise_tolerances(manifest)
    for npz in out.rglob("*.npz"):
        if "out" in npz.name or "reference" in npz.name or "golden_out" in npz.name:
            with np.load(npz) as data:
                arrays = {key: np.full_like(data[key], 1234.5) for key in data.files}
            np.savez(npz, **arrays)
    files = manifest.get("files", {})
    if isinstance(files, dict):
        for rel, entry in files.items():
            path = out / rel
            if path.is_file() and isinstance(entry, dict):
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["bytes"] = path.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def second_round(work: Path, marker: Path, src: Path, only: list[str] | None):
    """Issue 22's families: (family, label, outcome) rows, each probe run as a user would."""
    def wanted(family: str) -> bool:
        return not only or any(part in family for part in only)

    onnx_file = tiny_onnx(work / "m2.onnx")
    if wanted("pt2 zip structure"):
        import torch

        good = work / "good2.pt2"
        torch.export.save(torch.export.export(tiny_linear(), (torch.randn(2, 4),)), good)
        dynamic = work / "dynamic2.pt2"
        torch.export.save(torch.export.export(tiny_linear(), (torch.randn(4, 4),),
                                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}),
                          dynamic)
        for label, path in duplicate_entry_pt2(good, dynamic, work, marker).items():
            for command, argv in {
                "export": ["export", str(path), "-o", str(work / "o.onnx")],
                "bundle": ["bundle", str(path), "-o", str(work / "ob")],
                "run": ["run", str(path), "-o", str(work / "or"), "--bench", "none"],
                "verify --against": ["verify", str(onnx_file), "--against", str(path)],
            }.items():
                code, err = run(argv, src, work)
                yield "pt2 zip structure", f"{label} ({command})", classify(code, err, marker)
        code, err = run(["export", str(good), "-o", str(work / "genuine.onnx")], src, work)
        yield "genuine .pt2 exports", "torch.export.save of Linear(4, 3)", \
            "exported" if code == 0 and (work / "genuine.onnx").exists() else "wrongly refused"
    if wanted("torchscript"):
        target = work / "TS_WROTE_THIS"
        for label, path in torchscript_cases(work, target).items():
            for command, argv in {
                "export": ["export", str(path), "-o", str(work / "o.onnx")],
                "run": ["run", str(path), "-o", str(work / "or"), "--bench", "none"],
                "bundle": ["bundle", str(path), "-o", str(work / "ob")],
            }.items():
                code, err = run(argv + ["--input", "x:2x4:float32"], src, work)
                outcome = classify(code, err, target)
                yield "torchscript without consent", f"{label} ({command})", outcome
    if wanted("kill"):
        for label, argv, out, delay in kill_cases(work):
            yield "kill -9 of the console script", label, kill_probe(argv, out, delay, src, work)
    if wanted("zoo"):
        for factory in ("hog", "setsid_hog", "setsid_sleeper"):
            yield "zoo process tree", factory, zoo_probe(work, factory, src)
    if wanted("serve") or wanted("bundle claims"):
        bundle = make_bundle(work)
        if wanted("serve"):
            for label, outcome in serve_probes(work, bundle, src):
                yield "serve non-finite tensors", label, outcome
        if wanted("bundle claims"):
            tampered = tampered_tolerance_bundle(work, bundle)
            code, err = run(["verify", str(tampered)], src, work)
            yield "bundle claims", "tolerances 1e30 + golden replaced (verify)", classify(code, err, marker)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated substrings of family names to run")
    parser.add_argument("--round", choices=("1", "2", "all"), default="all",
                        help="1: the first round's families, 2: issue 22's, all: both")
    args = parser.parse_args()
    only = [part.strip() for part in args.only.split(",") if part.strip()] or None
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory(prefix="onnxgate-probe-") as tmp:
        work = Path(tmp)
        marker = work / "PWNED"
        for family, label, argv in (probes(work, marker) if args.round in ("1", "all") else []):
            if only and not any(part in family for part in only):
                continue
            for leftover in ("o.onnx", "ob", "or", "x.onnx", "xr"):
                shutil.rmtree(work / leftover, ignore_errors=True) if (work / leftover).is_dir() else \
                    (work / leftover).unlink(missing_ok=True)
            code, err = run(argv, args.src.resolve(), work, timeout=60 if "http.server" in label else 180)
            outcome = classify(code, err, marker)
            counts[family]["tried"] += 1
            counts[family][outcome] += 1
            print(f"{family:32} {label:42} exit {code}: {outcome}", flush=True)
        if args.round in ("2", "all"):
            for family, label, outcome in second_round(work, marker, args.src.resolve(), only):
                counts[family]["tried"] += 1
                counts[family][outcome] += 1
                print(f"{family:32} {label:48} {outcome}", flush=True)
    columns = ["tried", "clean error", "exported", "traceback", "crash", "hang", "wrongly exit 0", "payload ran",
               "orphan", "not stopped by the cap", "wrongly refused", "finished before the kill"]
    lines = ["| probe family | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {family} | " + " | ".join(str(c[col]) for col in columns) + " |" for family, c in counts.items()]
    table = "\n".join(lines)
    print(table)
    if args.append_results:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as fh:
            fh.write(f"\n## Security probes ({args.src})\n\n`python benchmarks/security_probe.py --src {args.src}`\n\n"
                     f"{table}\n")


if __name__ == "__main__":
    main()
