"""The rooms hold: a small public face that matches the modules, and a verification path that needs neither torch
nor onnx (a production box has numpy, onnxruntime and the CLI libraries only)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxgate

# The public entry points and where they are implemented: the list a user reads in the README and docs.
PUBLIC_FUNCTIONS = {
    "export": "onnxgate.export:export",
    "verify": "onnxgate.verify.api:verify",
    "inspect": "onnxgate.verify.structure:check_structure",
    "load_model": "onnxgate.sources.loader:load_model",
    "optimize": "onnxgate.transform.optimize:optimize",
    "quantize": "onnxgate.transform.quantize:quantize",
    "bench": "onnxgate.bench.api:bench",
    "bundle": "onnxgate.pipeline:bundle_from_ref",
    "verify_bundle": "onnxgate.bundle.verify:verify_bundle",
    "run": "onnxgate.pipeline:run",
}


def test_public_list_matches_the_package():
    public = {name for name in dir(onnxgate) if not name.startswith("_")}
    listed = set(onnxgate.__all__) - {"__version__"}
    assert listed <= public, f"listed but missing: {listed - public}"
    callables = {name for name in public if callable(getattr(onnxgate, name))}
    assert callables <= listed, f"public but not in __all__: {callables - listed}"
    assert set(PUBLIC_FUNCTIONS) <= listed


@pytest.mark.parametrize("name", list(PUBLIC_FUNCTIONS))
def test_each_entry_point_reaches_its_implementation(name):
    module_name, attr = PUBLIC_FUNCTIONS[name].split(":")
    implementation = getattr(importlib.import_module(module_name), attr)
    assert callable(getattr(onnxgate, name)), f"onnxgate.{name} was rebound to a module"
    assert inspect.getdoc(getattr(onnxgate, name))
    assert callable(implementation)


@pytest.mark.parametrize("package", ["onnxgate.export", "onnxgate.verify", "onnxgate.bench", "onnxgate.bundle",
                                     "onnxgate.transform", "onnxgate.runtimes", "onnxgate.sources"])
def test_each_subpackage_exports_what_it_lists(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


LIGHT_MODULES = ["onnxgate", "onnxgate.cli.main", "onnxgate.bundle.verify", "onnxgate.bundle.manifest",
                 "onnxgate.verify.compare", "onnxgate.runtimes.ort", "onnxgate.spec", "onnxgate.errors",
                 "onnxgate.verify.target_table", "onnxgate.verify.tolerance", "onnxgate.metadata", "onnxgate.npz"]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_neither_torch_nor_onnx(module):
    code = (f"import sys; import {module}; heavy = [m for m in ('torch', 'onnx', 'onnxgate.export.ladder') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loads {out.strip()}"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from onnxgate.bundle.write import write_bundle

    folder = tmp_path_factory.mktemp("light")
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    feed = {"x": rng.standard_normal((2, 4)).astype(np.float32)}
    outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    return write_bundle(folder / "bundle", model_path=path, golden_inputs=feed, reference_outputs={"y": outputs[0]},
                        source_ref="tests:matmul")


def test_a_bundle_verifies_with_torch_and_onnx_unimportable(tiny_bundle):
    """Like a production box: `import onnx` / `import torch` fail, and `onnxgate verify BUNDLE` still passes."""
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None\n"
            "from onnxgate.cli.main import main\n"
            f"sys.exit(main(['verify', {str(tiny_bundle)!r}, '--json']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


SRC = Path(onnxgate.__file__).parent


def _modules(package: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    return [f"onnxgate.{package}.{p.stem}" for p in sorted((SRC / package).glob("*.py"))
            if p.stem != "__init__" and p.stem not in skip]


@pytest.mark.parametrize("modules, banned", [
    # The production path: checking and running a bundle needs numpy and onnxruntime only.
    (_modules("bundle") + _modules("runtimes", skip=("torch_runner",)), ("torch", "onnx")),
    # Judging a model reads graphs (onnx) but imports PyTorch only when a reference has to run.
    (_modules("verify") + _modules("transform") + _modules("bench"), ("torch",)),
], ids=["bundle+runtimes: no torch, no onnx", "verify+transform+bench: no torch"])
def test_rooms_do_not_import_what_they_must_not(modules, banned):
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            f"print([b for b in {banned!r} if b in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {len(modules)} modules loads {out.strip()}"


@pytest.mark.slow
def test_a_bundle_verifies_in_a_fresh_venv_with_only_numpy_onnxruntime_and_the_cli(tiny_bundle, tmp_path):
    """The production box: a new venv holding numpy, onnxruntime and the CLI libraries (typer, rich, pydantic), and
    onnxgate itself without its dependencies: no onnx, no torch. `onnxgate verify BUNDLE` passes there."""
    from helpers import torchless_venv

    venv = torchless_venv(tmp_path)
    proc = subprocess.run([str(venv / "bin" / "onnxgate"), "verify", str(tiny_bundle), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["result"]["results"][0]["status"] == "pass"


# ------------------------------------------------------------------------------------------------ import circles

# Circles known today, each to be deleted from this list when it is broken (the test then insists on it):
KNOWN_CIRCLES: set[frozenset[str]] = set()  # none left (issue 24); a circle that must stay goes here, with why


def _internal_imports() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module -> [names imported]}: EVERY import of an onnxgate module, at module level, inside
    functions and under TYPE_CHECKING alike (an import inside a function still ties the two rooms together).
    ``from pkg import sub`` names the submodule; ``from pkg.mod import name`` names pkg.mod."""
    import ast

    paths = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str:
        while name not in paths:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            found: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                found = [(known(a.name), a.name) for a in node.names if a.name.split(".")[0] == "onnxgate"]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                if source.split(".")[0] == "onnxgate":
                    found = [(known(f"{source}.{a.name}"), a.name) for a in node.names]
            for target, name in found:
                if target != module:
                    edges.setdefault(target, []).append(name)
    return graph


