"""``onnxgate serve`` as a child process on a free loopback port: for tests, benchmarks and notebooks.

``ServerProcess(bundle, "--max-batch", "16")`` starts the real command (``python -m onnxgate.cli.main serve BUNDLE
--port 0 ...``), waits for its ``listening on http://HOST:PORT`` line, and on exit stops it with SIGTERM (the
graceful path a container runtime uses) and waits; ``stop()`` returns the exit code, and ``log`` holds its stderr.
With ``--grpc-port`` among the arguments it also waits for ``gRPC listening on HOST:PORT`` (``grpc_target``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://\S+)")
_GRPC = re.compile(r"gRPC listening on (\S+)")


class ServerProcess:
    def __init__(self, bundle: str | Path, *args: str, startup_timeout: float = 120.0, env: dict | None = None):
        self.command = [sys.executable, "-m", "onnxgate.cli.main", "serve", str(bundle), "--port", "0", *args]
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.url: str | None = None
        self.grpc_target: str | None = None  # HOST:PORT, with --grpc-port
        self._wants_grpc = "--grpc-port" in args
        self._grpc_ready = threading.Event()
        self.process: subprocess.Popen | None = None
        self.stdout = ""
        self._ready = threading.Event()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://") if self.url else ""

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", env=self.env)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        for event in (self._ready, self._grpc_ready) if self._wants_grpc else (self._ready,):
            while not event.wait(0.05):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    code = self.stop()
                    raise RuntimeError(f"onnxgate serve did not start (exit {code}):\n{self.log[-4000:]}")
        return self

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            grpc_match = _GRPC.search(line)
            if grpc_match and self.grpc_target is None:
                self.grpc_target = grpc_match.group(1)
                self._grpc_ready.set()
                continue
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server (graceful by default), wait for it, and return its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.stdout = self.process.stdout.read()  # the --json envelope, printed once the server stopped
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
