"""A transform produces a claim for its artifact, never inherits it unchecked (issue 24, items 1 and 3).

The model: ``y = x + (B >= 8)``, claiming ``B = 1..8`` (traced at 2). The faulty pass folds the shape-dependent
constant at the traced size (0.0), which is right at every size but 8 — the range's end, one of the claim's probe
sizes, and not the one off-trace size (3) transforms used to be verified at. Built with onnx.helper; milliseconds.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxgate.transform import PassResult, Verifier, run_passes
from onnxgate.transform.passes import _with_claim_of
from onnxgate.verify.shapes import first_off_trace_size, probe_sizes
from onnxgate.spec import Dim

INPUTS = '["x:Bx4:float32"]'
DIMS = {"B": {"name": "B", "min": 1, "max": 8, "example": 2}}


def shape_dependent_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("GreaterOrEqual", ["batch", "eight"], ["full"]),
             helper.make_node("Cast", ["full"], ["flag"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "flag"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(8, np.int64), "eight")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": INPUTS, "onnxgate.dims": json.dumps(DIMS),
                                   "onnxgate.source": "tests:shape-dependent"})
    return model


def fold_at_traced_size(model: onnx.ModelProto) -> PassResult:
    """A constant folder that evaluated ``B >= 8`` at the traced batch (2) and froze the answer."""
    keep = [n for n in model.graph.node if n.op_type == "Add"]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.initializer[:]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "flag"))
    return PassResult(model, True, "fold-at-trace")


fold_at_traced_size.name = "fold-at-trace"


def _specs_dims():
    from onnxgate.spec import parse_input

    return [parse_input("x:Bx4:float32")], {"B": Dim("B", 1, 8, 2)}


def test_the_fold_breaks_only_at_a_probe_size_the_old_check_never_ran():
    _, dims = _specs_dims()
    assert probe_sizes(dims["B"]) == [2, 1, 8, 3, 7] and first_off_trace_size(dims["B"]) == 3


def test_the_old_inherit_the_claim_path_would_have_passed_the_broken_fold():
    """Traced size + one off-trace size: the fold passes, and ``_with_claim_of`` (formerly ``_with_metadata_of``)
    would have copied the full B = 1..8 claim onto a file that is wrong at B = 8."""
    model = shape_dependent_model()
    specs, dims = _specs_dims()
    old = Verifier.traced_and_one_off_trace(specs, dims)
    broken = fold_at_traced_size(onnx.ModelProto.FromString(model.SerializeToString())).model
    verdict = old.judge(broken, old.run(model))
    assert verdict.passed and verdict.max_abs_err == 0.0
    inherited = _with_claim_of(broken, model, applied=["fold-at-trace"])
    assert json.loads({p.key: p.value for p in inherited.metadata_props}["onnxgate.dims"]) == DIMS
    # ...and the inherited claim is false: at B = 8 the file computes x, the model x + 1
    x = np.zeros((8, 4), np.float32)
    assert Verifier([{"x": x}]).judge(broken, Verifier([{"x": x}]).run(model)).passed is False


def test_run_passes_re_verifies_the_claim_and_rolls_the_fold_back():
    """The same old feeds given to run_passes: it extends them to every probe size of the recorded claim, so the
    fold is rolled back at B = 8 and the claim the output keeps was checked at every probe size."""
    model = shape_dependent_model()
    specs, dims = _specs_dims()
    report = run_passes(model, [fold_at_traced_size], verifier=Verifier.traced_and_one_off_trace(specs, dims))
    record = report.records[0]
    assert record.status == "rolled_back"
    assert "B=8" in record.message and "y on feed" in record.message
    assert report.claim is not None and report.claim.status == "re-verified"
    assert report.claim.probes == {"B": [1, 2, 3, 7, 8]} and not report.claim.unverified
    assert report.to_dict()["claim"]["probes"] == {"B": [1, 2, 3, 7, 8]}
    assert report.model.SerializeToString() == model.SerializeToString()  # nothing applied: the input as it was


def test_verifier_random_probes_every_size_of_the_claim():
    specs, dims = _specs_dims()
    verifier = Verifier.random(specs, dims)
    assert sorted(f["x"].shape[0] for f in verifier.feeds) == [1, 2, 3, 7, 8]
    assert "B=8" in verifier.source


def test_a_claim_the_input_model_does_not_hold_is_narrowed_and_written_not_inherited():
    """A claim the input model itself does not hold at some probe sizes (a graph whose batch is fixed at 2 under a
    B = 1..8 claim): those sizes are dropped from the feeds, and the file written carries the claim narrowed to
    what was verified, and says so."""
    model = shape_dependent_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # graph fixed at B = 2, claim says 1..8
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    original = model.SerializeToString()
    caller = Verifier([{"x": np.ones((2, 4), np.float32)}])
    report = run_passes(model, [], verifier=caller)
    assert set(report.claim.unverified) == {"B=1", "B=3", "B=7", "B=8"}
    assert report.claim.probes == {"B": [2]} and report.claim.status == "narrowed"
    assert "not at B=1" in report.claim.describe() and "narrowed to B=2..2" in report.summary()
    written = json.loads({p.key: p.value for p in report.model.metadata_props}["onnxgate.dims"])
    assert written == {"B": {"name": "B", "min": 2, "max": 2, "example": 2, "multiple_of": None}}
    assert model.SerializeToString() == original  # the caller's model keeps its own (unverified) claim


def test_narrowing_stops_at_the_last_verified_probe_before_a_failing_size():
    from onnxgate.transform.verifier import ClaimCheck

    claim = ClaimCheck("re-verified", {"H": Dim("H", 32, 512, 224)}, {"H": [32, 160, 224, 288]},
                       unverified={"H=512": "the input model fails there"})
    claim.narrow()
    assert claim.dims["H"] == Dim("H", 32, 288, 224) and claim.status == "narrowed"
    assert json.loads(claim.metadata()["onnxgate.dims"])["H"]["max"] == 288
