"""What the HTTP app and the gRPC service share, so the two protocols answer alike: the model's name check, its
metadata and Triton model configuration as this server runs it (dynamic batching, admission limit, auth), the
admission limit itself, and the bearer-token check. Imports nothing heavy; neither torch nor onnx.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from ..errors import BadInputError
from .protocol import RequestError

VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # no token needed: load balancers' and Kubernetes' probes
RETRY_AFTER_S = 1


class Admission:
    """The inference requests held at once (HTTP and gRPC, on the one event loop), against ``limit``."""

    def __init__(self, limit: int | None):
        self.limit, self.held, self.refused = limit, 0, 0

    def enter(self) -> bool:
        if self.limit and self.held >= self.limit:
            self.refused += 1
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    def refusal(self) -> dict[str, Any]:
        return {"error": f"The server holds {self.held} inference requests, its limit (--max-queue {self.limit}); "
                         f"retry after {RETRY_AFTER_S} s.", "allowed": {"max_queue": self.limit},
                "retry_after_s": RETRY_AFTER_S}


def authorized(token: str | None, header: str | None) -> bool:
    """Whether an ``Authorization`` header value carries the bearer token (compared in constant time)."""
    if token is None:
        return True
    if not header or not header[:7].lower() == "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode("utf-8", "replace"), token.encode())


UNAUTHORIZED = {"error": "This server requires a bearer token: send 'Authorization: Bearer TOKEN'.",
                "allowed": {"authorization": "Bearer <token>", "open": list(OPEN_PATHS)}}


def known(model, name: str, version: str | None = None) -> None:
    if name != model.name:
        raise RequestError(404, f"Unknown model '{name[:200]}'.", allowed={"models": [model.name]})
    if version is not None and version != VERSION:
        raise RequestError(404, f"Model '{name}' has no version '{version[:40]}'.", allowed={"versions": [VERSION]})


def served_metadata(model, settings) -> dict[str, Any]:
    """The model's metadata with how this server runs it: dynamic batching and its limits, admission, auth, gRPC."""
    doc = model.metadata()
    rule = model.batch_rule
    planned = getattr(settings, "batching", None)  # with --max-batch: on within the proof, or off and why
    doc["parameters"]["dynamic_batching"] = (dict(planned) if planned else
                                             {"enabled": True, "max_batch": settings.max_batch,
                                              "timeout_ms": settings.batch_timeout_ms, "batch_dim": rule.name,
                                              "verified": rule.to_dict()}
                                             if settings.max_batch else {"enabled": False})
    doc["parameters"]["max_queue"] = settings.max_queue
    doc["parameters"]["auth"] = "bearer token (health endpoints open)" if settings.auth_token else "off"
    doc["parameters"]["grpc"] = settings.grpc_port is not None
    return doc


def model_config(model, settings) -> dict[str, Any]:
    return triton_config(model, max_batch=settings.max_batch, batch_timeout_ms=settings.batch_timeout_ms,
                         max_queue=settings.max_queue)


def _max_batch_size(model) -> int:
    batch = model.batch_rule
    return batch.max if batch is not None and batch.max is not None else 0


def _dynamic_batching(max_batch: int | None, max_batch_size: int, batch_timeout_ms: float) -> dict[str, Any] | None:
    if not (max_batch and max_batch_size):
        return None
    return {"preferred_batch_size": [max_batch], "max_queue_delay_microseconds": int(batch_timeout_ms * 1000)}


def _unenforced(model, max_batch_size: int) -> list[str]:
    batch, unenforced = model.batch_rule, []
    if batch is not None and (batch.min > 1 or batch.multiple_of):
        unenforced.append(f"batch {batch.name}: {batch.describe()} (Triton accepts 1..{max_batch_size})")
    for tensor in model.inputs:
        for dim in tensor.dims[1 if max_batch_size else 0:]:
            if not dim.fixed and dim.min != dim.max:
                unenforced.append(f"input {tensor.name}, dim {dim.name}: {dim.describe()} (Triton: -1, any size)")
    return unenforced


def triton_config(model, *, max_batch: int | None = None, batch_timeout_ms: float = 2.0,
                  max_queue: int | None = None) -> dict[str, Any]:
    """Triton's model configuration as the JSON its HTTP ``/v2/models/NAME/config`` returns (the ModelConfig
    protobuf's JSON form): what ``config_pbtxt`` writes, with ``dynamic_batching`` when ``max_batch`` merges
    requests (and ``default_queue_policy.max_queue_size`` for an admission limit)."""
    max_batch_size = _max_batch_size(model)
    for tensor in [*model.inputs, *model.outputs]:
        if tensor.dtype not in TRITON_TYPES:
            raise BadInputError(f"The tensor '{tensor.name}' has dtype {tensor.dtype}, which Triton's config cannot "
                                "name.", hint="Serve this bundle with `onnxgate serve` instead.")
    skip = 1 if max_batch_size else 0
    config: dict[str, Any] = {
        "name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": max_batch_size,
        "input": [{"name": t.name, "data_type": TRITON_TYPES[t.dtype], "dims": [d.oip for d in t.dims[skip:]]}
                  for t in model.inputs],
        "output": [{"name": t.name, "data_type": TRITON_TYPES[t.dtype], "dims": [d.oip for d in t.dims[skip:]]}
                   for t in model.outputs],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "version_policy": {"latest": {"num_versions": 1}},
        "parameters": {"onnxgate_verified_domain": {"string_value": json.dumps(
            {t.name: [d.to_dict() for d in t.dims] for t in model.inputs})}},
    }
    if getattr(model, "runtime", "onnxruntime") == "openvino":  # what serves it here (Triton's OpenVINO backend)
        del config["platform"]
        config["backend"] = "openvino"
        config["parameters"]["onnxgate_runtime"] = {"string_value": model.runtime_config}
    dynamic = _dynamic_batching(max_batch, max_batch_size, batch_timeout_ms)
    if dynamic is not None:
        if max_queue:
            dynamic["default_queue_policy"] = {"max_queue_size": max_queue}
        config["dynamic_batching"] = dynamic
    unenforced = _unenforced(model, max_batch_size)
    if unenforced:
        config["parameters"]["onnxgate_unenforced_by_triton"] = {"string_value": "; ".join(unenforced)}
    return config


