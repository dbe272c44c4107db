"""The HTTP application (FastAPI on uvicorn): the Open Inference Protocol v2, image classification, metrics.

Routes::

    GET  /v2                                   server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready     liveness, readiness
    GET  /v2/models/{name}[/versions/1]        model metadata: inputs/outputs with their verified dims
    GET  /v2/models/{name}[/versions/1]/ready  model readiness
    GET  /v2/models/{name}[/versions/1]/config model configuration, as Triton's JSON (``export.triton_config``)
    POST /v2/models/{name}[/versions/1]/infer  inference: JSON tensors and the binary-tensor extension
    POST /v1/models/{name}/classify            images (multipart files, JSON base64, or a raw image/* body) ->
                                               top-k labels with scores, preprocessed as the bundle records
    GET  /metrics                              Prometheus exposition

Every refusal is a JSON body ``{"error": ..., "input": ..., "allowed": ...}`` with a 4xx status (400 malformed or
outside the verified domain, 404 unknown model or route, 405 method, 413 body or image too large, 415 content type
or encoding). Anything else that goes wrong is a 500 ``{"error": "internal error", "id": ...}``: the traceback goes
to the server's log under that id, never into the response, and the server keeps serving.

Admission (``max_queue``): an inference request (infer, classify; gRPC ModelInfer counts too) that finds
``max_queue`` others held is a 503 with ``Retry-After`` before its body is kept: the body is read and dropped, so
memory stays flat however many arrive. Auth (``auth_token``): every route but ``/v2/health/live|ready`` (left open
for load balancers' and Kubernetes' probes) needs ``Authorization: Bearer TOKEN``, else a 401 JSON body with
``WWW-Authenticate: Bearer``. With ``grpc_port`` the lifespan also runs the gRPC protocol (``grpc_service.py``).

Every response but ``/metrics`` (Prometheus text) and binary tensors is strict JSON (no ``NaN``/``Infinity`` tokens):
a request with NaN/Inf in a float input is a 400 naming it (unless the bundle's golden input holds them), and an
output that comes back NaN/Inf where its verified reference is finite is a 500 with an id: the request took the
model outside the domain the bundle proves. A client that goes away mid-request is logged at INFO, no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the routes' (string) annotations in these globals

from .._version import __version__
from . import images
from .metrics import Metrics, endpoint_of
from .protocol import (HEADER_LENGTH, NonFiniteOutput, RequestError, dumps_strict, encode_response, json_safe,
                       loads_strict, parse_infer)
from .service import (EXTENSIONS, OPEN_PATHS, RETRY_AFTER_S, UNAUTHORIZED, VERSION, Admission, authorized,
                      known as _known, model_config, served_metadata)

log = logging.getLogger("onnxgate.serve")
INFER_TYPES = ("", "application/json", "application/octet-stream")
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class AppSettings:
    max_body: int = 64 << 20  # bytes, after decompression
    max_batch: int | None = None  # dynamic batching off when None
    batch_timeout_ms: float = 2.0
    max_queue: int | None = None  # inference requests held at once; None: no limit
    auth_token: str | None = None  # bearer token required on all but health; None: no auth
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None  # None: no gRPC
    grpc_reuse_port: bool = False  # several workers share the gRPC port (SO_REUSEPORT)
    grace_s: float = 30.0
    batching: dict[str, Any] | None = None  # the metadata's dynamic_batching (contract.BatchingPlan): limits, proof


class BodyTooLarge(Exception):
    pass


def create_app(model, settings: AppSettings | None = None):
    """The ASGI app serving ``model`` (a ``contract.ServedModel`` whose session is built)."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    from .batching import Executor

    settings = settings or AppSettings()
    _log_to_stderr()
    metrics = Metrics()
    executor = Executor(model, metrics, max_batch=settings.max_batch, timeout_ms=settings.batch_timeout_ms)
    admission = Admission(settings.max_queue)

    @asynccontextmanager
    async def lifespan(app_):
        await executor.start()
        grpc_server = None
        try:
            if settings.grpc_port is not None:
                from .grpc_service import start_grpc

                try:
                    grpc_server = await start_grpc(app.state)
                except RuntimeError as exc:  # grpc: "Failed to bind"
                    app.state.startup_error = f"gRPC cannot listen on {settings.grpc_host}:{settings.grpc_port}: {exc}"
                    raise
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.grace_s)  # in-flight calls finish, new ones are refused
            await executor.close()  # after uvicorn has let in-flight requests finish

    app = FastAPI(title=f"onnxgate serve: {model.name}", version=__version__, lifespan=lifespan)
    app.state.model, app.state.executor, app.state.metrics, app.state.settings = model, executor, metrics, settings
    app.state.admission, app.state.startup_error = admission, None
    app.state.served_metadata = lambda: served_metadata(model, settings)
    app.state.model_config = lambda: model_config(model, settings)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        from fastapi.responses import JSONResponse

        text = {404: "No such route.", 405: "Method not allowed on this route."}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": text}, status_code=exc.status_code)

    _protocol_routes(app, model, executor, metrics)
    _classify_route(app, model, executor, settings)
    guarded = _Guard(app, metrics, settings.max_body, admission, settings.auth_token)
    guarded.state = app.state  # type: ignore[attr-defined]
    return guarded


