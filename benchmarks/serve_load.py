"""A bounded loopback load test of `onnxgate serve`, next to the same model's in-process onnxruntime throughput.

    .venv/bin/python benchmarks/serve_load.py [--models digits,mobilenet_v2] [--requests 2000] [--concurrency 32]
                                              [--max-batch 32] [--batch-timeout-ms 2] [--protocols http,grpc]
                                              [--runtimes onnxruntime,openvino] [--results benchmarks/RESULTS.md]

For each model a bundle is built (the digits CNN trained on scikit-learn's digits; torchvision's MobileNetV2 with
its real ImageNet weights, ../shared/REAL_ASSETS.md), then the real command is started on a free loopback port
(`onnxgate serve BUNDLE --port 0`), once plain and once with dynamic batching (`--max-batch`), and ``--requests``
batch-1 requests are sent with ``--concurrency`` in flight (binary tensors, over aiohttp keep-alive connections:
the transport of tritonclient's asyncio client, without its per-request objects; the tests use tritonclient itself). Every response is checked against onnxruntime in this process at the bundle's tolerances (a wrong
answer counts as an error). Reported: requests/s, p50/p99 latency per request (client side, send to full response),
errors; and the in-process baselines: one batch-1 `session.run` after another (what a request costs without HTTP),
and runs of ``--max-batch`` rows (what batching can reach at best). The ratio is served requests/s over the in-process
batch-1 runs/s. Client and server share this machine's cores: the client's own CPU time is part of the overhead.

``--protocols``: HTTP (binary tensors over aiohttp) and gRPC (tritonclient.grpc.aio, the KServe/Triton
``GRPCInferenceService``; the server started with ``--grpc-port 0``). ``--runtimes``: each runtime is served with
``onnxgate serve --runtime R`` and compared with the same runtime in-process (onnxruntime's ``OrtRunner``; OpenVINO's
``OpenVinoSession``, the class serve runs, at float32 as verified): the runtime that wins in-process is the one a
bundle's benchmark recommends, so its row is "the recommended runtime". MobileNetV2 gets ``--requests-large``
requests (a 40 ms model: the same number of seconds as the digits CNN's requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))
START, END = "<!-- serve_load:start -->", "<!-- serve_load:end -->"


def build_bundle(model: str, root: Path) -> Path:
    from onnxgate.cli.main import main

    if model == "digits":
        from onnxgate.pipeline import bundle_from_ref
        from onnxgate.spec import ExportConfig, parse_dim, parse_input

        config = ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),), dims=(parse_dim("B=1..64@4"),))
        return bundle_from_ref("onnxgate.examples.digits:trained_digits_cnn", root / "digits", config=config)
    from test_real_mobilenet import PREPROCESS, WEIGHTS

    code = main(["run", "torchvision:mobilenet_v2", "--weights", WEIGHTS, "--input", "x:Bx3x224x224:float32",
                 "--dim", "B=1..32@2", "--strategy", "torchscript", "--meta", f"preprocess={PREPROCESS}",
                 "--bench", "none", "--no-optimize", "-o", str(root / "mobilenet")])
    assert code == 0, "bundling MobileNetV2 failed"
    return root / "mobilenet" / "bundle"


def feeds_for(bundle: Path, count: int = 64) -> tuple[str, list[np.ndarray]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    (spec,) = manifest["inputs"]
    rng = np.random.default_rng(0)
    shape = [1] + [int(d) for d in spec["shape"][1:]]
    return spec["name"], [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def in_process(bundle: Path, name: str, feeds: list[np.ndarray], requests: int, batch: int,
               runtime: str = "onnxruntime") -> dict:
    """Runs/s of batch-1 runs one after another, and rows/s at ``batch`` rows, with the server's session settings
    (onnxruntime: default threads, level all; OpenVINO: ``OpenVinoSession`` at f32, serve's class)."""
    if runtime == "openvino":
        from onnxgate.runtimes.openvino import OpenVinoSession

        session = OpenVinoSession(bundle / "model.onnx", threads=None, precision="f32")
        run = lambda feed: session.run(["output"], {name: feed})[0]  # noqa: E731
    else:
        from onnxgate.runtimes.ort import OrtRunner

        runner = OrtRunner(str(bundle / "model.onnx"))
        run = lambda feed: runner.run({name: feed})["output"]  # noqa: E731
    for feed in feeds[:5]:
        run(feed)
    start = time.perf_counter()
    for i in range(requests):
        run(feeds[i % len(feeds)])
    single = requests / (time.perf_counter() - start)
    stacked = np.concatenate([feeds[i % len(feeds)] for i in range(batch)])
    runs = max(3, requests // batch)
    start = time.perf_counter()
    for _ in range(runs):
        run(stacked)
    batched = runs * batch / (time.perf_counter() - start)
    return {"single": single, "batched": batched, "expected": [run(f) for f in feeds]}


def request_body(name: str, feed: np.ndarray) -> tuple[bytes, str]:
    """An Open Inference Protocol request with the binary-tensor extension, as tritonclient builds it."""
    head = json.dumps({"inputs": [{"name": name, "shape": list(feed.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": feed.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + feed.tobytes(), str(len(head))


def output_of(body: bytes, header_length: str) -> np.ndarray:
    head = json.loads(body[:int(header_length)])
    (out,) = head["outputs"]
    return np.frombuffer(body[int(header_length):], dtype=np.float32).reshape(out["shape"])


async def drive(send, count: int, expected: list[np.ndarray], requests: int, concurrency: int, tol: dict) -> dict:
    """``requests`` calls of ``send(i)`` (an awaitable of feed ``i % count``'s output, None on a refused answer),
    ``concurrency`` in flight; each latency is the client's, each answer held to ``expected`` at ``tol`` (a wrong
    answer counts as an error)."""
    latencies, errors, wrong, next_index = [], 0, 0, iter(range(requests))

    async def worker():
        nonlocal errors, wrong
        for i in next_index:
            start = time.perf_counter()
            try:
                got = await send(i % count)
            except Exception:  # noqa: BLE001  counted, not raised: the table reports errors
                got = None
            if got is None:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            if not np.allclose(got, expected[i % count], rtol=tol["rtol"], atol=tol["atol"]):
                wrong += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "throughput": len(latencies) / seconds, "errors": errors + wrong, "wrong": wrong,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None}


async def load(url: str, model: str, name: str, feeds: list[np.ndarray], expected: list[np.ndarray],
               requests: int, concurrency: int, tol: dict) -> dict:
    """The load over HTTP, aiohttp keep-alive connections (the transport tritonclient's asyncio client uses,
    without its per-request objects: on two shared cores the load generator must cost less than the server)."""
    import aiohttp

    bodies = [request_body(name, feed) for feed in feeds]
    endpoint = f"http://{url}/v2/models/{model}/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def send(i: int):
            body, header = bodies[i]
            async with session.post(endpoint, data=body, headers={
                    "Inference-Header-Content-Length": header, "Content-Type": "application/octet-stream"}) as r:
                data = await r.read()
                status, length = r.status, r.headers.get("Inference-Header-Content-Length")
            return output_of(data, length) if status == 200 and length else None

        return await drive(send, len(feeds), expected, requests, concurrency, tol)


async def load_grpc(target: str, model: str, name: str, feeds: list[np.ndarray], expected: list[np.ndarray],
                    requests: int, concurrency: int, tol: dict) -> dict:
    """The same load over gRPC, with tritonclient's asyncio client (one channel, ``concurrency`` calls in flight)."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(target)

    async def send(i: int):
        tensor = grpcclient.InferInput(name, list(feeds[i].shape), "FP32")
        tensor.set_data_from_numpy(feeds[i])
        return (await client.infer(model, [tensor])).as_numpy("output")

    try:
        return await drive(send, len(feeds), expected, requests, concurrency, tol)
    finally:
        await client.close()


def served(bundle: Path, args, extra: list[str], feeds, expected, protocol: str = "http",
           requests: int | None = None) -> dict:
    from onnxgate.serve.launch import ServerProcess

    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["inputs"][0]["name"]
    tol = next(iter(manifest["tolerances"].values()))
    requests = requests or args.requests
    with ServerProcess(bundle, *extra, *(["--grpc-port", "0"] if protocol == "grpc" else [])) as srv:
        model = _model_name(srv)
        if protocol == "grpc":
            row = asyncio.run(load_grpc(srv.grpc_target, model, name, feeds, expected, requests, args.concurrency,
                                        tol))
        else:
            row = asyncio.run(load(srv.hostport, model, name, feeds, expected, requests, args.concurrency, tol))
        row["requests"] = requests
        metrics = _get(srv.url + "/metrics")
        code = srv.stop()
    runs = re.search(r"^onnxgate_batch_requests_count (\S+)$", metrics, re.M)
    row["runs"] = int(float(runs.group(1))) if runs else None
    row["exit"] = code
    return row


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def _model_name(srv) -> str:
    match = re.search(r"serving '([^']+)'", srv.log)
    return match.group(1)


def table(rows: list[dict], args) -> str:
    head = ("| model | runtime | protocol | configuration | requests | concurrency | req/s | p50 ms | p99 ms | errors | "
            "runs | in-process batch-1 runs/s | served / in-process |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['protocol']} | {r['config']} | {r['requests']} | "
                     f"{args.concurrency} | {r['throughput']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['errors']} | {r['runs']} | {r['single']:.0f} | {r['throughput'] / r['single']:.2f}x |")
    return head + "\n".join(lines) + "\n"


def write_results(path: Path, rows: list[dict], baselines: dict, args, seconds: float) -> None:
    cores = os.cpu_count()
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    text = (f"{START}\n## Serving: loopback load test (`benchmarks/serve_load.py`)\n\n"
            f"`.venv/bin/python benchmarks/serve_load.py --models {args.models} --requests {args.requests} "
            f"--requests-large {args.requests_large} --concurrency {args.concurrency} --max-batch {args.max_batch} "
            f"--batch-timeout-ms {args.batch_timeout_ms} --protocols {args.protocols} --runtimes {args.runtimes}`"
            f" ({seconds:.0f} s, {cores} cores shared by the client, the server and other work on this machine; load "
            f"average {load} at the end). "
            "Batch-1 requests, binary tensors, aiohttp keep-alive connections; latency is the client's, send to full "
            "response; every answer checked against onnxruntime in the benchmark process at the bundle's "
            "tolerances (a wrong answer would count as an error). The ratio is served req/s over in-process "
            "batch-1 `session.run` calls per second (same model, same session settings, no HTTP).\n\n"
            + table(rows, args) + "\nIn-process with " + ", ".join(
                f"{m}: {b['batched']:.0f} rows/s at {args.max_batch} rows per run" for m, b in baselines.items())
            + " (what merging can reach at best).\n" + END + "\n")
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in old and END in old:
        new = old[:old.index(START)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenet_v2")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--requests-large", type=int, default=400, help="requests per row for MobileNetV2")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--results", type=Path, default=None, help="Write the table into this markdown file.")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, baselines = [], {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        for model in args.models.split(","):
            bundle = build_bundle(model, Path(tmp))
            name, feeds = feeds_for(bundle)
            requests = args.requests if model == "digits" else args.requests_large
            for runtime in args.runtimes.split(","):
                base = in_process(bundle, name, feeds, min(requests, 2000), args.max_batch, runtime)
                baselines[f"{model} on {runtime}"] = base
                for protocol in args.protocols.split(","):
                    for config, extra in (("serve", []), (f"serve --max-batch {args.max_batch}",
                                                          ["--max-batch", str(args.max_batch), "--batch-timeout-ms",
                                                           str(args.batch_timeout_ms)])):
                        row = served(bundle, args, ["--runtime", runtime, *extra], feeds, base["expected"], protocol,
                                     requests)
                        rows.append({"model": model, "runtime": runtime, "protocol": protocol, "config": config,
                                     **row, "single": base["single"]})
                        print(f"{model} / {runtime} / {protocol} / {config}: {row['throughput']:.0f} req/s, p50 "
                              f"{row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors']}, runs "
                              f"{row['runs']} (in-process batch-1: {base['single']:.0f}/s, batch {args.max_batch}: "
                              f"{base['batched']:.0f} rows/s)", flush=True)
    print(table(rows, args))
    if args.results:
        write_results(args.results, rows, baselines, args, time.perf_counter() - started)


if __name__ == "__main__":
    main()
