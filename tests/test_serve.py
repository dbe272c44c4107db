"""`onnxgate serve` on a real bundle (the digits CNN trained on scikit-learn's real digits), started as the real
command on a free loopback port and talked to with NVIDIA's own client (`tritonclient.http`) and raw HTTP.

What could fail here: outputs that differ from the bundle's reference or from onnxruntime in this process, labels
that lose their Chinese characters, a malformed request that gets a 500 or takes the server down, a batcher that
mixes up rows, a shutdown that drops an in-flight request, a config.pbtxt Triton's own protobuf rejects.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import re
import shutil
import signal
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sklearn")
pytest.importorskip("torch")
httpclient = pytest.importorskip("tritonclient.http")

from helpers import request, triton_model_config  # noqa: E402

from onnxgate.bundle.verify import compare_all, load_npz  # noqa: E402
from onnxgate.cli.main import main  # noqa: E402
from onnxgate.runtimes.ort import OrtRunner  # noqa: E402
from onnxgate.serve.launch import ServerProcess  # noqa: E402

LABELS = tuple("零一二三四五六七八九")  # the digits' Chinese names: must survive into the JSON unchanged
NAME = "trained_digits_cnn"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from onnxgate.pipeline import bundle_from_ref
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    config = ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),), dims=(parse_dim("B=1..64@4"),), labels=LABELS,
                          meta={"preprocess": "crop=8"})
    return bundle_from_ref("onnxgate.examples.digits:trained_digits_cnn", tmp_path_factory.mktemp("serve") / "bundle",
                           config=config)


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess(bundle, "--max-body-mb", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def runner(bundle):
    with OrtRunner(str(bundle / "model.onnx")) as ort_runner:
        yield ort_runner


@pytest.fixture(scope="module")
def digits():
    from onnxgate.examples.digits import digits_split

    _, _, x_test, y_test = digits_split()
    return x_test, y_test


def post_json(srv, path: str, doc) -> tuple[int, dict]:
    status, _, body = request(srv, "POST", path, json.dumps(doc), {"Content-Type": "application/json"})
    return status, json.loads(body)


def sample(text: bytes, name: str, **labels: str) -> float:
    """The sum of a metric's samples matching ``labels``, read with the Prometheus client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text.decode()) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def tensor(array: np.ndarray, name: str = "x") -> dict:
    return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.reshape(-1).tolist()}


# --------------------------------------------------------------------------------------------- the protocol


def test_tritonclient_reads_health_and_the_verified_metadata(server):
    client = httpclient.InferenceServerClient(url=server.hostport)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(NAME)
    (x,) = meta["inputs"]
    assert (x["name"], x["datatype"], x["shape"]) == ("x", "FP32", [-1, 1, 8, 8])
    assert x["verified_shape"][0] == {"dim": "B", "min": 1, "max": 64, "multiple_of": None, "source": "verified domain"}
    assert meta["outputs"][0]["shape"] == [-1, 10]
    assert meta["parameters"]["self_check"][0]["passed"] is True
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer_matches_the_bundle_reference_and_onnxruntime(server, bundle, runner, binary):
    client = httpclient.InferenceServerClient(url=server.hostport)
    golden = load_npz(bundle / "golden_inputs.npz")["x"]
    rng = np.random.default_rng(1)
    for feed in (golden, rng.random((7, 1, 8, 8), dtype=np.float32), rng.random((64, 1, 8, 8), dtype=np.float32)):
        inp = httpclient.InferInput("x", list(feed.shape), "FP32")
        inp.set_data_from_numpy(feed, binary_data=binary)
        result = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)])
        got = result.as_numpy("output")
        expected = runner.run({"x": feed})["output"]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)  # the bundle's tolerances
    manifest = json.loads((bundle / "manifest.json").read_text())
    reference = load_npz(bundle / "reference_outputs.npz")
    inp = httpclient.InferInput("x", list(golden.shape), "FP32")
    inp.set_data_from_numpy(golden, binary_data=binary)
    served = client.infer(NAME, [inp]).as_numpy("output")  # no outputs named: binary_data_output for all
    assert all(c.passed for c in compare_all(manifest, reference, {"output": served}))
    client.close()


