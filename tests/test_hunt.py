"""The divergence hunt (issue 28 item 2): a model right on N(0,1) inputs and wrong only when input channel 2
exceeds 3 sigma passes the sampled proof and is caught by the hunt within the default budget; the hunt is
reproducible from its seed; the hunted feed, joined to a bundle's golden set, fails re-verification of the wrong
artifact while the random golden set alone passes it. Real torch reference, real onnxruntime; a few seconds."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxgate.bundle.verify import verify_bundle  # noqa: E402
from onnxgate.bundle.write import write_bundle  # noqa: E402
from onnxgate.runtimes.torch_runner import TorchRunner  # noqa: E402
from onnxgate.spec import InputSpec  # noqa: E402
from onnxgate.verify import engine, hunt  # noqa: E402
from onnxgate.verify.inputs import random_inputs  # noqa: E402

SPECS = [InputSpec("x", ("B", 4), "float32")]
SIZES = {"B": 2}
PROOF_SEEDS = range(5)


class Branchy(nn.Module):
    """y = Wx, doubled (``factor``) where channel 2 of a row exceeds 3: a branch N(0,1) inputs take 0.13% of the
    time."""

    def __init__(self, factor: float):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.factor = factor

    def forward(self, x):
        y = self.linear(x)
        return torch.where(x[:, 2:3] > 3.0, y * self.factor, y)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The reference (factor 2) and an ONNX export of a variant wrong only in the branch (factor 2.5)."""
    path = tmp_path_factory.mktemp("hunt") / "wrong.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Branchy(2.5).eval(), (torch.zeros(2, 4),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B"}, "y": {0: "B"}}, dynamo=False)
    reference = TorchRunner(Branchy(2.0), input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return reference, (lambda feed: {"y": session.run(None, feed)[0]}), path


def test_the_wrong_branch_passes_the_sampled_proof_and_the_hunt_catches_it(models):
    reference, candidate, _ = models
    proof = engine.check(reference, candidate, [random_inputs(SPECS, SIZES, seed=s) for s in PROOF_SEEDS])
    assert proof.passed, proof.reason()

    found = hunt.hunt(reference, candidate, SPECS, SIZES)
    assert not found.passed and found.score > 1
    assert found.evaluations <= hunt.DEFAULT_BUDGET
    assert (found.worst["x"][:, 2] > 3.0).any()  # the branch the proof never took
    d = found.distribution()
    assert d["random"]["max"] <= 1 < d["hunted"]["max"]
    assert "found a divergence" in found.summary() and "y on feed 0" in found.summary()

    again = hunt.hunt(reference, candidate, SPECS, SIZES)
    np.testing.assert_array_equal(again.worst["x"], found.worst["x"])  # seeded: reproducible
    assert again.score == found.score and again.evaluations == found.evaluations


def test_a_correct_export_survives_the_hunt(models):
    reference, _, _ = models
    right = TorchRunner(Branchy(2.0), input_names=["x"], output_names=["y"])
    found = hunt.hunt(reference, right, SPECS, SIZES, budget=60)
    assert found.passed and found.score <= 1 and found.evaluations == 60


def test_integer_inputs_are_tried_at_their_range_edges():
    """A lookup wrong only for the last id of its range (9 of 0..9): the edge feeds reach it."""
    table = np.arange(10, dtype=np.float32)
    wrong = table.copy()
    wrong[9] = -1.0
    specs = [InputSpec("ids", ("B", 8), "int64", (0, 9))]
    found = hunt.hunt(lambda f: {"y": table[f["ids"]]}, lambda f: {"y": wrong[f["ids"]]}, specs, {"B": 1},
                      budget=8)  # 2 random feeds, then the edges
    assert not found.passed and (found.worst["ids"] == 9).any()


def test_the_hunted_feed_in_the_golden_set_fails_re_verification_of_the_wrong_artifact(models, tmp_path):
    reference, candidate, path = models
    found = hunt.hunt(reference, candidate, SPECS, SIZES)
    golden = random_inputs(SPECS, SIZES, seed=0)

    plain = write_bundle(tmp_path / "plain", model_path=path, golden_inputs=golden,
                         reference_outputs=reference.run(golden))
    assert verify_bundle(plain).status == "pass"  # the random golden set cannot tell

    hunted = hunt.golden_with(golden, found.worst)
    assert hunted["x"].shape == (4, 4)
    bundle = write_bundle(tmp_path / "hunted", model_path=path, golden_inputs=hunted,
                          reference_outputs=reference.run(hunted))
    result = verify_bundle(bundle)
    assert result.status == "fail", result.reason
    assert any(not c.passed for c in result.outputs if c.name == "y")


def test_a_time_cap_shrinks_the_budget_to_what_fits_and_keeps_every_phase():
    """A candidate taking 20 ms a feed, 0.4 s allowed: about 20 evaluations instead of 200, still random feeds
    first and a local search after (a large model gets a shorter hunt of the same shape)."""
    import time

    def slow(feed):
        time.sleep(0.02)
        return {"y": feed["x"] * 2}

    start = time.perf_counter()
    found = hunt.hunt(lambda f: {"y": f["x"] * 2}, slow, SPECS, SIZES, seconds=0.4)
    assert time.perf_counter() - start < 0.4 + 0.1  # no evaluation starts past the cap
    assert found.capped and 2 <= found.budget < 40 and found.evaluations <= found.budget
    assert found.random and found.hunted and found.passed
    assert found.to_dict()["budget"] == found.budget and found.to_dict()["capped"] is True
    uncapped = hunt.hunt(lambda f: {"y": f["x"] * 2}, lambda f: {"y": f["x"] * 2}, SPECS, SIZES, seconds=60)
    assert not uncapped.capped and uncapped.budget == uncapped.evaluations == hunt.DEFAULT_BUDGET


def test_the_runs_default_hunt_takes_a_share_of_the_proofs_time():
    """A quarter of what the export and sampled proof took, within 2..10 s: a flat 10 s added 62% to resnet18."""
    from onnxgate.pipeline import hunt_cap

    assert hunt_cap(0.5) == 2.0 and hunt_cap(20.0) == 5.0 and hunt_cap(400.0) == 10.0