def _log_to_stderr() -> None:
    """Internal errors (with their id and traceback) go to the server's stderr, whoever configured logging."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s onnxgate.serve %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def handled(fn):
    """Route wrapper: a RequestError becomes its 4xx JSON body; anything else a 500 with an id and no traceback."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    @wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except NonFiniteOutput as exc:
            return nonfinite_error(exc)
        except ClientDisconnect:
            return client_gone()
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except HTTPException as exc:  # Starlette's own (multipart parsing)
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
        except Exception:  # noqa: BLE001  the server stays up; the log has the traceback
            return internal_error()
    return wrapper


def internal_error():
    from fastapi.responses import JSONResponse

    error_id = uuid.uuid4().hex[:16]
    log.exception("internal error %s", error_id)
    return JSONResponse({"error": "internal error", "id": error_id}, status_code=500)


def nonfinite_error(exc: NonFiniteOutput):
    """A 500 with an id for NaN/Inf outputs: logged as a warning (what happened is known; no traceback)."""
    from fastapi.responses import JSONResponse

    error_id = uuid.uuid4().hex[:16]
    log.warning("non-finite output %s: %s", error_id, exc.message)
    return JSONResponse({"error": exc.message, "output": exc.output, "id": error_id}, status_code=500)


def client_gone():
    """The client closed the connection before its request was read: nothing to answer, nothing went wrong here."""
    from fastapi.responses import Response

    log.info("a client disconnected before its request was read; nothing was run")
    return Response(status_code=400)


def _protocol_routes(app, model, executor, metrics) -> None:
    from fastapi.responses import JSONResponse, Response

    @app.get("/v2")
    async def server_metadata():
        return {"name": "onnxgate", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    @handled
    async def model_metadata(name: str, version: str | None = None):
        _known(model, name, version)
        return JSONResponse(json_safe(app.state.served_metadata()))

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    @handled
    async def config(name: str, version: str | None = None):
        _known(model, name, version)
        return JSONResponse(json_safe(app.state.model_config()))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    @handled
    async def model_ready(name: str, version: str | None = None):
        _known(model, name, version)
        return JSONResponse({"name": model.name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    @handled
    async def infer(request: Request, name: str, version: str | None = None):
        _known(model, name, version)
        media = _media_type(request)
        if media not in INFER_TYPES:
            raise RequestError(415, f"Content-Type '{media[:80]}' is not an inference request.",
                               allowed={"content_type": [t for t in INFER_TYPES if t]})
        body = await _body(request, app.state.settings.max_body)
        parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), model.check_declared)
        feed = model.check_feed({t.name: (t.datatype, t.array) for t in parsed.inputs})
        names = [o.name for o in model.outputs]
        unknown = [n for n in parsed.outputs or [] if n not in names]
        if unknown:
            raise RequestError(400, f"The model has no output '{unknown[0][:200]}'.", allowed={"outputs": names})
        result = await executor.run(feed)
        chosen = {n: result[n] for n in (parsed.outputs or names)}
        model.check_outputs(chosen)
        content, header = encode_response(model.name, VERSION, parsed.id, chosen, parsed.binary_outputs)
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length":
                                                                                 str(header)})

    @app.get("/metrics")
    async def prometheus():
        content, media = metrics.exposition()
        return Response(content, media_type=media)