def test_the_digits_bundle_proves_batch_invariance_and_serve_batches_within_it(bundle):
    """Issue 28 item 3: the trained digits CNN's bundle records its batch-invariance proof (every claimed size
    held, at a bound inside the tolerance), and --max-batch 16 is enabled on it, the proof named in the metadata."""
    proof = json.loads((bundle / "manifest.json").read_text())["claim"]["batching"]
    assert proof["passed"] is True and proof["allowed"] is True and proof["refusal"] is None
    assert proof["sizes"] == [2, 3, 4, 8, 16, 64] and proof["max_batch"] == 64
    assert 0 <= proof["bound"]["output"] < 1e-4 and proof["used_by"]["output"] <= 1
    with ServerProcess(bundle, "--max-batch", "16") as srv:
        batching = json.loads(request(srv, "GET", f"/v2/models/{NAME}")[2])["parameters"]["dynamic_batching"]
    assert batching["enabled"] is True and batching["max_batch"] == 16 and "capped" not in batching
    assert batching["proof"]["source"] == "the bundle's claim" and batching["proof"]["max_batch"] == 64
    assert "batch-invariant up to 64 rows" in srv.log


def test_dynamic_batching_merges_concurrent_requests_and_keeps_rows_apart(bundle, runner):
    rng = np.random.default_rng(2)
    feeds = [rng.random((int(rng.integers(1, 5)), 1, 8, 8), dtype=np.float32) for _ in range(48)]
    with ServerProcess(bundle, "--max-batch", "16", "--batch-timeout-ms", "30") as srv:
        def one(feed):
            client = httpclient.InferenceServerClient(url=srv.hostport)
            inp = httpclient.InferInput("x", list(feed.shape), "FP32")
            inp.set_data_from_numpy(feed, binary_data=True)
            try:
                return client.infer(NAME, [inp]).as_numpy("output")
            finally:
                client.close()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, feeds))
        _, _, text = request(srv, "GET", "/metrics")
    for feed, got in zip(feeds, results):
        np.testing.assert_allclose(got, runner.run({"x": feed})["output"], rtol=1e-3, atol=1e-4)
    runs, merged = sample(text, "onnxgate_batch_requests_count"), sample(text, "onnxgate_batch_requests_sum")
    assert merged == len(feeds) and runs < len(feeds), f"{runs} runs for {len(feeds)} requests: nothing merged"
    assert sample(text, "onnxgate_batch_size_sum") == sum(len(f) for f in feeds)


# ------------------------------------------------------------------------------------------------ classify


def png(array01: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(array01 * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def expected_top1(runner, image: bytes) -> tuple[int, float]:
    """What onnxruntime in this process says about the image as the bundle's preprocessing sees it."""
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32)[None, None] / 255.0
    logits = runner.run({"x": x})["output"][0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return int(probs.argmax()), float(probs.max())


def test_classify_returns_chinese_labels_from_files_base64_and_raw_images(server, runner, digits):
    x_test, y_test = digits
    picks = [i for i in range(40) if runner.run({"x": x_test[i:i + 1]})["output"].argmax() == y_test[i]][:6]
    images = [png(x_test[i, 0]) for i in picks]
    files = [("files", (f"digit{i}.png", data, "image/png")) for i, data in zip(picks, images)]
    import requests

    multipart = requests.post(f"{server.url}/v1/models/{NAME}/classify?top_k=3", files=files, timeout=30)
    assert multipart.status_code == 200, multipart.text
    assert LABELS[y_test[picks[0]]].encode("utf-8") in multipart.content  # raw UTF-8 in the JSON, not \u escapes
    doc = multipart.json()
    assert doc["scores"] == "softmax of the model's output" and doc["labels"] == "recorded"
    for i, image, prediction in zip(picks, images, doc["predictions"]):
        index, score = expected_top1(runner, image)
        top = prediction["top_k"][0]
        assert prediction["image"] == f"digit{i}.png" and len(prediction["top_k"]) == 3
        assert (top["index"], top["label"]) == (index, LABELS[index]) == (int(y_test[i]), LABELS[y_test[i]])
        assert top["score"] == pytest.approx(score, rel=1e-3)
    status, doc64 = post_json(server, f"/v1/models/{NAME}/classify",
                              {"images": [base64.b64encode(d).decode() for d in images], "top_k": 1})
    assert status == 200 and [p["top_k"][0]["label"] for p in doc64["predictions"]] == [LABELS[y_test[i]] for i in picks]
    status, _, raw = request(server, "POST", f"/v1/models/{NAME}/classify", images[0], {"Content-Type": "image/png"})
    assert status == 200 and json.loads(raw)["predictions"][0]["top_k"][0]["label"] == LABELS[y_test[picks[0]]]


# ---------------------------------------------------------------------------------------- malformed payloads


def _x(shape=(1, 1, 8, 8), datatype="FP32", data=None, **extra) -> dict:
    count = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 1
    return {"name": "x", "datatype": datatype, "shape": list(shape), "data": [0.5] * count if data is None else data,
            **extra}


def _doc(*tensors, **extra) -> str:
    return json.dumps({"inputs": list(tensors), **extra})


def _binary(declared: int, sent: int, header: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                   "parameters": {"binary_data_size": declared}}]}).encode()
    return head + b"\0" * sent, {"Inference-Header-Content-Length": header or str(len(head)),
                                 "Content-Type": "application/octet-stream"}


