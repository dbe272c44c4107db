"""The KServe / Triton gRPC inference protocol (``inference.GRPCInferenceService``), so ``tritonclient.grpc`` works
unmodified: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig and ModelInfer (typed
``contents`` and ``raw_input_contents``; outputs come back as ``raw_output_contents``, as Triton sends them). The
other methods (streaming, statistics, repository, shared memory, trace, logging) answer UNIMPLEMENTED.

It is not a second server: the servicer runs on ``grpc.aio`` in the HTTP app's own event loop (started by its
lifespan; ``start_grpc``) and calls what the HTTP routes call — ``ServedModel.check_declared`` before a tensor
is decoded, ``check_feed`` (the verified domain, NaN/Inf, value ranges), the shared ``Executor`` (so gRPC and HTTP
requests merge in one dynamic batch), ``check_outputs``, the one ``Admission`` limit and the one ``Metrics``.
The messages are the generated ones ``tritonclient`` ships (``tritonclient.grpc.service_pb2``), so server and
client agree on the wire by construction.

A refusal aborts the call with the gRPC code matching its HTTP status (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED,
404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE) and, as details, the same strict JSON body the HTTP route
gives (``{"error": ..., "input": ..., "allowed": ...}``). An internal failure is INTERNAL with an id; the traceback
goes to the log only. Auth: the bearer token travels as ``authorization`` metadata; ServerLive and ServerReady
stay open like the HTTP health routes.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from functools import wraps

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .._version import __version__
from .protocol import DATATYPES, NonFiniteOutput, RequestError, datatype_of, dumps_strict, json_safe
from .service import EXTENSIONS, UNAUTHORIZED, VERSION, authorized, known

log = logging.getLogger("onnxgate.serve")
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         503: grpc.StatusCode.UNAVAILABLE}
# typed InferTensorContents field per datatype, and the numpy type its values are read as before range checks
CONTENTS = {"BOOL": ("bool_contents", "bool"), "INT8": ("int_contents", "int64"), "INT16": ("int_contents", "int64"),
            "INT32": ("int_contents", "int64"), "INT64": ("int64_contents", "int64"),
            "UINT8": ("uint_contents", "uint64"), "UINT16": ("uint_contents", "uint64"),
            "UINT32": ("uint_contents", "uint64"), "UINT64": ("uint64_contents", "uint64"),
            "FP32": ("fp32_contents", "float32"), "FP64": ("fp64_contents", "float64")}
MAX_DIMS = 64


async def start_grpc(state) -> grpc.aio.Server:
    """Start the gRPC server for the app whose ``state`` holds model, executor, admission, metrics and settings."""
    settings = state.settings
    options = [("grpc.max_receive_message_length", settings.max_body),
               ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0)]
    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    host = f"[{settings.grpc_host}]" if ":" in settings.grpc_host else settings.grpc_host
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC listening on %s:%d", host, port)
    return server


def rpc(endpoint: str, *, open_: bool = False):
    """Servicer method wrapper: auth, metrics, and every failure turned into a gRPC status with a JSON body."""
    def decorate(fn):
        @wraps(fn)
        async def wrapper(self, request, context):
            start = time.perf_counter()
            code, details = grpc.StatusCode.OK, None
            try:
                if not open_ and not _authorized(self.token, context):
                    raise RequestError(401, UNAUTHORIZED["error"], allowed=UNAUTHORIZED["allowed"])
                return await fn(self, request, context)
            except RequestError as exc:
                code, details = CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.body()
                if exc.status == 503:
                    context.set_trailing_metadata((("retry-after", str(exc.allowed.get("retry_after_s", 1))),))
            except NonFiniteOutput as exc:
                error_id = uuid.uuid4().hex[:16]
                log.warning("non-finite output %s: %s", error_id, exc.message)
                code, details = grpc.StatusCode.INTERNAL, {"error": exc.message, "output": exc.output, "id": error_id}
            except Exception:  # noqa: BLE001  the server stays up; the log has the traceback
                error_id = uuid.uuid4().hex[:16]
                log.exception("internal error %s", error_id)
                code, details = grpc.StatusCode.INTERNAL, {"error": "internal error", "id": error_id}
            finally:
                self.metrics.observe_grpc(fn.__name__, endpoint, code.name, time.perf_counter() - start)
            await context.abort(code, dumps_strict(json_safe(details)).decode("ascii"))
        return wrapper
    return decorate


def _authorized(token: str | None, context) -> bool:
    if token is None:
        return True
    header = next((v for k, v in context.invocation_metadata() or () if k.lower() == "authorization"), None)
    return authorized(token, header if isinstance(header, str) else None)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state):
        self.state = state
        self.model, self.executor, self.metrics = state.model, state.executor, state.metrics
        self.admission, self.token = state.admission, state.settings.auth_token

    def _known(self, name: str, version: str) -> None:
        known(self.model, name, version or None)

    @rpc("health", open_=True)
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @rpc("health", open_=True)
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    @rpc("health")
    async def ModelReady(self, request, context):
        try:  # an unknown model or version is not ready (tritonclient's is_model_ready: False, as over HTTP's 404)
            self._known(request.name, request.version)
        except RequestError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @rpc("metadata")
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="onnxgate", version=__version__, extensions=EXTENSIONS)

    @rpc("metadata")
    async def ModelMetadata(self, request, context):
        self._known(request.name, request.version)
        doc = self.state.served_metadata()

        def tensors(items):
            return [service_pb2.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                                     shape=t["shape"]) for t in items]
        return service_pb2.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                                                 inputs=tensors(doc["inputs"]), outputs=tensors(doc["outputs"]))

    @rpc("metadata")
    async def ModelConfig(self, request, context):
        from google.protobuf import json_format

        self._known(request.name, request.version)
        config = json_format.ParseDict(self.state.model_config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    @rpc("infer")
    async def ModelInfer(self, request, context):
        self._known(request.model_name, request.model_version)
        if not self.admission.enter():
            raise RequestError(503, self.admission.refusal()["error"],
                               allowed={"max_queue": self.admission.limit, "retry_after_s": 1})
        try:
            model = self.model
            feed = model.check_feed(decode_inputs(request, model.check_declared))
            names = [o.name for o in model.outputs]
            asked = [o.name for o in request.outputs] or names
            unknown = [n for n in asked if n not in names]
            if unknown:
                raise RequestError(400, f"The model has no output '{unknown[0][:200]}'.", allowed={"outputs": names})
            result = await self.executor.run(feed)
            chosen = {n: result[n] for n in asked}
            model.check_outputs(chosen)
            response = service_pb2.ModelInferResponse(model_name=model.name, model_version=VERSION, id=request.id)
            for name, array in chosen.items():
                array = np.ascontiguousarray(array)
                response.outputs.add(name=name, datatype=datatype_of(array.dtype.name), shape=list(array.shape))
                response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
            return response
        finally:
            self.admission.leave()


def decode_inputs(request, check) -> dict[str, tuple[str, np.ndarray]]:
    """The request's tensors as (datatype, array), each judged by ``check(name, datatype, shape)`` before its data
    is decoded; RequestError (400) for anything malformed, like the HTTP protocol's."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; when "
                                "it is used, every input travels in it, in order.",
                           allowed={"raw_input_contents": len(request.inputs)})
    if not request.inputs:
        raise RequestError(400, "The request has no inputs (one tensor per model input).")
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if not name:
            raise RequestError(400, f"inputs[{index}] has no name.")
        if name in tensors:
            raise RequestError(400, f"The input '{name[:200]}' is given twice.", input=name[:200])
        if datatype not in DATATYPES:
            raise RequestError(400, f"The input '{name[:200]}' has datatype '{datatype[:40]}', which is not a numeric "
                                    "Open Inference Protocol datatype.", input=name[:200], allowed=sorted(DATATYPES))
        if len(shape) > MAX_DIMS or not all(0 <= d < 2**40 for d in shape):
            raise RequestError(400, f"The input '{name[:200]}' needs a shape of non-negative sizes.", input=name[:200])
        check(name, datatype, shape)
        dtype, count = np.dtype(DATATYPES[datatype]), math.prod(shape)
        typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        if raw:
            if typed:
                raise RequestError(400, f"The input '{name}' has both typed contents and raw_input_contents.",
                                   input=name)
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise RequestError(400, f"The raw contents of input '{name}' are {len(data):,} bytes, but shape "
                                        f"{list(shape)} of {datatype} takes {count * dtype.itemsize:,}.", input=name)
            array = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count).astype(dtype, copy=False)
        else:
            array = _typed(tensor, name, datatype, dtype, count)
        tensors[name] = (datatype, array.reshape(shape))
    return tensors


def _typed(tensor, name: str, datatype: str, dtype: np.dtype, count: int) -> np.ndarray:
    if datatype not in CONTENTS:
        raise RequestError(400, f"The input '{name}' is {datatype}, which has no typed contents field: send it in "
                                "raw_input_contents.", input=name)
    field, wide = CONTENTS[datatype]
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise RequestError(400, f"The input '{name}' holds {len(values):,} values in contents.{field}, but its shape "
                                f"needs {count:,}.", input=name, allowed={"contents": field})
    array = np.fromiter(values, dtype=wide, count=count)
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise RequestError(400, f"The contents of input '{name}' hold values outside {datatype}'s range "
                                    f"{info.min}..{info.max}.", input=name)
    return array.astype(dtype, copy=False)
