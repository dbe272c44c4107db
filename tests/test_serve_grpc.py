"""`onnxgate serve --grpc-port`: the KServe/Triton `GRPCInferenceService`, talked to with NVIDIA's own
`tritonclient.grpc` (unmodified) and with the generated stub it ships, for the typed `contents` the client does not
send by itself.

What could fail here: a method tritonclient needs that answers UNIMPLEMENTED, outputs that differ from onnxruntime,
typed and raw tensors decoded differently, a request outside the verified domain that runs anyway (gRPC must hold
the same contract as HTTP, not a copy of it), a refusal without the JSON naming the input, gRPC and HTTP requests
that do not share the batcher, an admission limit or token that gRPC ignores.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnx")
grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from helpers import AFFINE, AFFINE_B, AFFINE_W, affine_bundle  # noqa: E402

from onnxgate.serve.launch import ServerProcess  # noqa: E402

NAME = AFFINE
TOKEN = "grpc-token-0123456789abcdef"


def onnxruntime_outputs(bundle: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return affine_bundle(tmp_path_factory.mktemp("grpc"))


@pytest.fixture(scope="module")
def server(bundle):
    # requests wait up to 150 ms for others: concurrent gRPC and HTTP calls merge into one run
    with ServerProcess(bundle, "--grpc-port", "0", "--max-batch", "16", "--batch-timeout-ms", "150") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def details(exc) -> dict:
    """The JSON refusal a gRPC error carries as its details (strict: no NaN/Infinity tokens)."""
    def refuse(token):
        raise ValueError(token)
    text = exc.details() if hasattr(exc, "details") and callable(exc.details) else exc.message()
    return json.loads(text, parse_constant=refuse)


def test_tritonclient_grpc_reads_health_metadata_and_config(client, server):
    from tritonclient.grpc import model_config_pb2

    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert client.get_server_metadata().name == "onnxgate"
    meta = client.get_model_metadata(NAME)
    assert (meta.name, list(meta.versions), meta.platform) == (NAME, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 3])]
    config = client.get_model_config(NAME).config
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert (config.name, config.max_batch_size, [list(i.dims) for i in config.input]) == (NAME, 64, [[4]])
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 150_000
    http_config = httpclient.InferenceServerClient(server.hostport).get_model_config(NAME)
    assert http_config["dynamic_batching"]["preferred_batch_size"] == [16]  # one config, two protocols
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("other")
    assert exc.value.status() == "StatusCode.NOT_FOUND" and details(exc.value)["allowed"] == {"models": [NAME]}
    assert not client.is_model_ready(NAME, model_version="2")


def test_tritonclient_grpc_infer_equals_onnxruntime(client, bundle):
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents, as tritonclient sends it
    result = client.infer(NAME, [tensor], outputs=[grpcclient.InferRequestedOutput("y")], request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("y"), onnxruntime_outputs(bundle, x))
    assert result.get_response().id == "r-7" and result.get_response().model_name == NAME


def test_typed_contents_decode_as_raw_contents_do(stub, bundle):
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name=NAME)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=30)
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_array_equal(out, onnxruntime_outputs(bundle, x))
    assert response.outputs[0].datatype == "FP32"


def _infer_request(shape, datatype="FP32", data=None, *, raw=True, name=NAME):
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype=datatype, shape=list(shape))
    if raw:
        array = np.ones(shape, np.float32) if data is None else data
        request.raw_input_contents.append(array.tobytes())
    return request


def _two_raw():
    request = _infer_request((1, 4))
    request.raw_input_contents.append(b"\0" * 16)
    return request


@pytest.mark.parametrize("make, code, field", [
    (lambda: _infer_request((65, 4)), "INVALID_ARGUMENT", "dim 0 (B)"),  # beyond the verified batch domain
    (lambda: _infer_request((2, 5)), "INVALID_ARGUMENT", "has size 5"),
    (lambda: _infer_request((2, 4), "INT64", np.ones((2, 4), np.int64)), "INVALID_ARGUMENT", "takes FP32"),
    (lambda: _infer_request((2, 4), data=np.ones((2, 3), np.float32)), "INVALID_ARGUMENT", "raw contents"),
    (lambda: _infer_request((1, 4), data=np.array([[1, np.nan, 0, np.inf]], np.float32)), "INVALID_ARGUMENT",
     "NaN or infinite"),
    (lambda: _infer_request((1, 4), raw=False), "INVALID_ARGUMENT", "holds 0 values"),
    (lambda: _two_raw(), "INVALID_ARGUMENT", "raw_input_contents holds 2 tensors for 1 inputs"),
    (lambda: _infer_request((1, 4), "STRING", raw=False), "INVALID_ARGUMENT", "not a numeric"),
    (lambda: _infer_request((1, 4), name="nope"), "NOT_FOUND", "Unknown model"),
], ids=["batch-beyond-domain", "wrong-dim", "wrong-dtype", "short-raw", "nan", "no-data", "two-raw",
        "string", "unknown-model"])
def test_refusals_are_grpc_codes_with_the_json_naming_the_problem(stub, client, make, code, field):
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(make(), timeout=30)
    assert exc.value.code().name == code
    body = details(exc.value)
    assert field in body["error"] and (code == "NOT_FOUND" or "allowed" in body or body.get("input") == "x")
    assert client.is_server_live() and client.is_model_ready(NAME)  # still serving


def test_grpc_and_http_requests_share_the_batcher_and_the_metrics(server, bundle, client):
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(8)]
    results: dict[int, np.ndarray] = {}
    http = httpclient.InferenceServerClient(server.hostport, concurrency=4)
    barrier = threading.Barrier(len(xs))

    def one(i):
        use_grpc = i % 2 == 0
        module = grpcclient if use_grpc else httpclient
        tensor = module.InferInput("x", list(xs[i].shape), "FP32")
        tensor.set_data_from_numpy(xs[i])
        barrier.wait(10)
        results[i] = (client if use_grpc else http).infer(NAME, [tensor]).as_numpy("y")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], onnxruntime_outputs(bundle, x))  # rows kept apart
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    merged_sum = samples[("onnxgate_batch_requests_sum", ())]
    merged_count = samples[("onnxgate_batch_requests_count", ())]
    assert merged_sum > merged_count  # some run held more than one request
    assert samples[("onnxgate_grpc_requests_total", (("code", "OK"), ("method", "ModelInfer")))] >= 4
    assert samples[("onnxgate_grpc_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "ModelInfer")))] >= 1


def test_grpc_holds_the_token_and_the_admission_limit(bundle, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = ("--grpc-port", "0", "--auth-token-file", str(token_file), "--max-batch", "8", "--batch-timeout-ms", "400",
            "--max-queue", "2")
    auth = {"authorization": f"Bearer {TOKEN}"}
    with ServerProcess(bundle, *args) as srv, grpcclient.InferenceServerClient(srv.grpc_target) as client:
        assert client.is_server_live() and client.is_server_ready()  # open, like /v2/health/*
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata(NAME)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in details(refused.value)["error"]
        assert client.get_model_metadata(NAME, headers=auth).name == NAME

        outcomes: list = [None] * 8
        barrier = threading.Barrier(8)

        def one(i):
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), i, np.float32))
            barrier.wait(10)
            try:
                outcomes[i] = client.infer(NAME, [tensor], headers=auth).as_numpy("y")
            except InferenceServerException as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert client.is_server_live()
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
        calm = client.infer(NAME, [tensor], headers=auth).as_numpy("y")
    refusals = [o for o in outcomes if isinstance(o, InferenceServerException)]
    answers = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, np.ndarray)]
    assert len(answers) >= 2 and refusals and len(answers) + len(refusals) == 8
    for exc in refusals:
        assert exc.status() == "StatusCode.UNAVAILABLE" and details(exc)["allowed"]["max_queue"] == 2
    for i, y in answers:
        np.testing.assert_allclose(y, np.full((1, 4), i, np.float32) @ AFFINE_W + AFFINE_B, rtol=1e-6)
    np.testing.assert_allclose(calm, AFFINE_B[None, :], rtol=1e-6)


def test_a_busy_grpc_port_is_exit_2_before_anything_is_served(bundle, capsys):
    import socket

    from onnxgate.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(bundle), "--port", "0", "--grpc-port", str(port), "--json"]) == 2
    out = capsys.readouterr().out
    assert f"Cannot listen for gRPC on 127.0.0.1:{port}" in out and "listening on http" not in out
