"""Issue 22 item 5: what `onnxgate serve` answers must be valid JSON, non-finite numbers must not pass for answers,
and a client must not hold connections open forever.

The served model is y = Log(x) (built with onnx.helper, bundled with golden inputs in 0.5..2): finite for positive
inputs, NaN for negative ones — a real model that leaves its verified domain on request. The server is the real
command on a loopback port (``ServerProcess``), with a 1 s header and 2 s body timeout; clients are raw sockets,
http.client and tritonclient. Every JSON body is parsed with a parser that refuses NaN/Infinity.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")

from onnxgate.bundle import write_bundle  # noqa: E402
from onnxgate.serve.launch import ServerProcess  # noqa: E402

NAME = "log"
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 2.0


def strict(body: bytes):
    """JSON as every parser reads it: NaN, Infinity and -Infinity are errors."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("log")
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(root / "log.onnx"))
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, 4)).astype(np.float32)
    return write_bundle(root / "bundle", model_path=root / "log.onnx", golden_inputs={"x": x},
                        reference_outputs={"y": np.log(x)}, source_ref="log.onnx")


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess(bundle, "--header-timeout-s", str(HEADER_TIMEOUT), "--body-timeout-s", str(BODY_TIMEOUT),
                       "--model-name", NAME) as srv:
        yield srv