def _huge_png_header() -> bytes:
    """A PNG whose header declares 20000 x 20000 pixels (its data is a stub): refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 32


INFER = f"/v2/models/{NAME}/infer"
CLASSIFY = f"/v1/models/{NAME}/classify"
JSON = {"Content-Type": "application/json"}
BAD = {
    "wrong dtype": ("POST", INFER, _doc(_x(datatype="FP64")), JSON),
    "unknown datatype": ("POST", INFER, _doc(_x(datatype="FLOAT")), JSON),
    "datatype not a string": ("POST", INFER, _doc(_x(datatype=["FP32"])), JSON),
    "BYTES tensor": ("POST", INFER, _doc(_x(datatype="BYTES", data=["a"] * 64)), JSON),
    "rank too low": ("POST", INFER, _doc(_x(shape=(1, 8, 8))), JSON),
    "rank too high": ("POST", INFER, _doc(_x(shape=(1, 1, 1, 8, 8))), JSON),
    "fixed dim off": ("POST", INFER, _doc(_x(shape=(1, 1, 8, 9))), JSON),
    "batch over the domain": ("POST", INFER, _doc(_x(shape=(65, 1, 8, 8))), JSON),
    "batch zero": ("POST", INFER, _doc(_x(shape=(0, 1, 8, 8), data=[])), JSON),
    "too few values": ("POST", INFER, _doc(_x(data=[0.5] * 63)), JSON),
    "ragged data": ("POST", INFER, _doc(_x(data=[[0.5] * 32, [0.5] * 31])), JSON),
    "string data": ("POST", INFER, _doc(_x(data=["a"] * 64)), JSON),
    "boolean data": ("POST", INFER, _doc(_x(data=[True] * 64)), JSON),
    "data not a list": ("POST", INFER, _doc(_x(data="0.5")), JSON),
    "no data": ("POST", INFER, _doc({"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8]}), JSON),
    "no shape": ("POST", INFER, _doc({"name": "x", "datatype": "FP32", "data": [0.5] * 64}), JSON),
    "negative dim": ("POST", INFER, _doc(_x(shape=(1, 1, -8, 8), data=[0.5])), JSON),
    "unknown input": ("POST", INFER, _doc(_x(), {**_x(), "name": "y"}), JSON),
    "empty inputs": ("POST", INFER, _doc(), JSON),
    "input given twice": ("POST", INFER, _doc(_x(), _x()), JSON),
    "inputs not a list": ("POST", INFER, json.dumps({"inputs": _x()}), JSON),
    "body is a JSON array": ("POST", INFER, json.dumps([_x()]), JSON),
    "broken JSON": ("POST", INFER, _doc(_x())[:-7], JSON),
    "not UTF-8": ("POST", INFER, b'{"inputs": "\xff\xfe"}', JSON),
    "NaN literal": ("POST", INFER, _doc(_x()).replace("0.5", "NaN", 1), JSON),
    "nested too deep": ("POST", INFER, "[" * 100_000, JSON),
    "truncated binary tensor": ("POST", INFER, *_binary(256, 100)),
    "trailing binary bytes": ("POST", INFER, *_binary(256, 300)),
    "binary size off the shape": ("POST", INFER, *_binary(255, 255)),
    "header length not a number": ("POST", INFER, *_binary(256, 256, header="12abc")),
    "header length past the body": ("POST", INFER, *_binary(256, 256, header="999999")),
    "wrong Content-Type": ("POST", INFER, _doc(_x()), {"Content-Type": "text/plain"}),
    "unknown Content-Encoding": ("POST", INFER, _doc(_x()), {**JSON, "Content-Encoding": "br"}),
    "corrupt gzip": ("POST", INFER, b"\x1f\x8b\x08\x00garbage", {**JSON, "Content-Encoding": "gzip"}),
    "gzip bomb": ("POST", INFER, gzip.compress(b" " * (3 << 20)), {**JSON, "Content-Encoding": "gzip"}),
    "huge body": ("POST", INFER, b"[" + b" " * (2 << 20) + b"]", JSON),
    "unknown model": ("POST", "/v2/models/resnet50/infer", _doc(_x()), JSON),
    "unknown version": ("POST", f"/v2/models/{NAME}/versions/7/infer", _doc(_x()), JSON),
    "unknown output": ("POST", INFER, _doc(_x(), outputs=[{"name": "logits"}]), JSON),
    "outputs not a list": ("POST", INFER, _doc(_x(), outputs={"name": "output"}), JSON),
    "GET on infer": ("GET", INFER, None, {}),
    "unknown route": ("GET", "/v2/models/x/y/z", None, {}),
    "non-image upload": ("POST", CLASSIFY, b"just text, not a picture", {"Content-Type": "image/png"}),
    "truncated PNG": ("POST", CLASSIFY, png(np.full((8, 8), 0.5))[:40], {"Content-Type": "image/png"}),
    "gigapixel PNG header": ("POST", CLASSIFY, _huge_png_header(), {"Content-Type": "image/png"}),
    "invalid base64": ("POST", CLASSIFY, json.dumps({"images": ["not base64!"]}), JSON),
    "no images in JSON": ("POST", CLASSIFY, json.dumps({"top_k": 3}), JSON),
    "65 images": ("POST", CLASSIFY, json.dumps({"images": [base64.b64encode(png(np.zeros((8, 8)))).decode()] * 65}),
                  JSON),
    "top_k zero": ("POST", CLASSIFY + "?top_k=0", png(np.zeros((8, 8))), {"Content-Type": "image/png"}),
    "top_k not a number": ("POST", CLASSIFY + "?top_k=all", png(np.zeros((8, 8))), {"Content-Type": "image/png"}),
    "classify as text/plain": ("POST", CLASSIFY, "hello", {"Content-Type": "text/plain"}),
    "empty multipart": ("POST", CLASSIFY, b"--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_payloads_get_a_4xx_json_error(server, case):
    method, path, body, headers = BAD[case]
    status, response_headers, raw = request(server, method, path, body, headers)
    assert 400 <= status < 500, f"{case}: {status} {raw[:300]!r}"
    doc = json.loads(raw)
    assert doc["error"] and "Traceback" not in raw.decode()


def test_malformed_payloads_leave_the_server_healthy(server):
    assert len(BAD) >= 30
    for method, path, body, headers in BAD.values():
        request(server, method, path, body, headers)
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready"):
        assert request(server, "GET", path)[0] == 200
    status, doc = post_json(server, INFER, {"inputs": [_x()]})
    assert status == 200 and len(doc["outputs"][0]["data"]) == 10
    _, _, text = request(server, "GET", "/metrics")
    assert sample(text, "onnxgate_request_errors_total", kind="client") >= len(BAD)
    assert sample(text, "onnxgate_request_errors_total", kind="server") == 0, "a malformed request got a 5xx"
    assert server.process.poll() is None


def test_refusals_name_the_input_and_the_allowed_values(server):
    status, doc = post_json(server, INFER, {"inputs": [_x(shape=(65, 1, 8, 8))]})
    assert status == 400 and doc["input"] == "x" and "verified domain of B is 1..64" in doc["error"]
    assert doc["allowed"] == {"axis": 0, "dim": "B", "min": 1, "max": 64, "multiple_of": None,
                              "source": "verified domain"}
    status, doc = post_json(server, INFER, {"inputs": [_x(datatype="INT64", data=[0] * 64)]})
    assert status == 400 and doc["allowed"] == {"datatype": "FP32"}


# ------------------------------------------------------------------------------- failures inside the server


@pytest.fixture(scope="module")
def overclaimed_bundle(tmp_path_factory) -> Path:
    """A bundle whose manifest claims N in 1..8 for a model that reshapes to a fixed 2 rows: a request at N=3 is
    inside the claimed domain and fails inside onnxruntime — an internal failure, not the client's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxgate.bundle.write import write_bundle

    folder = tmp_path_factory.mktemp("overclaimed")
    shape = numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "fixed")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "fixed"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "m.onnx")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return write_bundle(folder / "bundle", model_path=folder / "m.onnx", golden_inputs={"x": x},
                        reference_outputs={"y": x}, source_ref="tests:overclaimed",
                        domain={"N": {"min": 1, "max": 8, "multiple_of": None, "example": 2}})


