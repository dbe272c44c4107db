"""Attack probes for the security issue, run against a source tree as a user would run the CLI.

    python benchmarks/security_probe.py [--src PATH_TO_SRC] [--append-results]

Each probe is a file someone else wrote (a .pt2 with a pickled payload, an ONNX file naming code as its source, a
model calling sys.exit, a model that segfaults, a bundle with a symlink or a tar bomb), run through the commands
that would meet it, each in a fresh process. A payload that runs creates a marker file. Outcomes per probe family:
tried / clean error (documented non-zero exit, no traceback) / traceback / crash (killed by a signal) / wrongly
exit 0 / payload ran. `--src` points at another checkout's src/ to measure an older version the same way (the
before/after table of the issue note).
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


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def make_pt2_cases(work: Path, marker: Path) -> dict[str, Path]:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    good = work / "good.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(2, 4),)), good)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory(prefix="onnxgate-probe-") as tmp:
        work = Path(tmp)
        marker = work / "PWNED"
        for family, label, argv in probes(work, marker):
            for leftover in ("o.onnx", "ob", "or", "x.onnx", "xr"):
                shutil.rmtree(work / leftover, ignore_errors=True) if (work / leftover).is_dir() else \
                    (work / leftover).unlink(missing_ok=True)
            code, err = run(argv, args.src.resolve(), work, timeout=60 if "http.server" in label else 180)
            outcome = classify(code, err, marker)
            counts[family]["tried"] += 1
            counts[family][outcome] += 1
            print(f"{family:32} {label:42} exit {code}: {outcome}", flush=True)
    columns = ["tried", "clean error", "traceback", "crash", "hang", "wrongly exit 0", "payload ran"]
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
