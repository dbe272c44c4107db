"""`onnxgate serve`'s Open Inference Protocol beyond inference (issue 27): the model configuration tritonclient reads
(`GET /v2/models/NAME/config`, parsed with Triton's own ModelConfig protobuf), dynamic batching said where clients
and operators look, one model name across serve / Triton / KServe exports, the admission limit (`--max-queue`: 503
with Retry-After, flat memory, the server healthy afterwards) and bearer-token auth (health open).

Real parts: the real command on a free loopback port (ServerProcess), NVIDIA's tritonclient over HTTP, raw
http.client, and a tiny real bundle (x[B,4] @ W + b, B verified in 1..64) written in a second.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")
pytest.importorskip("onnx")

from helpers import request, triton_model_config  # noqa: E402
from onnxgate.cli.main import main  # noqa: E402
from onnxgate.serve.launch import ServerProcess  # noqa: E402

NAME = "tiny_affine"
TOKEN = "s3cret-token-0123456789abcdef"
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def tiny_bundle(folder: Path, *, mixes_rows: bool = False) -> Path:
    """y = x @ W + b with B in 1..64 (rows independent), or, with ``mixes_rows``, y = x @ W + mean over the batch:
    every row depends on the others, so requests must never be merged."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxgate.bundle.write import write_bundle

    folder.mkdir(parents=True, exist_ok=True)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"])]
    if mixes_rows:
        nodes += [helper.make_node("ReduceMean", ["xw"], ["m"], axes=[0], keepdims=1),
                  helper.make_node("Add", ["xw", "m"], ["y"])]
    else:
        nodes += [helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "m.onnx")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    y = x @ W + (x @ W).mean(0, keepdims=True) if mixes_rows else x @ W + B
    return write_bundle(folder / "bundle", model_path=folder / "m.onnx", golden_inputs={"x": x},
                        reference_outputs={"y": y.astype(np.float32)}, source_ref=f"tests:{NAME}",
                        domain={"B": {"min": 1, "max": 64, "multiple_of": None, "example": 2}})


def onnxruntime_outputs(bundle: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def infer_body(x: np.ndarray) -> str:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]})


def strict(body: bytes):
    def refuse(token):
        raise ValueError(token)
    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("protocol"))


@pytest.fixture(scope="module")
def batching_server(bundle):
    with ServerProcess(bundle, "--max-batch", "8", "--batch-timeout-ms", "5") as srv:
        yield srv


# ------------------------------------------------------------------------------------ config and metadata


def test_tritonclient_reads_the_model_config_and_tritons_protobuf_accepts_it(batching_server):
    from google.protobuf import json_format

    client = httpclient.InferenceServerClient(batching_server.hostport)
    doc = client.get_model_config(NAME)
    config = json_format.ParseDict(doc, triton_model_config()())  # unknown fields would raise
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        NAME, "onnxruntime_onnx", "onnxruntime", 64)
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [("x", [4], 11)]  # TYPE_FP32
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    domain = json.loads(config.parameters["onnxgate_verified_domain"].string_value)
    assert domain["x"][0]["max"] == 64
    assert client.get_model_config(NAME, model_version="1") == doc
    status, _, body = request(batching_server, "GET", "/v2/models/other/config")
    assert status == 404 and strict(body)["allowed"] == {"models": [NAME]}


