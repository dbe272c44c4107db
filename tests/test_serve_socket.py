"""The server's listening socket: connections it accepts send small writes at once (TCP_NODELAY).

uvicorn writes a response's head and body separately; on a socket created with protocol 0 asyncio leaves Nagle's
algorithm on, and the body then waited for the client's delayed ACK: 44 ms on every keep-alive HTTP request on Linux
(0.24 ms with it off, health endpoint, loopback). Timings belong in benchmarks/serve_load.py; this holds the cause."""

import socket

import pytest

from onnxgate.errors import BadInputError
from onnxgate.serve.server import bind


def test_the_listening_socket_is_tcp_with_nagle_off_for_what_it_accepts():
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only on sockets that say TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_a_busy_port_is_bad_input():
    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(BadInputError, match="Cannot listen on"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