def _circles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles_among_onnxgate_modules():
    graph = _internal_imports()
    assert len(graph) > 100 and graph["onnxgate.metadata"]["onnxgate.spec"], "the import graph was not read"
    circles = [c for c in _circles(graph) if frozenset(c) not in KNOWN_CIRCLES]
    described = ["\n".join([f"circle of {len(c)}:"] + [f"  {a} -> {b}: {', '.join(sorted(set(graph[a][b])))}"
                                                        for a in c for b in c if b in graph[a]]) for c in circles]
    assert not circles, "modules that import each other (move the shared names to the room they belong to):\n" + \
        "\n".join(described)
    broken = [sorted(k) for k in KNOWN_CIRCLES if list(sorted(k)) not in _circles(graph)]
    assert not broken, f"these circles are broken now: delete them from KNOWN_CIRCLES: {broken}"


def test_test_files_import_helpers_not_each_other():
    """Shared test code lives in tests/helpers.py: importing a test file also imports its fixtures and skips."""
    import ast

    tests = Path(__file__).parent
    names = {p.stem for p in tests.glob("test_*.py")}
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name}:{node.lineno} imports {m}" for m in imported if m in names]
    assert not offenders, "move what they share into tests/helpers.py:\n" + "\n".join(offenders)


# Array files are read by onnxgate/npz.py (bounded, no pickle). The readers left, each with why:
OTHER_ARRAY_READERS = {
    "runtimes/venv_worker.py": "run by path in an isolated venv, it imports nothing of onnxgate",
    "bench/_probe.py": "a start-up probe: importing onnxgate would be part of what it times",
    "verify/inputs.py": "to move onto npz.load_npz / npz.load_npy (issue 24; another engineer's file right now)",
    "safe_load.py": "its load_npz has no caller left: to delete (issue 24; another engineer's file right now)",
}


def test_array_files_are_read_by_npz_only():
    import re

    readers = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
               if re.search(r"\b(np|numpy)\.load\(", p.read_text(encoding="utf-8"))}
    assert readers <= set(OTHER_ARRAY_READERS), \
        f"read .npz/.npy through onnxgate.npz.load_npz / load_npy: {sorted(readers - set(OTHER_ARRAY_READERS))}"
    gone = set(OTHER_ARRAY_READERS) - readers
    assert not gone, f"these no longer read arrays themselves: delete them from OTHER_ARRAY_READERS: {sorted(gone)}"
