"""Deadlines on each connection, which uvicorn does not set: a client must finish sending a request's head within
``header_timeout_s`` of connecting (or of its first byte, on a kept-alive connection) and its body within
``body_timeout_s`` of the head. Without them a client that opens sockets and sends nothing, or a header line every
few seconds (slowloris), holds every one of them open forever; uvicorn's own ``timeout_keep_alive`` only runs
between two requests.

``GuardedH11Protocol`` is uvicorn's h11 protocol with those two timers; it follows h11's view of the peer's state
after every read (``IDLE``: the head is still coming; ``SEND_BODY``: the body is; anything else: the request is in).
A connection past its deadline gets a ``408`` JSON body (when no response has started) and is closed; that is
logged at INFO, without a traceback, like a client that goes away. Requests uvicorn cannot parse get a ``400``
JSON body instead of uvicorn's plain text. The timeouts travel on the uvicorn ``Config`` (``configure``), so
worker processes spawned by uvicorn's supervisor get them too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import dumps_strict

log = logging.getLogger("onnxgate.serve")
_HEADER, _BODY = "onnxgate_header_timeout_s", "onnxgate_body_timeout_s"


def configure(config: Any, header_timeout_s: float, body_timeout_s: float) -> Any:
    """``config`` (a uvicorn Config) serving through ``GuardedH11Protocol`` with these deadlines."""
    config.http = GuardedH11Protocol
    setattr(config, _HEADER, float(header_timeout_s))
    setattr(config, _BODY, float(body_timeout_s))
    return config


def raw_json_response(status: int, reason: str, body: dict[str, Any]) -> bytes:
    content = dumps_strict(body)
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(content)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + content


class GuardedH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = getattr(config, _HEADER, 10.0)
        self.body_timeout = getattr(config, _BODY, 60.0)
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    # the timers follow h11's state of the peer

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow(h11.IDLE)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing():
            self._follow(self.conn.their_state)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set(None)
        super().connection_lost(exc)

    def _follow(self, state) -> None:
        self._set("head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _set(self, phase: str | None) -> None:
        if phase == self._phase:
            return  # the deadline runs from the start of the phase, not from the last byte
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        if phase is not None:
            seconds = self.header_timeout if phase == "head" else self.body_timeout
            self._timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer, self._phase = None, None
        if self.transport is None or self.transport.is_closing():
            return
        who = "%s:%d" % self.client if self.client else "a client"
        flag = "--header-timeout-s" if phase == "head" else "--body-timeout-s"
        log.info("closed the connection from %s: its request %s was not complete after %g s (%s)", who, phase,
                 seconds, flag)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(raw_json_response(408, "Request Timeout", {
                "error": f"The request {phase} did not arrive within {seconds:g} s; the connection is closed.",
                "allowed": {f"{phase}_timeout_s": seconds}}))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as JSON like every other refusal."""
        self._set(None)
        self.transport.write(raw_json_response(400, "Bad Request", {"error": f"{msg} (not parseable HTTP/1.1)"}))
        self.transport.close()
