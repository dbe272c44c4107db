"""`onnxgate serve BUNDLE`: prove the bundle, bind the port, serve until SIGINT/SIGTERM, then drain.

Before a port is bound, the bundle is verified exactly as ``onnxgate verify BUNDLE`` does (checksums, then the
golden inputs through this machine's onnxruntime against the reference outputs): a tampered bundle exits 9, wrong
numbers 4, a runtime that cannot run it 6. Each worker then builds its session once (``contract.load_served_model``:
bytes hashed again as read, golden inputs self-checked on the serving session) and keeps it for its life.

The socket is bound here, so ``--port 0`` picks a free port that is printed (``listening on http://HOST:PORT``)
before the first request can arrive. One worker runs uvicorn in this process; several run under uvicorn's own
process supervisor, sharing the socket, with Prometheus' multiprocess mode so /metrics aggregates them. Shutdown
is uvicorn's graceful one: stop accepting, let in-flight requests finish (up to ``grace_s``), then drain the batcher.

``--grpc-port P`` adds the KServe/Triton gRPC protocol (``grpc_service.py``) in each worker's event loop, over the
same model, executor, admission limit and metrics; it is off unless given (Triton's own port for it is 8001). Its
port is checked (and ``0`` resolved to a free one) here, before anything is announced; a worker prints
``gRPC listening on HOST:PORT`` once its gRPC server accepts calls. ``--max-queue N`` caps the inference requests
a worker holds at once (HTTP and gRPC together); ``--auth-token-file`` (or ``ONNXGATE_SERVE_TOKEN``) requires a
bearer token on everything but the health endpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInputError

SETTINGS_ENV = "ONNXGATE_SERVE_SETTINGS"
TOKEN_ENV = "ONNXGATE_SERVE_TOKEN"  # the bearer token, when --auth-token-file is not given
MIN_TOKEN = 16


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None  # intra-op threads per worker; None: the bundle's benchmark, else onnxruntime's
    opt_level: str = "all"
    max_batch: int | None = None
    batch_timeout_ms: float = 2.0
    max_body_mb: float = 64.0
    model_name: str | None = None
    grace_s: int = 30
    header_timeout_s: float = 10.0  # a request's head must arrive within this (slowloris); see connection.py
    body_timeout_s: float = 60.0  # ... and its body within this after the head
    max_queue: int | None = None  # inference requests held at once per worker (HTTP + gRPC); beyond: 503
    auth_token_file: str | None = None  # bearer token required (else $ONNXGATE_SERVE_TOKEN, else no auth)
    grpc_port: int | None = None  # the KServe/Triton gRPC protocol on this port (0: a free one); None: off
    runtime: str = "auto"  # auto (the bundle's benchmark recommendation), onnxruntime or openvino
    trust: str | None = None  # a public key the bundle must be signed with (`onnxgate sign`); None: not checked


@dataclass
class ServeResult:
    """What a finished `onnxgate serve` reports: the model it served, where, and how it ended."""

    bundle: str
    model: str
    url: str
    workers: int
    verification: dict[str, Any]
    contract: dict[str, Any]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prove(bundle: Path, trust: str | None = None) -> Any:
    """``onnxgate verify BUNDLE [--trust KEY.pub]`` on this machine; the error the judge gives a failed
    verification (an unsigned or mis-signed bundle under ``trust``: exit 9)."""
    from ..bundle.verify import verify_bundle
    from ..outcome import raise_for

    verification = verify_bundle(bundle, trust=trust)
    raise_for(verification)
    return verification


def check_settings(settings: ServeSettings) -> None:
    from ..runtimes.ort import OPT_LEVELS

    problems = []
    if settings.workers < 1:
        problems.append(("--workers", settings.workers, "at least 1"))
    if not 0 <= settings.port <= 65535:
        problems.append(("--port", settings.port, "0..65535 (0: a free port)"))
    if settings.max_batch is not None and settings.max_batch < 1:
        problems.append(("--max-batch", settings.max_batch, "at least 1"))
    if not 0 <= settings.batch_timeout_ms <= 10_000:
        problems.append(("--batch-timeout-ms", settings.batch_timeout_ms, "0..10000"))
    if not 0 < settings.max_body_mb <= 4096:
        problems.append(("--max-body-mb", settings.max_body_mb, "more than 0, at most 4096"))
    for flag, value in (("--header-timeout-s", settings.header_timeout_s),
                        ("--body-timeout-s", settings.body_timeout_s)):
        if not 0 < value <= 3600:
            problems.append((flag, value, "more than 0 seconds, at most 3600"))
    if settings.max_queue is not None and not 1 <= settings.max_queue <= 1_000_000:
        problems.append(("--max-queue", settings.max_queue, "1..1000000 (requests held at once per worker)"))
    if settings.grpc_port is not None and not 0 <= settings.grpc_port <= 65535:
        problems.append(("--grpc-port", settings.grpc_port, "0..65535 (0: a free port)"))
    elif settings.grpc_port and settings.grpc_port == settings.port:
        problems.append(("--grpc-port", settings.grpc_port, "a port other than --port's"))
    if settings.opt_level not in OPT_LEVELS:
        problems.append(("--opt-level", settings.opt_level, ", ".join(OPT_LEVELS)))
    if problems:
        flag, value, allowed = problems[0]
        raise BadInputError(f"{flag} {value} is out of range.", hint=f"Give {flag} {allowed}.")


def read_token(settings: ServeSettings) -> str | None:
    """The bearer token clients must send: ``--auth-token-file``'s content (surrounding whitespace removed), else
    ``$ONNXGATE_SERVE_TOKEN``, else None (no auth). BadInputError for an unreadable file or a weak token."""
    where = f"--auth-token-file {settings.auth_token_file}"
    if settings.auth_token_file:
        try:
            path = Path(settings.auth_token_file)
            if not path.is_file() or path.stat().st_size > 4096:
                raise BadInputError(f"{where}: not a file of at most 4096 bytes.",
                                    hint="Give a file holding the token (one line).")
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{where} cannot be read: {exc}.", hint="Give a readable UTF-8 file.") from None
    else:
        where = f"${TOKEN_ENV}"
        token = (os.environ.get(TOKEN_ENV) or "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN or len(token) > 4096 or not all(33 <= ord(c) < 127 for c in token):
        raise BadInputError(f"{where}: the token must be {MIN_TOKEN}..4096 printable ASCII characters without spaces.",
                            hint="Make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return token


def reserve_grpc_port(settings: ServeSettings) -> ServeSettings:
    """``settings`` with ``grpc_port`` checked free on ``host`` (BadInputError otherwise) and 0 resolved to a free
    port, so a busy port is exit 2 before anything is announced and every worker binds the same one."""
    if settings.grpc_port is None:
        return settings
    from dataclasses import replace

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
        try:
            probe.bind((settings.host, settings.grpc_port))
        except OSError as exc:
            raise BadInputError(f"Cannot listen for gRPC on {settings.host}:{settings.grpc_port}: "
                                f"{exc.strerror or exc}.",
                                hint="Pick another --grpc-port (0 picks a free one).") from None
        return replace(settings, grpc_port=probe.getsockname()[1])


def batching_text(max_batch: int | None, timeout_ms: float, model, plan=None) -> str:
    if plan is not None:
        return plan.text(timeout_ms, model.batch_rule)
    if not max_batch:
        return "dynamic batching off"
    return (f"dynamic batching on: up to {max_batch} rows per run, waiting at most {timeout_ms:g} ms, within "
            f"{model.batch_rule.name}: {model.batch_rule.describe()}")


def plan_batching(model, settings: ServeSettings):
    """How ``--max-batch`` is honoured (``contract.BatchingPlan``; None without the flag): BadInputError when the
    flag cannot apply at all (no verified batch dim, beyond its verified domain); otherwise within the
    batch-invariance proof -- capped at the largest batch size that held, or off with the measured bound when
    rows are not independent (the server still serves, one request per run)."""
    from .contract import plan_batching as plan

    if settings.max_batch is None:
        return None
    rule = model.batch_rule
    if rule is None or not model.golden:
        shapes = ", ".join(t.name + " " + t.shape_text() for t in model.inputs)
        raise BadInputError(f"--max-batch: '{model.name}' cannot merge requests: its inputs share no leading batch "
                            f"dim with a verified range ({shapes}).",
                            hint="Serve without --max-batch, or export with a dynamic batch: --dim B=1..64.")
    if rule.max is not None and settings.max_batch > rule.max:
        raise BadInputError(f"--max-batch {settings.max_batch} exceeds the verified batch domain of {rule.name}: "
                            f"{rule.describe()}.", hint=f"Give --max-batch {rule.max} or less: larger merged batches "
                            "were never verified.")
    return plan(model, settings.max_batch)


def check_batching(model, settings: ServeSettings) -> int | None:
    """The max merged batch, strictly (what `serve --export-config` writes into Triton's config): ``--max-batch``
    within the verified batch domain and within the batch-invariance proof; BadInputError otherwise (a refusal
    with the measured bound, or the largest size that held)."""
    found = plan_batching(model, settings)
    if found is None:
        return None
    if found.max_batch is None:
        raise BadInputError(f"--max-batch: '{model.name}' cannot merge requests: {found.reason} "
                            f"({', '.join(t.name + ' ' + t.shape_text() for t in model.inputs)}).",
                            hint="Serve without --max-batch: a row's output would change with its batch companions.")
    if found.max_batch < settings.max_batch:
        raise BadInputError(f"--max-batch: '{model.name}': {found.reason}.",
                            hint=f"Give --max-batch {found.max_batch} or less.")
    return found.max_batch


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, created as TCP (``IPPROTO_TCP``, not protocol 0): asyncio turns Nagle's algorithm off
    (``TCP_NODELAY``) only on connections whose socket says TCP, and with it on, a response written as head then
    body waited for the client's delayed ACK — 44 ms added to every HTTP request on Linux. ``TCP_NODELAY`` is also
    set here, which accepted connections inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInputError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                            hint="Pick another --port (0 picks a free one) or --host.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(bundle: str | Path, settings: ServeSettings | None = None, *,
          announce: Callable[[str], None] | None = None) -> ServeResult:
    """Serve the bundle folder (or .tar.gz) until interrupted; the result once shut down."""
    from ..bundle.verify import opened_bundle
    from .contract import load_served_model

    settings = settings or ServeSettings()
    check_settings(settings)
    token = read_token(settings)
    say = announce or (lambda _m: None)
    started = time.monotonic()
    with opened_bundle(Path(bundle)) as folder:
        say("verifying the bundle (checksums, golden outputs)")
        verification = prove(folder, settings.trust)
        model = load_served_model(folder, name=settings.model_name, threads=settings.threads,
                                  opt_level=settings.opt_level, default_threads=_default_threads(settings),
                                  runtime=settings.runtime)
        plan = plan_batching(model, settings)
        max_batch = plan.max_batch if plan is not None else None
        if settings.grpc_port is not None:
            _require_grpc()
        sock = bind(settings.host, settings.port)
        try:
            settings = reserve_grpc_port(settings)
        except BadInputError:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        result = ServeResult(str(bundle), model.name, url, settings.workers, verification.to_dict(), model.metadata())
        if plan is not None and plan.reason:
            result.notes.append(plan.reason)
        say(f"serving '{model.name}' ({', '.join(t.name + ' ' + t.shape_text() for t in model.inputs)}; threads "
            f"{model.threads or 'all'} from {model.threads_source})")
        say(f"runtime: {model.runtime_config} (from {model.runtime_source}); golden outputs re-checked on it")
        admission = (f"limit {settings.max_queue} requests per worker (503 beyond)" if settings.max_queue
                     else "unlimited")
        say(f"{batching_text(max_batch, settings.batch_timeout_ms, model, plan)}; admission {admission}"
            f"; auth {'bearer token (health endpoints open)' if token else 'off'}"
            f"; gRPC {'on port ' + str(settings.grpc_port) if settings.grpc_port is not None else 'off'}")
        say(f"listening on {url}")
        batching = plan.metadata(model.batch_rule, settings.batch_timeout_ms) if plan is not None else None
        with _stop_quietly():
            if settings.workers == 1:
                _run_one(model, settings, max_batch, sock, token, batching)
            else:
                model.session = None
                _run_many(folder, settings, max_batch, sock, batching)
        result.seconds = round(time.monotonic() - started, 3)
    return result


@contextmanager
def _stop_quietly() -> Iterator[None]:
    """SIGINT/SIGTERM end the server gracefully. uvicorn re-raises the signal it caught once it has shut down, to
    the handler that was there before it: a no-op here, so a graceful stop returns a result (exit 0) instead of the
    process dying from the re-raised SIGTERM after its requests were answered."""
    if threading.current_thread() is not threading.main_thread():  # uvicorn installs no handlers there either
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _default_threads(settings: ServeSettings) -> int:
    """Without --threads or a recorded benchmark: onnxruntime's default for one worker; the cores shared out
    among several (each worker's session would otherwise start a thread per core)."""
    return 0 if settings.workers == 1 else max(1, (os.cpu_count() or 1) // settings.workers)


def _uvicorn_config(app: Any, settings: ServeSettings, **extra):
    import uvicorn

    from .connection import configure

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=settings.grace_s,
                            lifespan="on", workers=settings.workers, **extra)
    return configure(config, settings.header_timeout_s, settings.body_timeout_s)


def _require_grpc() -> None:
    from ..errors import require

    for module in ("grpc", "tritonclient.grpc"):  # the servicer is built on tritonclient's generated stubs
        require(module, "serve", "`onnxgate serve --grpc-port`")


def app_settings(settings: ServeSettings, max_batch: int | None, token: str | None,
                 batching: dict[str, Any] | None = None):
    from .app import AppSettings

    return AppSettings(int(settings.max_body_mb * (1 << 20)), max_batch, settings.batch_timeout_ms,
                       max_queue=settings.max_queue, auth_token=token, grpc_host=settings.host,
                       grpc_port=settings.grpc_port, grpc_reuse_port=settings.workers > 1, grace_s=settings.grace_s,
                       batching=batching)


def _run_one(model, settings: ServeSettings, max_batch: int | None, sock: socket.socket, token: str | None,
             batching: dict[str, Any] | None = None) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(model, app_settings(settings, max_batch, token, batching))
    server = uvicorn.Server(_uvicorn_config(app, settings))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    failed = getattr(app.state, "startup_error", None)
    if failed is not None:  # the gRPC port was taken between the check and the bind
        raise BadInputError(f"The server could not start: {failed}.", hint="Pick another --grpc-port.")


def _run_many(folder: Path, settings: ServeSettings, max_batch: int | None, sock: socket.socket,
              batching: dict[str, Any] | None = None) -> None:
    """uvicorn's supervisor with ``workers`` processes; each builds its own session from the proven folder."""
    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="onnxgate-serve-metrics-")
    saved = {k: os.environ.get(k) for k in (SETTINGS_ENV, "PROMETHEUS_MULTIPROC_DIR")}
    os.environ[SETTINGS_ENV] = json.dumps({"folder": str(folder), "settings": asdict(settings),
                                           "max_batch": max_batch, "batching": batching})
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        config = _uvicorn_config("onnxgate.serve.server:app_from_env", settings, factory=True)
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def app_from_env():
    """uvicorn's app factory in each worker process: the settings the parent put in the environment."""
    from .app import create_app
    from .contract import load_served_model

    spec = json.loads(os.environ[SETTINGS_ENV])
    settings = ServeSettings(**spec["settings"])
    model = load_served_model(Path(spec["folder"]), name=settings.model_name, threads=settings.threads,
                              opt_level=settings.opt_level, default_threads=_default_threads(settings),
                              runtime=settings.runtime)
    return create_app(model, app_settings(settings, spec["max_batch"], read_token(settings), spec.get("batching")))
