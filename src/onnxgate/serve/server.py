"""`onnxgate serve BUNDLE`: prove the bundle, bind the port, serve until SIGINT/SIGTERM, then drain.

Before a port is bound, the bundle is verified exactly as ``onnxgate verify BUNDLE`` does (checksums, then the
golden inputs through this machine's onnxruntime against the reference outputs): a tampered bundle exits 9, wrong
numbers 4, a runtime that cannot run it 6. Each worker then builds its session once (``contract.load_served_model``:
bytes hashed again as read, golden inputs self-checked on the serving session) and keeps it for its life.

The socket is bound here, so ``--port 0`` picks a free port that is printed (``listening on http://HOST:PORT``)
before the first request can arrive. One worker runs uvicorn in this process; several run under uvicorn's own
process supervisor, sharing the socket, with Prometheus' multiprocess mode so /metrics aggregates them. Shutdown
is uvicorn's graceful one: stop accepting, let in-flight requests finish (up to ``grace_s``), then drain the batcher.
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


def prove(bundle: Path) -> Any:
    """``onnxgate verify BUNDLE`` on this machine; the error the judge gives a failed verification."""
    from ..bundle.verify import verify_bundle
    from ..outcome import raise_for

    verification = verify_bundle(bundle)
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
    if settings.opt_level not in OPT_LEVELS:
        problems.append(("--opt-level", settings.opt_level, ", ".join(OPT_LEVELS)))
    if problems:
        flag, value, allowed = problems[0]
        raise BadInputError(f"{flag} {value} is out of range.", hint=f"Give {flag} {allowed}.")


def check_batching(model, settings: ServeSettings) -> int | None:
    """The max merged batch: ``--max-batch`` within the verified batch domain, once ``contract.batch_probe`` has
    shown that rows run together come back as they run alone; BadInputError otherwise."""
    from .contract import batch_probe

    if settings.max_batch is None:
        return None
    why = batch_probe(model)
    if why is not None:
        raise BadInputError(f"--max-batch: '{model.name}' cannot merge requests: {why} "
                            f"({', '.join(t.name + ' ' + t.shape_text() for t in model.inputs)}).",
                            hint="Serve without --max-batch, or export with a dynamic batch: --dim B=1..64.")
    rule = model.batch_rule
    if rule.max is not None and settings.max_batch > rule.max:
        raise BadInputError(f"--max-batch {settings.max_batch} exceeds the verified batch domain of {rule.name}: "
                            f"{rule.describe()}.", hint=f"Give --max-batch {rule.max} or less: larger merged batches "
                            "were never verified.")
    return settings.max_batch


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    say = announce or (lambda _m: None)
    started = time.monotonic()
    with opened_bundle(Path(bundle)) as folder:
        say("verifying the bundle (checksums, golden outputs)")
        verification = prove(folder)
        model = load_served_model(folder, name=settings.model_name, threads=settings.threads,
                                  opt_level=settings.opt_level, default_threads=_default_threads(settings))
        max_batch = check_batching(model, settings)
        sock = bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        result = ServeResult(str(bundle), model.name, url, settings.workers, verification.to_dict(), model.metadata())
        say(f"serving '{model.name}' ({', '.join(t.name + ' ' + t.shape_text() for t in model.inputs)}; threads "
            f"{model.threads or 'all'} from {model.threads_source})")
        say(f"listening on {url}")
        with _stop_quietly():
            if settings.workers == 1:
                _run_one(model, settings, max_batch, sock)
            else:
                model.session = None
                _run_many(folder, settings, max_batch, sock)
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


def _run_one(model, settings: ServeSettings, max_batch: int | None, sock: socket.socket) -> None:
    import uvicorn

    from .app import AppSettings, create_app

    app = create_app(model, AppSettings(int(settings.max_body_mb * (1 << 20)), max_batch, settings.batch_timeout_ms))
    server = uvicorn.Server(_uvicorn_config(app, settings))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _run_many(folder: Path, settings: ServeSettings, max_batch: int | None, sock: socket.socket) -> None:
    """uvicorn's supervisor with ``workers`` processes; each builds its own session from the proven folder."""
    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="onnxgate-serve-metrics-")
    saved = {k: os.environ.get(k) for k in (SETTINGS_ENV, "PROMETHEUS_MULTIPROC_DIR")}
    os.environ[SETTINGS_ENV] = json.dumps({"folder": str(folder), "settings": asdict(settings),
                                           "max_batch": max_batch})
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
    from .app import AppSettings, create_app
    from .contract import load_served_model

    spec = json.loads(os.environ[SETTINGS_ENV])
    settings = ServeSettings(**spec["settings"])
    model = load_served_model(Path(spec["folder"]), name=settings.model_name, threads=settings.threads,
                              opt_level=settings.opt_level, default_threads=_default_threads(settings))
    return create_app(model, AppSettings(int(settings.max_body_mb * (1 << 20)), spec["max_batch"],
                                         settings.batch_timeout_ms))
