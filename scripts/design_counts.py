"""Issue 24's before/after counts over a checkout's src/onnxgate: `.venv/bin/python scripts/design_counts.py CHECKOUT`
(files constructing Tolerance, files calling a comparer, files spelling the claim's metadata/manifest keys, typer
options, function-level internal imports, import circles among module-level imports, lines per folder)."""
import ast, re, sys
from collections import defaultdict
from pathlib import Path

root = Path(sys.argv[1]) / "src" / "onnxgate"
files = sorted(root.rglob("*.py"))
tol, cmp_, dims, mkeys, typer_opts, fl_imp, all_imp = set(), set(), set(), set(), 0, 0, 0
lines = defaultdict(int)
graph = defaultdict(set)
CMP = re.compile(r"^(compare_outputs|allclose|assert_allclose|isclose|assert_array_almost_equal)$")

def modname(p):
    rel = p.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__": parts = parts[:-1]
    return ".".join(parts)

def resolve(mod, node, is_pkg):
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg: base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))

mods = {modname(p) for p in files}
for p in files:
    src = p.read_text(encoding="utf-8")
    rel = p.relative_to(root)
    lines[rel.parts[0] if len(rel.parts) > 1 else "(top)"] += src.count("\n")
    tree = ast.parse(src)
    mod, is_pkg = modname(p), p.name == "__init__.py"
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(x) for f in funcs for x in ast.walk(f) if x is not f}
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name == "Tolerance": tol.add(str(rel))
            if CMP.match(name): cmp_.add(str(rel))
            if name == "Option" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "typer": typer_opts += 1
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            if n.value in ("onnxgate.dims", "onnxgate.inputs"): dims.add(str(rel))
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value in ("domain", "tolerances"):
            mkeys.add(str(rel))
        if isinstance(n, ast.ImportFrom):
            target = resolve(mod, n, is_pkg)
            if target.split(".")[0] != "onnxgate": continue
            all_imp += 1
            if id(n) in inner: fl_imp += 1
            else:
                cands = [target + "." + a.name for a in n.names] + [target]
                for c in cands:
                    if c in mods and c != mod: graph[mod].add(c); break
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("onnxgate"):
                    all_imp += 1
                    if id(n) in inner: fl_imp += 1
                    elif a.name in mods: graph[mod].add(a.name)

# strongly connected components (Tarjan) over module-level imports
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in list(mods):
    if v not in index: strong(v)
print(f"files constructing Tolerance(: {len(tol)} {sorted(tol)}")
print(f"files calling a comparer (allclose/compare*): {len(cmp_)} {sorted(cmp_)}")
print(f"files spelling onnxgate.dims/onnxgate.inputs: {len(dims)} {sorted(dims)}")
print(f"files subscripting ['domain']/['tolerances']: {len(mkeys)} {sorted(mkeys)}")
print(f"typer.Option( calls: {typer_opts}")
print(f"function-level internal imports: {fl_imp} of {all_imp}")
print(f"import circles (module-level, SCCs > 1): {len(sccs)} {[sorted(c) for c in sccs]}")
print("lines per folder:", ", ".join(f"{k} {v}" for k, v in sorted(lines.items())))
print("total lines:", sum(lines.values()))
