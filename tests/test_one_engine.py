"""One verification engine (issue 24 item 2): only ``verify/engine.py`` (and ``verify/tolerance.py``, where the
``Tolerance`` type and its arithmetic live) constructs a ``Tolerance`` or compares outputs; every other check is
a caller of the engine. An ``ast`` scan of ``src/onnxgate`` fails when a module outside the allowlist does either,
so a sixth engine cannot grow back unnoticed. Also: the engine's tolerance policy in its one order, and its record.
Pure Python and numpy: well under a second."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import onnxgate
from onnxgate.verify import engine
from onnxgate.verify.contract import Contract, PrecisionTolerance
from onnxgate.verify.engine import TolerancePolicy
from onnxgate.verify.tolerance import Tolerance, default_tolerance

SRC = Path(onnxgate.__file__).parent

#: Modules that may construct a ``Tolerance`` (path relative to src/onnxgate -> why).
TOLERANCE_MAKERS = {
    "verify/engine.py": "the engine: its policy decides every tolerance",
    "verify/tolerance.py": "the Tolerance type, its dtype defaults and its arithmetic (scale rules)",
    "claim.py": "the claim codec decodes the tolerances a manifest or metadata records (issue 24 item 1)",
    # (serve/contract.py's entry went when its tolerances moved into the claim codec, issue 24 item 1.)
    # (spec.py's entry went when VerifyConfig.default_tolerance became tolerance.user_tolerance, issue 24 item 2.)
}

#: Modules that may call the comparer (``compare_outputs``) or numpy's closeness checks (path -> why).
COMPARERS = {
    "verify/engine.py": "the engine",
    "verify/compare.py": "the comparer itself (it defines compare_outputs)",
    # (serve/contract.py's entry went when its batch probe became an engine caller, issue 24 item 2.)
    "serve/images.py": "np.allclose checks whether one output's rows sum to 1 (softmax or logits), not parity",
}

COMPARER_CALLS = {"compare_outputs", "allclose", "assert_allclose", "isclose", "assert_array_almost_equal"}


def scan(source: str) -> tuple[list[int], list[int]]:
    """Line numbers of ``Tolerance(...)`` constructions and of comparer calls in ``source`` (aliases followed:
    ``from .tolerance import Tolerance as T`` then ``T(...)`` counts)."""
    tree = ast.parse(source)
    tolerance_names, comparer_names = {"Tolerance"}, {"compare_outputs"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "Tolerance":
                    tolerance_names.add(alias.asname or alias.name)
                if alias.name == "compare_outputs" or (alias.name in COMPARER_CALLS
                                                       and (node.module or "").startswith("numpy")):
                    comparer_names.add(alias.asname or alias.name)
    made, compared = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        name = dotted.rsplit(".", 1)[-1]
        if name in tolerance_names:
            made.append(node.lineno)
        # numpy's closeness checks (math.isclose on two attribute values compares no outputs), and the comparer
        if name in comparer_names or (name in COMPARER_CALLS and dotted.split(".")[0] in ("np", "numpy")):
            compared.append(node.lineno)
    return made, compared


def _dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _offenders() -> tuple[list[str], list[str]]:
    makers, comparers = [], []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        made, compared = scan(path.read_text(encoding="utf-8"))
        makers += [f"{rel}:{line} constructs a Tolerance" for line in made if rel not in TOLERANCE_MAKERS]
        comparers += [f"{rel}:{line} compares outputs" for line in compared if rel not in COMPARERS]
    return makers, comparers


def test_the_scan_finds_a_construction_and_a_comparison():
    made, compared = scan("from x import Tolerance as T, compare_outputs as co\nimport numpy as np\n"
                          "t = T(1, 2)\nco({}, {})\nnp.testing.assert_allclose(a, b)\nok = np.allclose(a, b)\n"
                          "import math\nmath.isclose(1.0, 1.0)\n")
    assert made == [3] and compared == [4, 5, 6]


def test_only_the_engine_constructs_tolerances_or_compares_outputs():
    makers, comparers = _offenders()
    assert not makers, ("construct tolerances through verify/engine.py (TolerancePolicy, ceiling), "
                        "verify/tolerance.py, or decode recorded ones with onnxgate.claim or verify/tolerance.py:\n" + "\n".join(makers))
    assert not comparers, "compare outputs through verify/engine.py (compare, check):\n" + "\n".join(comparers)


def test_the_allowlists_shrink_when_a_move_lands():
    """An allowlisted module that no longer constructs (or compares) has its entry deleted: the list only shrinks."""
    stale = []
    for table, which in ((TOLERANCE_MAKERS, 0), (COMPARERS, 1)):
        for rel in table:
            if rel in ("verify/engine.py", "verify/tolerance.py", "verify/compare.py"):
                continue  # the engine's own rooms may delegate among themselves
            path = SRC / rel
            if not path.is_file() or not scan(path.read_text(encoding="utf-8"))[which]:
                stale.append(rel)
    assert not stale, f"these modules no longer need their allowlist entry: delete it: {stale}"


# ------------------------------------------------------------------------------------------------ the policy

REF = {"logits": np.array([[20.0, -3.0, 0.5]], np.float32), "index": np.array([2], np.int64)}


def test_policy_order_dtype_default_contract_reduced_override_recorded():
    assert TolerancePolicy().tolerance("logits", REF["logits"]) == default_tolerance("float32")
    assert TolerancePolicy().tolerance("index", REF["index"]) == Tolerance(0.0, 0.0)
    contract = Contract("int8", PrecisionTolerance(0.05, 1e-4, 0.05), {"logits": 40.0})
    # the contract's tolerance tied to the output's scale on the feed (20), not the one it recorded
    assert TolerancePolicy(contract=contract).tolerance("logits", REF["logits"]) == Tolerance(0.05, 1.0)
    # ... or to the scale given (a deploy target's traced outputs, a contract's recorded scales)
    assert TolerancePolicy(contract=contract, scales={"logits": 40.0}).tolerance("logits", None) == Tolerance(0.05, 2.0)
    bf16 = TolerancePolicy.for_runtime("bf16")
    assert bf16.tolerance("logits", REF["logits"]) == Tolerance(1e-2, 0.2)
    assert TolerancePolicy.for_runtime("fp32").rule is None  # FP32: what verify uses, the dtype default
    assert TolerancePolicy.for_runtime("bf16", contract=contract).rule == contract.tolerance  # the file's own wins
    user = Tolerance(1e-5, 1e-6)
    assert TolerancePolicy(contract=contract, override=user).tolerance("logits", REF["logits"]) == user
    recorded = TolerancePolicy(override=user, fixed={"logits": Tolerance(0.1, 0.1)})
    assert recorded.tolerance("logits", REF["logits"]) == Tolerance(0.1, 0.1)
    assert recorded.tolerance("index", REF["index"]) == user
    relative = TolerancePolicy(override=default_tolerance("float16"), relative=True)
    assert relative.tolerance("logits", REF["logits"]) == Tolerance(1e-2, 0.2)


def test_check_judges_every_feed_and_records_a_runner_failure_as_a_value():
    feeds = [{"x": np.ones((2, 3), np.float32)}, {"x": np.full((2, 3), 2, np.float32)}, {"x": np.zeros((1, 1))}]

    def reference(feed):
        return {"y": feed["x"] * 3.0}

    def candidate(feed):
        if feed["x"].shape == (1, 1):
            raise RuntimeError("kernel failed")
        return {"y": (feed["x"] * 3.0 + (feed["x"] > 1.5) * 0.5).astype(np.float16)}  # feed 1 off by 0.5

    record = engine.check(reference, candidate, feeds, reference_label="the reference")
    assert [f.passed for f in record.feeds] == [True, False, False]
    assert record.feeds[2].error == "kernel failed" and not record.passed
    assert record.max_abs_err == pytest.approx(0.5) and record.worst_output == "y"
    assert record.outputs[0]["y"].dtype == np.float16  # cast to float32 for the comparison only
    assert record.failures()[0].startswith("y on feed 1:") and record.failures()[1] == "feed 2: kernel failed"
    assert record.tolerance_used > 1.0
    loose = engine.check(reference, candidate, feeds[:2], TolerancePolicy(override=Tolerance(0.1, 1.0)))
    assert loose.passed and loose.tolerance == "rtol=1e-1 atol=1e0" and 0.4 < loose.tolerance_used <= 1.0
    json.dumps([c.to_dict() for c in loose.comparisons])


def test_the_ceiling_a_recorded_tolerance_is_held_to():
    assert engine.ceiling(np.array([-8.0, 2.0]), "float32", max_rtol=0.25, max_scale_fraction=0.25) == \
        Tolerance(0.25, 2.0)


# ------------------------------------------------------------------------------------------------ the runtimes


def test_run_with_intermediates_exposes_every_node_output_and_prunes():
    from helpers import mlp

    from onnxgate.runtimes.intermediates import run_with_intermediates
    from onnxgate.runtimes.ort import OrtRunner

    model = mlp()
    feed = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    values = run_with_intermediates(model, feed)
    produced = [o for n in model.graph.node for o in n.output]
    assert set(values) == set(produced) | {"y"} and len(model.graph.output) == 1  # the model itself untouched
    with OrtRunner(model, opt_level="disable") as runner:
        np.testing.assert_array_equal(values["y"], runner.run(feed)["y"])
    first = model.graph.node[0].output[0]
    assert set(run_with_intermediates(model, feed, [first], prune=True)) == {first}


def test_the_venv_worker_builds_its_session_with_the_factory_it_is_given(tmp_path):
    from helpers import mlp

    from onnxgate.runtimes.ort import open_session
    from onnxgate.runtimes.venv_worker import ModelRunError, run_model

    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString())
    built = []

    def factory(model_path):
        built.append(model_path)
        return open_session(model_path)

    outputs = run_model(str(path), {"x": np.ones((2, 16), np.float32)}, session_factory=factory)
    assert built == [str(path)] and outputs["y"].shape == (2, 10)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelRunError) as info:  # open_session's wrapper error is reported by onnxruntime's own
        run_model(str(broken), {}, session_factory=open_session)
    assert info.value.stage == "load" and not info.value.message.startswith("onnxruntime ")
