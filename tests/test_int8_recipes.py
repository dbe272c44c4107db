"""INT8 recipe search on real data: the digits CNN (trained on scikit-learn's real 8x8 digits), every candidate
recipe quantized, measured on the held-out split and timed beside FP32; the fastest within budget is returned, and
INT8 is shipped only when it beats FP32. Plus the node families a recipe keeps in float, on a graph built here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxgate
from onnxgate.errors import ExitCode
from onnxgate.examples.digits import digits_split, trained_digits_cnn
from onnxgate.outcome import judge
from onnxgate.spec import ExportConfig, parse_dim, parse_input
from onnxgate.transform.recipes import STATIC_RECIPES, Recipe, search_int8, skip_nodes


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    module, _ = trained_digits_cnn()
    path = folder / "digits.onnx"
    onnxgate.export(module, path, config=ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),),
                                                      dims=(parse_dim("B=1..512@4"),)))
    return path, digits_split()


def test_search_returns_the_fastest_recipe_within_budget_and_records_every_candidate(digits, tmp_path):
    path, (x_train, _, x_test, y_test) = digits
    out = tmp_path / "int8.onnx"
    search = search_int8(path, out, calib=[{"x": x_train[:200]}], eval_data=[{"x": x_test}], labels=y_test,
                         max_accuracy_drop=1.0, seconds=0.6)
    assert [c.recipe.name for c in search.candidates] == [r.name for r in STATIC_RECIPES]
    assert search.mode == "static" and search.fp32_accuracy > 0.9 and search.fp32_p50_ms > 0
    within = [c for c in search.candidates if c.status == "within_budget"]
    assert search.best is not None and search.best in within and judge(search).passed
    # the best is the fastest candidate within budget, and it held the budget as written and as deployed
    assert search.best.p50_ms == min(c.p50_ms for c in within)
    assert {e.level for e in search.best.evaluations} == {"as written", "as deployed"}
    assert all(e.drop <= 1.0 for e in search.best.evaluations)
    for c in search.candidates:
        assert c.status in ("within_budget", "over_budget", "failed")
        assert c.error is None or c.status == "failed"
        assert c.status == "failed" or c.evaluations and c.quantized_ops > 0
        assert c.status != "within_budget" or c.p50_ms is not None  # timed beside FP32
        assert c.status != "failed" or c.p50_ms is None
    skipping = next(c for c in search.candidates if c.recipe.skip)
    assert skipping.float_nodes == []  # the digits CNN has no depthwise conv, SE block or hard-swish
    # INT8 is shipped exactly when it beats FP32, and only then written, with its recipe and contract
    if search.shipped == "int8":
        assert search.best.speedup >= 1.05 and search.output == str(out)
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["onnxgate.quantization.recipe"])["name"] == search.best.recipe.name
        assert "onnxgate.contract" in meta or any(k.startswith("onnxgate.contract") for k in meta)
    else:
        assert search.best.speedup < 1.05 and search.output is None and not out.exists()
        assert search.decision.startswith("ship FP32") and search.best.recipe.name in search.decision
    doc = search.to_dict()
    assert doc["best"] == search.best.recipe.name and len(doc["candidates"]) == len(STATIC_RECIPES)


def test_no_recipe_within_budget_is_exit_5_and_writes_nothing(digits, tmp_path):
    path, (x_train, _, x_test, _) = digits
    out = tmp_path / "int8.onnx"
    recipes = [Recipe("qdq-per-channel"), Recipe("qdq-bad-format", fmt="qdq", op_types=("NoSuchOp",))]
    search = search_int8(path, out, calib=[{"x": x_train[:100]}], eval_data=[{"x": x_test[:50]}], max_error=0.0,
                         recipes=recipes)
    assert search.best is None and search.output is None and not out.exists()
    assert [c.status for c in search.candidates] == ["over_budget", "over_budget"]
    assert search.candidates[1].miss == "nothing was quantized"
    outcome = judge(search)
    assert outcome.exit_code == ExitCode.ACCURACY_BUDGET and "no INT8 recipe holds the budget" in outcome.reason


def test_unknown_recipe_settings_are_bad_input(digits, tmp_path):
    path, _ = digits
    with pytest.raises(onnxgate.OnnxgateError) as info:
        search_int8(path, tmp_path / "x.onnx", recipes=[Recipe("odd", fmt="qxx", skip=("attention",))])
    assert info.value.exit_code == ExitCode.BAD_INPUT and "format 'qxx'" in info.value.message


def _mobile_block() -> onnx.ModelProto:
    """conv -> depthwise conv -> HardSwish -> SE (GlobalAveragePool, conv, relu, conv, HardSigmoid, Mul) ->
    x * HardSigmoid(x): one of each family a recipe may keep in float."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv"),
             helper.make_node("Conv", ["a", "wdw"], ["b"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["b"], ["c"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="se_pool"),
             helper.make_node("Conv", ["p", "w1"], ["q"], name="se_fc1"),
             helper.make_node("Relu", ["q"], ["r"], name="se_relu"),
             helper.make_node("Conv", ["r", "w2"], ["s"], name="se_fc2"),
             helper.make_node("HardSigmoid", ["s"], ["g"], name="se_gate"),
             helper.make_node("Mul", ["c", "g"], ["d"], name="se_scale"),
             helper.make_node("HardSigmoid", ["d"], ["h"], name="hsig"),
             helper.make_node("Mul", ["d", "h"], ["y"], name="hswish_mul")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [w("w0", 8, 3, 1, 1), w("wdw", 8, 1, 3, 3), w("w1", 4, 8, 1, 1), w("w2", 8, 4, 1, 1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_skip_families_name_depthwise_convs_se_blocks_and_hard_swish():
    found = skip_nodes(_mobile_block(), ("depthwise", "se", "hardswish"))
    assert found["depthwise"] == ["dw"]
    assert found["se"] == sorted(["se_pool", "se_fc1", "se_relu", "se_fc2", "se_gate", "se_scale"])
    assert found["hardswish"] == sorted(["hswish", "se_gate", "hsig", "hswish_mul"])
    assert skip_nodes(_mobile_block(), ("depthwise",)) == {"depthwise": ["dw"]}