def call(srv, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(srv.hostport, timeout=30)
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def infer_text(data: str) -> str:
    return '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [%s]}]}' % data


def wait_for(srv, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in srv.log and time.monotonic() < deadline:
        time.sleep(0.05)
    return srv.log


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1e39"])
def test_json_numbers_that_decode_to_infinity_are_400_naming_the_input(server, number):
    status, _, body = call(server, "POST", f"/v2/models/{NAME}/infer", infer_text(", ".join([number] + ["1"] * 7)),
                           {"Content-Type": "application/json"})
    doc = strict(body)
    assert status == 400 and doc["input"] == "x", doc
    assert "infinite" in doc["error"] and "[0, 0]" in doc["error"]


def test_json_nan_literals_are_400_too(server):
    status, _, body = call(server, "POST", f"/v2/models/{NAME}/infer", infer_text(", ".join(["NaN"] + ["1"] * 7)),
                           {"Content-Type": "application/json"})
    assert status == 400 and "NaN" in strict(body)["error"]


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_binary_tensors_with_nan_or_inf_are_400_naming_the_input(server, bad):
    client = httpclient.InferenceServerClient(url=server.hostport)
    x = np.ones((2, 4), np.float32)
    x[1, 2] = bad
    tensor = httpclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(Exception) as info:
        client.infer(NAME, [tensor])
    client.close()
    assert "'x'" in str(info.value) and "[1, 2]" in str(info.value) and "400" in str(info.value)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_nan_output_where_the_reference_is_finite_is_500_with_an_id(server, binary):
    doc = json.loads(infer_text(", ".join(["-1"] + ["1"] * 7)))  # Log(-1) = NaN
    if binary:
        doc["parameters"] = {"binary_data_output": True}
    status, _, body = call(server, "POST", f"/v2/models/{NAME}/infer", json.dumps(doc),
                           {"Content-Type": "application/json"})
    answer = strict(body)
    assert status == 500 and answer["output"] == "y" and len(answer["id"]) == 16, answer
    assert "outside the domain" in answer["error"]
    log = wait_for(server, answer["id"])
    assert answer["id"] in log and "Traceback" not in log


def test_the_finite_answer_still_comes_back(server):
    status, _, body = call(server, "POST", f"/v2/models/{NAME}/infer", infer_text(", ".join(["1"] * 8)),
                           {"Content-Type": "application/json"})
    assert status == 200 and strict(body)["outputs"][0]["data"] == [0.0] * 8


def test_every_json_response_parses_strictly(server):
    cases = [
        ("GET", "/v2", None, {}), ("GET", "/v2/health/ready", None, {}), ("GET", f"/v2/models/{NAME}", None, {}),
        ("GET", "/v2/models/other", None, {}), ("GET", "/nowhere", None, {}), ("DELETE", "/v2", None, {}),
        ("POST", f"/v2/models/{NAME}/infer", infer_text("1e999, 1, 1, 1, 1, 1, 1, 1"), {}),
        ("POST", f"/v2/models/{NAME}/infer", infer_text("-5, 1, 1, 1, 1, 1, 1, 1"), {}),
        ("POST", f"/v2/models/{NAME}/infer", infer_text("Infinity, 1, 1, 1, 1, 1, 1, 1"), {}),
        ("POST", f"/v2/models/{NAME}/infer", "{", {}),
        ("POST", f"/v2/models/{NAME}/infer", "x", {"Content-Type": "text/plain"}),
        ("POST", f"/v1/models/{NAME}/classify", b"\x89PNG", {"Content-Type": "image/png"}),
    ]
    seen = set()
    for method, path, body, headers in cases:
        status, media, content = call(server, method, path, body, headers)
        assert media.startswith("application/json"), (path, status, media)
        strict(content)
        seen.add(status)
    assert {200, 400, 404, 405, 500} <= seen
    with socket.create_connection(_address(server), timeout=10) as sock:  # not HTTP at all: uvicorn's 400, as JSON
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        raw = _read_all(sock)
    head, _, content = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and strict(content)["error"]


def _address(srv) -> tuple[str, int]:
    host, port = srv.hostport.rsplit(":", 1)
    return host, int(port)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_slowloris_sockets_are_closed_after_the_header_timeout(server):
    """Five sockets send a header line every 0.2 s and never finish the head; one sends nothing at all. All are
    closed by the server (with a 408 JSON body) after the 1 s header timeout, and it keeps serving meanwhile."""
    start = time.monotonic()
    socks = [socket.create_connection(_address(server), timeout=10) for _ in range(6)]
    for sock in socks[:5]:
        sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\n".encode())
    closed_at: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    for sock in socks:
        sock.setblocking(False)
    while len(closed_at) < len(socks) and time.monotonic() - start < 8:
        for i, sock in enumerate(socks):
            if i in closed_at:
                continue
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                chunk = None
            except ConnectionResetError:
                chunk = b""
            if chunk:
                answers[i] = answers.get(i, b"") + chunk
            elif chunk == b"":
                closed_at[i] = time.monotonic() - start
            elif i < 5:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_at[i] = time.monotonic() - start
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    assert len(closed_at) == len(socks), f"still open after 8 s: {sorted(set(range(6)) - set(closed_at))}"
    assert all(HEADER_TIMEOUT * 0.9 <= t <= HEADER_TIMEOUT + 3 for t in closed_at.values()), closed_at
    for raw in answers.values():
        head, _, content = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and "did not arrive" in strict(content)["error"]
    assert call(server, "GET", "/v2/health/live")[0] == 200
    log = wait_for(server, "--header-timeout-s")
    assert "closed the connection" in log and "Traceback" not in log


def test_a_body_that_stops_coming_is_closed_after_the_body_timeout(server):
    start = time.monotonic()
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 500\r\n\r\n{\"inputs\": ".encode())
        raw = _read_all(sock)
    took = time.monotonic() - start
    assert BODY_TIMEOUT * 0.9 <= took <= BODY_TIMEOUT + 4, took
    head, _, content = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and strict(content)["allowed"] == {"body_timeout_s": BODY_TIMEOUT}
    log = wait_for(server, "--body-timeout-s")
    assert "Traceback" not in log


def test_a_client_that_disconnects_mid_body_is_logged_at_info_without_a_traceback(server):
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 500\r\n\r\n{\"inputs\": ".encode())
        time.sleep(0.3)
    log = wait_for(server, "disconnected before its request was read")
    assert "INFO" in log.split("disconnected before its request was read")[0].rsplit("\n", 1)[-1]
    assert "Traceback" not in log and "internal error" not in log