def _media_type(request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _body(request, limit: int) -> bytes:
    """The request body, decompressed (gzip/deflate, as tritonclient may send it) within ``limit`` bytes."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(415, f"Content-Encoding '{encoding[:40]}' is not supported.",
                           allowed={"content_encoding": ["identity", "gzip", "deflate"]})
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"The {encoding} body cannot be decompressed: {exc}.") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestError(413, f"The request decompresses to more than {limit:,} bytes.",
                           allowed={"max_body_bytes": limit})
    if not inflater.eof:
        raise RequestError(400, f"The {encoding} body is truncated.")
    return data


def _classify_route(app, model, executor, settings: AppSettings) -> None:
    from fastapi.responses import JSONResponse

    @app.post("/v1/models/{name}/classify")
    @handled
    async def classify(request: Request, name: str):
        _known(model, name)
        if model.classify_unavailable:
            raise RequestError(404, f"Classification is not available for model '{model.name}': "
                                    f"{model.classify_unavailable}.")
        uploads, top_k = await _uploads(request, settings.max_body)
        k = _top_k(top_k if top_k is not None else request.query_params.get("top_k"), model)
        image_rule = model.inputs[0]
        channels = image_rule.dims[1].min
        arrays = await asyncio.get_running_loop().run_in_executor(None, lambda: [
            images.to_array(data, label, model.preprocess, channels, image_rule.dtype) for label, data in uploads])
        batch = np.stack(arrays)
        if not image_rule.dims[0].allows(len(arrays)):
            raise RequestError(400, f"{len(arrays)} images in one request; the verified batch domain of "
                                    f"{image_rule.dims[0].name or 'the batch'} is {image_rule.dims[0].describe()}.",
                               input=image_rule.name, allowed=image_rule.dims[0].to_dict())
        feed = model.check_feed({image_rule.name: (image_rule.datatype, batch)})
        result = await executor.run(feed)
        model.check_outputs({model.outputs[0].name: result[model.outputs[0].name]})
        probabilities, how = images.scores(result[model.outputs[0].name])
        predictions = [{"image": label, "top_k": images.top_k(row, k, model.labels)}
                       for (label, _data), row in zip(uploads, probabilities)]
        return JSONResponse({"model": model.name, "scores": how, "preprocess": str(model.preprocess),
                             "labels": "recorded" if model.labels else (model.labels_note or "none recorded"),
                             "predictions": predictions})


async def _uploads(request, limit: int) -> tuple[list[tuple[str, bytes]], Any]:
    """(label, bytes) per image and the top_k given in the body, from multipart, JSON base64 or a raw image."""
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await request.form(max_files=images.MAX_IMAGES + 1, max_fields=16, max_part_size=limit)
        try:
            uploads = [(getattr(v, "filename", None) or key, await v.read()) for key, v in form.multi_items()
                       if hasattr(v, "read")]
            top_k = form.get("top_k")
        finally:
            await form.close()  # spooled upload files
    elif media == "application/json":
        doc = loads_strict(await _body(request, limit), "request's JSON")
        if not isinstance(doc, dict):
            raise RequestError(400, 'The JSON body must be an object: {"images": ["<base64>", ...], "top_k": 5}.')
        raw = doc.get("images", [doc["image"]] if "image" in doc else None)
        if not isinstance(raw, list):
            raise RequestError(400, 'The JSON body needs "images": a list of base64 image files (or "image").')
        uploads = [(f"images[{i}]", images.decode_base64(text, f"images[{i}]")) for i, text in enumerate(raw)]
        top_k = doc.get("top_k")
    elif media.startswith("image/"):
        uploads, top_k = [("body", await _body(request, limit))], None
    else:
        raise RequestError(415, f"Content-Type '{media[:80] or 'none'}' is not an image upload.",
                           allowed={"content_type": ["multipart/form-data", "application/json", "image/*"]})
    if not uploads:
        raise RequestError(400, "The request holds no image.", allowed={"fields": "files (multipart) or images"})
    if len(uploads) > images.MAX_IMAGES:
        raise RequestError(400, f"{len(uploads)} images in one request; at most {images.MAX_IMAGES}.")
    return uploads, top_k


def _top_k(value: Any, model) -> int:
    classes = model.outputs[0].dims[1].min
    if value is None or value == "":
        return min(DEFAULT_TOP_K, classes)
    try:
        k = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        k = None
    if k is None or not 1 <= k <= classes:
        raise RequestError(400, f"top_k {json.dumps(value)[:40]} is not a whole number in 1..{classes}.",
                           input="top_k", allowed={"min": 1, "max": classes})
    return k


class _Guard:
    """Pure ASGI middleware: the body-size limit (413 before the body is read when Content-Length says so, and
    while it streams otherwise), the metrics of every request, and a 500 with an id for anything that escaped."""

    def __init__(self, app, metrics: Metrics, max_body: int, admission: Admission | None = None,
                 token: str | None = None):
        self.app, self.metrics, self.max_body = app, metrics, max_body
        self.admission, self.token = admission or Admission(None), token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, sent = time.perf_counter(), []
        endpoint = endpoint_of(scope.get("path", ""))

        async def tracking_send(message):
            if message["type"] == "http.response.start" and not sent:
                sent.append(message["status"])  # counted before the client can see the response
                self.metrics.observe(endpoint, message["status"], time.perf_counter() - start)
            await send(message)

        admitted = False
        try:
            declared = _content_length(scope)
            if self.token is not None and scope.get("path") not in OPEN_PATHS \
                    and not authorized(self.token, _header(scope, b"authorization")):
                if declared is None or declared <= self.max_body:
                    await _drain(receive, self.max_body)
                return await _send_json(tracking_send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
            if declared is not None and declared > self.max_body:
                return await _send_json(tracking_send, 413, {"error": f"The request body is {declared:,} bytes; at "
                                                             f"most {self.max_body:,} are accepted.",
                                                             "allowed": {"max_body_bytes": self.max_body}})
            if endpoint in ("infer", "classify") and scope.get("method") == "POST":
                if not self.admission.enter():
                    await _drain(receive, self.max_body)  # read and dropped: a refused body is never held
                    return await _send_json(tracking_send, 503, self.admission.refusal(),
                                            [(b"retry-after", str(RETRY_AFTER_S).encode())])
                admitted = True
            await self.app(scope, _limited(receive, self.max_body), tracking_send)
        except Exception as exc:  # noqa: BLE001
            from starlette.requests import ClientDisconnect

            if isinstance(exc, ClientDisconnect):
                log.info("a client disconnected before its request was read; nothing was run")
            elif not sent:
                await internal_error()(scope, receive, tracking_send)
        finally:
            if admitted:
                self.admission.leave()


def _content_length(scope) -> int | None:
    text = _header(scope, b"content-length")
    return int(text.strip()) if text is not None and text.strip().isdigit() else None


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _drain(receive, limit: int) -> None:
    """Read a refused request's body and drop it (at most ``limit`` bytes): the client then reads the refusal on a
    clean connection, and nothing of the body is kept."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _limited(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"The request body is more than {limit:,} bytes; at most {limit:,} are accepted.")
        return message
    return wrapped


async def _send_json(send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    content = dumps_strict(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": content})