def test_metadata_and_the_start_up_line_say_dynamic_batching_and_its_limits(batching_server, bundle):
    meta = httpclient.InferenceServerClient(batching_server.hostport).get_model_metadata(NAME)
    batching = meta["parameters"]["dynamic_batching"]
    proof = batching.pop("proof")
    assert batching == {
        "enabled": True, "max_batch": 8, "timeout_ms": 5.0, "batch_dim": "B",
        "verified": {"dim": "B", "min": 1, "max": 64, "multiple_of": None, "source": "verified domain"}}
    assert proof["passed"] and proof["max_batch"] == 64 and proof["source"] == "the bundle's claim"
    assert proof["sizes"] == [2, 3, 4, 8, 16, 64] and proof["bound"]["y"] < 1e-5
    assert meta["parameters"]["max_queue"] is None and meta["parameters"]["auth"] == "off"
    assert "dynamic batching on: up to 8 rows per run, waiting at most 5 ms, within B: 1..64" in batching_server.log
    assert "admission unlimited; auth off; gRPC off" in batching_server.log
    server_meta = httpclient.InferenceServerClient(batching_server.hostport).get_server_metadata()
    assert "model_configuration" in server_meta["extensions"]
    with ServerProcess(bundle) as plain:
        meta = httpclient.InferenceServerClient(plain.hostport).get_model_metadata(NAME)
        config = httpclient.InferenceServerClient(plain.hostport).get_model_config(NAME)
    assert meta["parameters"]["dynamic_batching"] == {"enabled": False} and "dynamic_batching" not in config
    assert "dynamic batching off" in plain.log


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer_equals_onnxruntime(batching_server, bundle, binary):
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    client = httpclient.InferenceServerClient(batching_server.hostport)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = client.infer(NAME, [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
    np.testing.assert_array_equal(out.as_numpy("y"), onnxruntime_outputs(bundle, x))


# ------------------------------------------------------------------------------------------ model names


def test_one_model_name_locally_in_triton_and_in_kserve(bundle, tmp_path, capsys):
    """--model-name My_Model: /v2/models/My_Model here, in the Triton repository and behind KServe (Triton runtime);
    only the InferenceService object takes the Kubernetes form (my-model), reported apart."""
    yaml = pytest.importorskip("yaml")
    from google.protobuf import text_format

    assert main(["serve", str(bundle), "--export-config", "kserve", str(tmp_path / "k"), "--model-name", "My_Model",
                 "--max-batch", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["result"]
    assert (result["model"], result["resource_name"]) == ("My_Model", "my-model")
    assert result["dynamic_batching"] == {"preferred_batch_size": [16], "max_queue_delay_microseconds": 2000}
    service = yaml.safe_load((tmp_path / "k" / "inferenceservice.yaml").read_text())
    assert service["metadata"]["name"] == "my-model"
    assert service["metadata"]["annotations"]["onnxgate.io/model-name"] == "My_Model"
    config = text_format.Parse((tmp_path / "k" / "model_repository" / "My_Model" / "config.pbtxt").read_text(),
                               triton_model_config()())
    assert config.name == "My_Model" and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(config.dynamic_batching.preferred_batch_size) == [16]

    assert main(["serve", str(bundle), "--export-config", "triton", str(tmp_path / "t"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["result"]
    config = text_format.Parse((tmp_path / "t" / NAME / "config.pbtxt").read_text(), triton_model_config()())
    assert config.name == NAME and not config.HasField("dynamic_batching")  # batching off unless asked
    assert result["dynamic_batching"] is None and any("dynamic_batching is off" in n for n in result["notes"])
    with ServerProcess(bundle, "--model-name", "My_Model") as srv:
        assert httpclient.InferenceServerClient(srv.hostport).get_model_metadata("My_Model")["name"] == "My_Model"


def test_export_refuses_dynamic_batching_for_a_model_that_mixes_rows(tmp_path, capsys):
    mixing = tiny_bundle(tmp_path / "mix", mixes_rows=True)
    code = main(["serve", str(mixing), "--export-config", "triton", str(tmp_path / "t"), "--max-batch", "8", "--json"])
    envelope = json.loads(capsys.readouterr().out)
    assert code == 2 and "changes by up to" in envelope["reason"] and "batch companions" in envelope["reason"]
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, flag", [
    (["--max-queue", "0"], "--max-queue"),
    (["--grpc-port", "70000"], "--grpc-port"),
    (["--port", "8123", "--grpc-port", "8123"], "--grpc-port"),
    (["--auth-token-file", "TOKEN_SHORT"], "the token must be"),
    (["--auth-token-file", "MISSING"], "--auth-token-file"),
], ids=["queue-0", "grpc-port-range", "same-port", "short-token", "missing-token-file"])
def test_bad_serving_flags_are_exit_2_naming_the_flag(bundle, tmp_path, capsys, args, flag):
    (tmp_path / "short").write_text("abc\n")
    args = [{"TOKEN_SHORT": str(tmp_path / "short"), "MISSING": str(tmp_path / "missing")}.get(a, a) for a in args]
    assert main(["serve", str(bundle), *args, "--json"]) == 2
    assert flag in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- auth


def test_a_bearer_token_is_required_everywhere_but_health(bundle, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    x = np.ones((1, 4), np.float32)
    with ServerProcess(bundle, "--auth-token-file", str(token_file)) as srv:
        assert "auth bearer token (health endpoints open)" in srv.log and TOKEN not in srv.log
        open_ = [request(srv, "GET", p)[0] for p in ("/v2/health/live", "/v2/health/ready")]
        refused = [request(srv, m, p, b, h) for m, p, b, h in [
            ("GET", f"/v2/models/{NAME}", None, {}),
            ("GET", f"/v2/models/{NAME}/config", None, {}),
            ("GET", "/metrics", None, {}),
            ("GET", "/v2", None, {"Authorization": "Bearer wrong-token-0123456789"}),
            ("POST", f"/v2/models/{NAME}/infer", infer_body(x), {"Content-Type": "application/json"}),
            ("POST", f"/v2/models/{NAME}/infer", infer_body(x), {"Authorization": TOKEN}),  # no "Bearer"
        ]]
        good = {"Authorization": f"Bearer {TOKEN}"}
        client = httpclient.InferenceServerClient(srv.hostport)
        tensor = httpclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        y = client.infer(NAME, [tensor], headers=good).as_numpy("y")
        meta_ok = client.get_model_metadata(NAME, headers=good)["name"]
        with pytest.raises(Exception, match="401|bearer token"):
            client.get_model_config(NAME)
        live_after = request(srv, "GET", "/v2/health/live")[0]
    assert open_ == [200, 200] and live_after == 200 and meta_ok == NAME
    for status, headers, body in refused:
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert "bearer token" in strict(body)["error"]
    np.testing.assert_array_equal(y, onnxruntime_outputs(bundle, x))


def test_the_token_may_come_from_the_environment(bundle):
    with ServerProcess(bundle, env={"ONNXGATE_SERVE_TOKEN": TOKEN}) as srv:
        refused = request(srv, "GET", f"/v2/models/{NAME}")[0]
        allowed = request(srv, "GET", f"/v2/models/{NAME}", headers={"Authorization": f"bearer {TOKEN}"})[0]
    assert (refused, allowed) == (401, 200)


# -------------------------------------------------------------------------------------------- admission


def _peak_rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1))


def _burst(srv, count: int, body: str) -> list[tuple[int, dict, bytes]]:
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def one(i):
        barrier.wait(10)
        try:
            results[i] = request(srv, "POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json"})
        except OSError as exc:  # a refused connection would be a finding: kept and asserted on
            results[i] = (0, {}, str(exc).encode())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's RSS from /proc")
def test_beyond_max_queue_a_503_with_retry_after_and_the_server_stays_healthy(bundle):
    """Requests wait 400 ms in the batcher (8 rows never arrive), so a burst holds the queue full: 3 are admitted,
    the rest get a 503 JSON with Retry-After. The server's peak memory after a burst of 16 stays where it is through
    a burst of 32: refused bodies are dropped, not queued. Bounded: 16 + 32 requests of 256 KiB, on loopback."""
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    padded = infer_body(x)[:-1] + ', "id": "' + "p" * (256 << 10) + '"}'  # a 256 KiB body, refused ones dropped
    with ServerProcess(bundle, "--max-batch", "8", "--batch-timeout-ms", "400", "--max-queue", "3") as srv:
        pid = srv.process.pid
        first = _burst(srv, 16, padded)
        rss_before = _peak_rss_kib(pid)
        later = _burst(srv, 32, padded)
        rss_after = _peak_rss_kib(pid)
        health = [request(srv, "GET", p)[0] for p in ("/v2/health/live", "/v2/health/ready")]
        calm = [request(srv, "POST", f"/v2/models/{NAME}/infer", infer_body(x),
                        {"Content-Type": "application/json"}) for _ in range(4)]
        metrics = request(srv, "GET", "/metrics")[2].decode()
    every = first + later
    statuses = [r[0] for r in every]
    assert set(statuses) <= {200, 503}, statuses  # no 5xx but the admission refusal, no dropped connection
    assert statuses.count(503) >= 16 and statuses.count(200) >= 6  # at least 3 admitted per burst
    for status, headers, body in every:
        doc = strict(body)
        if status == 503:
            assert headers["retry-after"] == "1" and doc["allowed"] == {"max_queue": 3}
            assert "--max-queue 3" in doc["error"]
        else:
            np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(1, 3), x @ W + B, rtol=1e-6)
    assert health == [200, 200] and [c[0] for c in calm] == [200] * 4
    assert rss_after - rss_before < 12 << 10, (rss_before, rss_after)  # KiB: 29+ refused bodies (7+ MiB) not kept
    assert f'onnxgate_requests_total{{code="503",endpoint="infer"}} {statuses.count(503)}.0' in metrics


# ------------------------------------------------------------------------- the recommended runtime (OpenVINO)


def _recommending(bundle: Path, where: Path, config_id: str, precision: str = "fp32") -> Path:
    """A copy of ``bundle`` with the `onnxgate run` report next to it recommending ``config_id``."""
    import shutil

    copy = shutil.copytree(bundle, where / "out" / "bundle")
    report = {"stages": {"bench": {"recommendation": {"config_id": config_id, "runtime": config_id.split(":")[0],
                                                      "verification": {"precision": precision}}}}}
    (where / "out" / "report.json").write_text(json.dumps(report))
    return copy


def test_serve_runs_the_recommended_openvino_configuration_at_its_verified_precision(bundle, tmp_path):
    pytest.importorskip("openvino")
    copy = _recommending(bundle, tmp_path, "openvino:base/f32/t1")
    x = np.random.default_rng(5).normal(size=(4, 4)).astype(np.float32)
    with ServerProcess(copy) as srv:
        client = httpclient.InferenceServerClient(srv.hostport)
        meta = client.get_model_metadata(NAME)
        config = client.get_model_config(NAME)
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        y = client.infer(NAME, [tensor]).as_numpy("y")
    assert re.search(r"runtime: OpenVINO \S+ CPU, PERFORMANCE mode, LATENCY hint, INFERENCE_PRECISION_HINT=f32, "
                     r"1 thread\(s\) \(from the bundle's benchmark \(.*report.json: openvino:base/f32/t1, verified "
                     r"at f32\)\)", srv.log), srv.log
    params = meta["parameters"]
    assert meta["platform"] == "openvino" and params["runtime"] == "openvino"
    assert "INFERENCE_PRECISION_HINT=f32" in params["runtime_config"] and params["threads"] == 1
    assert params["self_check"][0]["passed"] is True
    assert config["backend"] == "openvino" and "platform" not in config
    np.testing.assert_allclose(y, onnxruntime_outputs(bundle, x), rtol=1e-5, atol=1e-5)

    with ServerProcess(copy, "--runtime", "onnxruntime") as srv:
        meta = httpclient.InferenceServerClient(srv.hostport).get_model_metadata(NAME)
    assert meta["parameters"]["runtime"] == "onnxruntime"
    assert meta["parameters"]["runtime_source"] == "--runtime onnxruntime"


def test_openvino_left_to_choose_is_pinned_to_the_precision_the_benchmark_verified(bundle, tmp_path):
    """`openvino:base/t1` (OpenVINO's own choice) verified at bf16: served pinned to bf16, self-checked at bf16's
    tolerance (wider than the bundle's float32 one); onnxruntime's recommendation keeps onnxruntime."""
    pytest.importorskip("openvino")
    from onnxgate.serve.contract import load_served_model

    model = load_served_model(_recommending(bundle, tmp_path / "bf16", "openvino:base/t1", "bf16"))
    assert model.runtime == "openvino" and "INFERENCE_PRECISION_HINT=bf16" in model.runtime_config
    assert model.self_check[0]["passed"] and model.self_check[0]["rtol"] > model.manifest["tolerances"]["y"]["rtol"]
    plain = load_served_model(_recommending(bundle, tmp_path / "ort", "onnxruntime:base/t1"))
    assert plain.runtime == "onnxruntime" and plain.threads == 1
    forced = load_served_model(bundle, runtime="openvino")
    assert "INFERENCE_PRECISION_HINT=f32" in forced.runtime_config and forced.self_check[0]["rtol"] == 1e-3
