"""Prometheus metrics through the official client library (``prometheus_client``).

One ``Metrics`` per app, on its own registry (two apps in one process do not collide). With several uvicorn
workers the server sets ``PROMETHEUS_MULTIPROC_DIR`` before they start: each worker then writes its samples there
and ``/metrics`` aggregates every worker's (the library's multiprocess mode).

Endpoints are labelled by route (``infer``, ``classify``, ``metadata``, ``health``, ``metrics``, ``other``), never by
the raw path, so unknown URLs cannot grow the label set.
"""

from __future__ import annotations

import os

ENDPOINTS = ("infer", "classify", "metadata", "health", "metrics", "other")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("onnxgate_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("onnxgate_request_errors", "Refused (client) and failed (server) requests",
                              ["endpoint", "kind"], registry=self.registry)
        self.latency = Histogram("onnxgate_request_seconds", "Request latency, from first byte to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("onnxgate_inference_seconds", "onnxruntime run time per (merged) batch",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("onnxgate_batch_size", "Rows per onnxruntime run (after dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.merged = Histogram("onnxgate_batch_requests", "Requests merged into one onnxruntime run",
                                buckets=BATCH_BUCKETS, registry=self.registry)
        self.grpc = Counter("onnxgate_grpc_requests", "gRPC calls by method and status code", ["method", "code"],
                            registry=self.registry)

    def observe_grpc(self, method: str, endpoint: str, code: str, seconds: float) -> None:
        """A gRPC call: counted by method and code, its latency under the HTTP route it matches (``endpoint``)."""
        self.grpc.labels(method, code).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code != "OK":
            self.errors.labels(endpoint, "server" if code in ("INTERNAL", "UNKNOWN", "UNAVAILABLE") else "client").inc()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, "client" if status < 500 else "server").inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve at /metrics and its content type (every worker's samples in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def endpoint_of(path: str) -> str:
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "infer"
    if path.startswith("/v1/models/") and path.endswith("/classify"):
        return "classify"
    if path.startswith("/v2/health"):
        return "health"
    if path.startswith("/v2/models/") or path == "/v2":
        return "metadata"
    return "metrics" if path == "/metrics" else "other"