def test_an_internal_failure_is_a_500_with_an_id_and_the_server_stays_up(overclaimed_bundle):
    with ServerProcess(overclaimed_bundle) as srv:
        ok, _ = post_json(srv, "/v2/models/overclaimed/infer", {"inputs": [tensor(np.ones((2, 4), np.float32))]})
        status, doc = post_json(srv, "/v2/models/overclaimed/infer", {"inputs": [tensor(np.ones((3, 4), np.float32))]})
        live = request(srv, "GET", "/v2/health/live")[0]
        again, _ = post_json(srv, "/v2/models/overclaimed/infer", {"inputs": [tensor(np.ones((2, 4), np.float32))]})
        no_classify = request(srv, "POST", "/v1/models/overclaimed/classify", png(np.zeros((8, 8))),
                              {"Content-Type": "image/png"})[0]  # no preprocessing recorded: a 404 that says so
    assert ok == 200 and status == 500 and live == 200 and again == 200 and no_classify == 404
    assert set(doc) == {"error", "id"} and doc["error"] == "internal error" and re.fullmatch(r"[0-9a-f]{16}", doc["id"])
    assert f"internal error {doc['id']}" in srv.log and "Traceback" in srv.log  # the log has it; the body does not


def test_a_tampered_bundle_is_not_served(bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    data = bytearray((copy / "golden_inputs.npz").read_bytes())
    data[-30] ^= 0xFF
    (copy / "golden_inputs.npz").write_bytes(bytes(data))
    assert main(["serve", str(copy), "--port", "0", "--json"]) == 9
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["exit_code"] == 9 and "golden_inputs.npz" in envelope["reason"]


def test_batching_beyond_the_verified_batch_domain_is_refused(bundle, capsys):
    assert main(["serve", str(bundle), "--port", "0", "--max-batch", "65", "--json"]) == 2
    assert "verified batch domain of B: 1..64" in json.loads(capsys.readouterr().out)["reason"]


# -------------------------------------------------------------------------------------- lifecycle, workers


def test_sigterm_finishes_the_request_in_flight(bundle, runner):
    """The request waits in the batcher (2 s timeout, 1 of 8 rows) when SIGTERM arrives: it is still answered."""
    feed = np.random.default_rng(3).random((1, 1, 8, 8), dtype=np.float32)
    srv = ServerProcess(bundle, "--max-batch", "8", "--batch-timeout-ms", "2000", "--json").start()
    answer = {}

    def call():
        answer["status"], answer["doc"] = post_json(srv, INFER, {"inputs": [tensor(feed)]})

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    code = srv.stop(signal.SIGTERM)
    thread.join(30)
    assert code == 0 and answer["status"] == 200, srv.log
    assert time.monotonic() - signalled > 1.0  # it waited for the request instead of dropping it
    got = np.asarray(answer["doc"]["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, runner.run({"x": feed})["output"], rtol=1e-3, atol=1e-4)
    envelope = json.loads(srv.stdout)
    assert envelope["ok"] is True and envelope["result"]["model"] == NAME


def test_two_workers_share_the_port_and_aggregate_metrics(bundle):
    with ServerProcess(bundle, "--workers", "2", "--threads", "1") as srv:
        statuses = [post_json(srv, INFER, {"inputs": [_x()]})[0] for _ in range(8)]
        _, _, text = request(srv, "GET", "/metrics")
        code = srv.stop()
    assert statuses == [200] * 8 and code == 0
    assert sample(text, "onnxgate_requests_total", code="200", endpoint="infer") == 8


# ---------------------------------------------------------------------------------------- cluster configs


def test_export_config_triton_parses_with_tritons_model_config(bundle, tmp_path, capsys):
    from google.protobuf import text_format

    assert main(["serve", str(bundle), "--export-config", "triton", str(tmp_path / "repo"), "--max-batch", "16",
                 "--json"]) == 0
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["result"]["max_batch_size"] == 64
    config = text_format.Parse((tmp_path / "repo" / NAME / "config.pbtxt").read_text(), triton_model_config()())
    assert (config.name, config.platform, config.max_batch_size) == (NAME, "onnxruntime_onnx", 64)
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [1, 8, 8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output", [10])]
    assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    domain = json.loads(config.parameters["onnxgate_verified_domain"].string_value)
    assert domain["x"][0] == {"dim": "B", "min": 1, "max": 64, "multiple_of": None, "source": "verified domain"}
    assert (tmp_path / "repo" / NAME / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


def test_export_config_kserve_writes_an_inference_service_over_the_repository(bundle, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    from google.protobuf import text_format

    out = tmp_path / "kserve"
    assert main(["serve", str(bundle), "--export-config", "kserve", str(out), "--storage-uri",
                 "s3://models/digits", "--model-name", "Digits_CNN", "--json"]) == 0
    capsys.readouterr()
    service = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"]["name"] == "digits-cnn"
    model = service["spec"]["predictor"]["model"]
    assert model == {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2", "runtime": "kserve-tritonserver",
                     "storageUri": "s3://models/digits"}
    assert json.loads(service["metadata"]["annotations"]["onnxgate.io/verified-domain"])["x"][0]["max"] == 64
    # one model name everywhere (issue 27): only the InferenceService object takes the Kubernetes form
    config = text_format.Parse((out / "model_repository" / "Digits_CNN" / "config.pbtxt").read_text(),
                               triton_model_config()())
    assert config.name == "Digits_CNN" and config.max_batch_size == 64


# ------------------------------------------------------------------------------------- contract, in-process


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory) -> Path:
    """Token ids into a 10-row embedding, recorded as ids:Bx4:int64:0..9 with B in 1..8 (as `onnxgate export`
    records them): an id of 10 would make onnxruntime's Gather fail, so the contract must refuse it first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxgate.bundle.write import write_bundle

    folder = tmp_path_factory.mktemp("tokens")
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["emb"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 4])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", 4, 2])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {
        "onnxgate.inputs": json.dumps([{"name": "ids", "shape": ["B", 4], "dtype": "int64", "value_range": [0, 9]}]),
        "onnxgate.dims": json.dumps({"B": {"name": "B", "min": 1, "max": 8, "example": 2}})})
    onnx.save(model, folder / "m.onnx")
    ids = np.array([[0, 1, 2, 3], [9, 8, 7, 6]], dtype=np.int64)
    return write_bundle(folder / "bundle", model_path=folder / "m.onnx", golden_inputs={"ids": ids},
                        reference_outputs={"emb": np.arange(20, dtype=np.float32).reshape(10, 2)[ids]},
                        source_ref="tests:tokens")


def test_the_contract_comes_from_the_recorded_specs_and_holds_integer_ranges(token_bundle):
    from onnxgate.serve.contract import batch_probe, load_served_model
    from onnxgate.serve.protocol import RequestError

    model = load_served_model(token_bundle)
    (ids,) = model.inputs
    assert (ids.datatype, ids.value_range, ids.dims[0].to_dict()["max"]) == ("INT64", (0, 9), 8)
    assert model.name == "tokens" and model.batch_dim == "B" and batch_probe(model) is None
    assert model.classify_unavailable.startswith("the bundle records no image preprocessing")
    feed = model.check_feed({"ids": ("INT64", np.full((3, 4), 9, dtype=np.int64))})
    assert model.session.run(None, feed)[0].shape == (3, 4, 2)
    with pytest.raises(RequestError) as refused:
        model.check_feed({"ids": ("INT64", np.full((3, 4), 10, dtype=np.int64))})
    assert refused.value.status == 400 and refused.value.allowed == {"value_range": [0, 9]}
    with pytest.raises(RequestError, match="has size 9 at dim 0 \\(B\\); the verified domain of B is 1..8"):
        model.check_feed({"ids": ("INT64", np.zeros((9, 4), dtype=np.int64))})


def test_threads_come_from_the_benchmark_recorded_next_to_the_bundle(token_bundle, tmp_path):
    from onnxgate.serve.contract import load_served_model

    copy = shutil.copytree(token_bundle, tmp_path / "out" / "bundle")
    report = {"stages": {"bench": {"recommendation": {"config_id": "onnxruntime:base/extended/t1"}}}}
    (tmp_path / "out" / "report.json").write_text(json.dumps(report))
    model = load_served_model(copy)
    assert (model.threads, model.opt_level) == (1, "extended")
    assert "report.json" in model.threads_source and "onnxruntime:base/extended/t1" in model.threads_source
    assert load_served_model(copy, threads=2).threads_source == "--threads"
    assert load_served_model(token_bundle).threads == 0  # nothing recorded: onnxruntime's default


def test_a_huge_chunked_body_without_length_is_cut_off_at_the_limit(server):
    conn = http.client.HTTPConnection(server.hostport, timeout=30)
    try:
        conn.request("POST", INFER, body=iter([b" " * (256 << 10)] * 12), encode_chunked=True,
                     headers={**JSON, "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413 and "at most 1,048,576" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert request(server, "GET", "/v2/health/ready")[0] == 200
