"""Batch invariance (issue 28 item 3): a BatchNorm left in training mode, exported as such, makes a row's output
depend on its batch companions: dynamic batching is refused with the measured bound. The digits CNN (trained, real
8x8 digits) passes at every checked batch size; a sequence model pooling over padding is caught by the padded
trials while its masked twin passes. Real onnxruntime sessions of real exports; a few seconds."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from helpers import masked_pool  # noqa: E402

from onnxgate.spec import Dim  # noqa: E402
from onnxgate.verify import batch_invariance as bi  # noqa: E402


def _session(model, example: tuple, names: list[str], outputs: list[str], dynamic: dict, **kwargs):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buf, input_names=names, output_names=outputs, dynamic_axes=dynamic,
                          dynamo=False, **kwargs)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return lambda feed: dict(zip(outputs, sess.run(None, feed)))


def test_batch_sizes_are_bounded_and_inside_the_domain():
    assert bi.batch_sizes(Dim("B", 1, 32)) == [2, 3, 4, 8, 16, 32]
    assert bi.batch_sizes(Dim("B", 1, 1000)) == [2, 3, 4, 8, 16, 1000]
    assert bi.batch_sizes(Dim("B", 1, 6)) == [2, 3, 4, 6]
    assert bi.batch_sizes(Dim("B", 1, 1)) == []


class TrainingBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def test_a_batchnorm_left_in_training_mode_is_refused_with_its_bound():
    run = _session(TrainingBN().train(), (torch.zeros(4, 1, 8, 8),), ["x"], ["y"], {"x": {0: "B"}, "y": {0: "B"}},
                   training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    golden = {"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    result = bi.batch_invariance(run, golden, bi.batch_sizes(Dim("B", 1, 8)))
    assert not result.passed
    assert result.bound["y"] > 1e-2 and result.used > 1
    assert result.max_batch == 1  # not even two rows may be merged
    refusal = result.refusal()
    assert refusal.startswith("dynamic batching refused") and "'y'" in refusal and "row " in refusal
    assert result.to_dict()["bound"] == result.bound


def test_the_digits_cnn_is_batch_invariant():
    from onnxgate.examples.digits import digits_split, trained_digits_cnn

    model, example = trained_digits_cnn()
    run = _session(model.eval(), (example["x"],), ["x"], ["logits"], {"x": {0: "B"}, "logits": {0: "B"}})
    golden = {"x": digits_split()[2][:4]}
    sizes = bi.batch_sizes(Dim("B", 1, 32))
    result = bi.batch_invariance(run, golden, sizes)
    assert result.passed, result.summary()
    assert result.max_batch == 32 and result.sizes == tuple(sizes)
    assert result.trials == 4 * len(sizes) * bi.TRIALS
    assert 0 <= result.bound["logits"] < 1e-4 and result.refusal() is None
    assert "batch invariant at sizes 2, 3, 4, 8, 16, 32" in result.summary()


def test_a_row_budget_runs_one_batch_at_the_largest_sizes():
    """What a bundle's proof runs (``prove``: 16 rows per size): every row and trial at the small sizes, one batch
    at 16 and 32, and the same verdict."""
    from onnxgate.examples.digits import digits_split, trained_digits_cnn

    model, example = trained_digits_cnn()
    run = _session(model.eval(), (example["x"],), ["x"], ["logits"], {"x": {0: "B"}, "logits": {0: "B"}})
    golden = {"x": digits_split()[2][:4]}
    result = bi.batch_invariance(run, golden, [2, 3, 4, 8, 16, 32], row_budget=16)
    assert result.passed and result.max_batch == 32
    assert result.trials == 8 + 5 + 4 + 2 + 1 + 1  # per size: as many batches as 16 rows allow, at least one


def test_the_proof_a_bundle_records():
    """``prove`` gives the record ``claim.batching`` holds; ``read_record`` reads it back and refuses other forms;
    ``leading_batch_dim`` finds the dim serve would merge along."""
    from onnxgate.verify.tolerance import Tolerance

    dim = Dim("B", 1, 8)
    assert bi.leading_batch_dim([["B", 1, 8, 8]], [["B", 4]], {"B": dim}) == dim
    assert bi.leading_batch_dim([["B", 4], ["N", 4]], [["B", 4]], {"B": dim}) is None  # no shared leading dim
    assert bi.leading_batch_dim([["B", 4]], [[1, 4]], {"B": dim}) is None  # an output without it
    assert bi.leading_batch_dim([["B", 4]], [["B", 4]], {"B": Dim("B", 2, 2)}) is None  # one size only
    run = _session(TrainingBN().train(), (torch.zeros(4, 1, 8, 8),), ["x"], ["y"], {"x": {0: "B"}, "y": {0: "B"}},
                   training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    golden = {"x": np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)}
    doc = bi.prove(run, golden, dim, tolerances={"y": Tolerance(1e-3, 1e-4)}, runtime="onnxruntime test")
    assert doc["allowed"] is False and doc["max_batch"] == 1 and doc["rows"] == bi.PROOF_ROWS
    assert doc["sizes"] == [2, 3, 4, 8] and doc["tolerance"] == "y rtol=1e-3 atol=1e-4" and doc["runtime"] == (
        "onnxruntime test")
    assert doc["used_by"]["y"] > 10 and doc["refusal"].startswith("dynamic batching refused")
    assert bi.read_record(json.loads(json.dumps(doc))) == json.loads(json.dumps(doc))
    for broken in ({**doc, "version": 99}, {**doc, "max_batch": "8"}, {**doc, "sizes": "2,3"}, None, [1]):
        assert bi.read_record(broken) is None

    def crashes(feed):
        if len(feed["x"]) > 1:
            raise RuntimeError("fixed batch of 1")
        return run(feed)

    doc = bi.prove(crashes, golden, dim, tolerances={"y": Tolerance(1e-3, 1e-4)})
    assert doc["allowed"] is False and "did not run: RuntimeError: fixed batch of 1" in doc["refusal"]


@pytest.mark.parametrize("masked", [True, False])
def test_padding_is_checked_where_a_dim_is_padded(masked):
    ids = torch.randint(1, 20, (2, 5))
    run = _session(masked_pool(masked), (ids, torch.ones(2, 5, dtype=torch.int64)), ["ids", "mask"], ["pooled"],
                   {"ids": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"}, "pooled": {0: "B"}})
    rng = np.random.default_rng(0)
    golden = {"ids": rng.integers(1, 20, (2, 5)).astype(np.int64), "mask": np.ones((2, 5), np.int64)}
    padding = bi.Padding(axes={"ids": 1, "mask": 1}, values={"ids": 0}, mask="mask")
    result = bi.batch_invariance(run, golden, [2, 4], padding=padding, value_ranges={"ids": (1, 19)})
    assert result.padded
    if masked:
        assert result.passed, result.summary()
    else:
        assert not result.passed and "padded by" in result.refusal()
        unpadded = bi.batch_invariance(run, golden, [2, 4], value_ranges={"ids": (1, 19)})
        assert unpadded.passed  # without padding the leak is invisible: the padded trials found it
