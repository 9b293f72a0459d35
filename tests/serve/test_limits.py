"""The server's limits and hardening: frame and connection limits, handshake and keepalive
timeouts, API keys of the wrong type, and error replies that never cost the connection."""

from __future__ import annotations

import base64
import os
import socket
import struct
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake
from websockets.sync.client import connect

from dexvla.serve.client import PolicyServerError, WebsocketClientPolicy
from dexvla.serve.protocol import packb, unpackb
from dexvla.serve.server import PolicyServer
from dexvla.serve.service import ChunkPolicyService

from .test_server import (
    CHUNK,
    EMBODIMENT,
    MAX_MESSAGE_BYTES,
    TIMEOUT,
    EchoPolicy,
    client_for,
    expected_actions,
    healthz,
    make_obs,
)


def limited_server(policy: EchoPolicy | None = None, **limits) -> PolicyServer:
    service = ChunkPolicyService(policy or EchoPolicy(), EMBODIMENT, chunk_size=CHUNK)
    return PolicyServer(
        service, host="127.0.0.1", port=0, max_message_bytes=MAX_MESSAGE_BYTES, **limits
    )


def served_fine(server: PolicyServer, state: float = 3.0) -> bool:
    with client_for(server) as client:
        actions = client.infer(make_obs([state] * 4))["actions"]
    return bool(np.array_equal(actions, expected_actions([state] * 4)))


def raw_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def handshake_bytes(port: int, extra_headers: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (port, key, extra_headers)
    )


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - start


def test_a_frame_over_twice_the_message_limit_closes_only_that_connection() -> None:
    with limited_server().running_in_thread(timeout=TIMEOUT) as server:
        with connect(f"ws://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as ws:
            ws.recv(timeout=TIMEOUT)
            ws.send(b"\0" * int(MAX_MESSAGE_BYTES * 2.5))
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert served_fine(server)


def test_past_the_connection_limit_a_handshake_gets_503_and_a_freed_slot_is_reused() -> None:
    with limited_server(max_connections=2).running_in_thread(timeout=TIMEOUT) as server:
        first, second = client_for(server), client_for(server)
        with pytest.raises(PolicyServerError, match="server busy") as refused:
            client_for(server)
        assert refused.value.status == 503
        assert healthz(server.port) == (200, "OK\n")  # the health check is never refused
        assert second.infer(make_obs([1, 1, 1, 1]))["reasoning"] == "do: pick"
        first.close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the slot frees once the server has seen the close
            try:
                third = client_for(server)
                break
            except PolicyServerError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        with third:
            assert third.infer(make_obs([2, 2, 2, 2]))["reasoning"] == "do: pick"
        second.close()


def test_tcp_connections_past_twice_the_limit_are_closed_at_once() -> None:
    server = limited_server(max_connections=1, open_timeout=30.0)
    with server.running_in_thread(timeout=TIMEOUT):
        held = [raw_socket(server.port) for _ in range(2)]  # handshakes never sent
        extra = raw_socket(server.port)
        received, waited = read_until_closed(extra)
        assert received == b"" and waited < 5.0  # not left to the 30 s handshake timeout
        for sock in held:
            sock.close()
        extra.close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # served once the server has seen the held sockets close
            try:
                assert served_fine(server)
                break
            except (OSError, InvalidHandshake, ConnectionClosed):
                assert time.monotonic() < deadline
                time.sleep(0.02)


def test_a_slow_loris_handshake_is_dropped_after_the_open_timeout() -> None:
    with limited_server(open_timeout=0.5).running_in_thread(timeout=TIMEOUT) as server:
        sock = raw_socket(server.port)
        sock.sendall(handshake_bytes(server.port)[:30])  # half a request line, then silence
        received, waited = read_until_closed(sock)
        sock.close()
        assert received == b"" and 0.4 < waited < 5.0
        assert served_fine(server)


def test_a_peer_stalled_half_way_through_a_frame_is_dropped_by_the_keepalive() -> None:
    server = limited_server(ping_interval=0.3, ping_timeout=0.3)
    with server.running_in_thread(timeout=TIMEOUT), client_for(server) as patient:
        sock = raw_socket(server.port)
        sock.sendall(handshake_bytes(server.port))
        header = struct.pack("!BBH", 0x82, 0x80 | 126, 1000) + b"\0\0\0\0"
        sock.sendall(header + b"x" * 10)  # 10 of the 1000 bytes announced, then silence
        received, waited = read_until_closed(sock)
        sock.close()
        assert received.startswith(b"HTTP/1.1 101")
        assert struct.pack("!BBH", 0x88, 2 + len(b"keepalive ping timeout"), 1011) in received
        assert waited < 5.0
        # the client library answers pings, so a connection idle for as long stays open
        assert patient.infer(make_obs([5, 5, 5, 5]))["reasoning"] == "do: pick"


@pytest.mark.parametrize("key", [123, b"s3cret", ["s3cret"]])
def test_an_api_key_of_the_wrong_type_is_refused_at_construction(key) -> None:
    with pytest.raises(TypeError, match=f"api_key must be a str or None, got {type(key).__name__}"):
        limited_server(api_key=key)


@pytest.mark.parametrize(
    "header, status",
    [
        (b"Authorization: Basic czNjcmV0\r\n", 401),  # another scheme: no key given
        (b"Authorization: Api-Key \xff\xfe\r\n", 403),  # bytes that are not text
        (b"x-api-key: s3cret-and-more\r\n", 403),
        (b"x-api-key: s3cre\r\n", 403),
    ],
)
def test_wrong_keys_are_refused_with_401_or_403_never_a_server_error(header, status) -> None:
    with limited_server(api_key="s3cret").running_in_thread(timeout=TIMEOUT) as server:
        sock = raw_socket(server.port)
        sock.sendall(handshake_bytes(server.port, header))
        received, _ = read_until_closed(sock)
        sock.close()
        assert received.startswith(b"HTTP/1.1 %d" % status), received[:40]
        with pytest.raises(PolicyServerError) as wrong:
            WebsocketClientPolicy("127.0.0.1", server.port, api_key=123, open_timeout=TIMEOUT)
        assert wrong.value.status == 403


@pytest.mark.parametrize(
    "name, value",
    [("max_connections", 0), ("open_timeout", 0.0), ("ping_interval", -1.0), ("ping_timeout", 0)],
)
def test_limits_must_be_positive(name, value) -> None:
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        limited_server(**{name: value})


class BrokenSpecService(ChunkPolicyService):
    """A service whose spec makes the checker itself fail (a field without a dtype)."""

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["observation"]["broken"] = {"shape": [1]}
        return meta


def test_an_unexpected_error_while_checking_becomes_an_error_reply() -> None:
    service = BrokenSpecService(EchoPolicy(), EMBODIMENT, chunk_size=CHUNK)
    server = PolicyServer(service, host="127.0.0.1", port=0)
    with server.running_in_thread(timeout=TIMEOUT):
        uri = f"ws://127.0.0.1:{server.port}"
        with connect(uri, open_timeout=TIMEOUT) as ws:
            ws.recv(timeout=TIMEOUT)
            for _ in range(2):  # the connection keeps serving after the error
                ws.send(packb({**make_obs([0, 0, 0, 0]), "broken": np.zeros(1, np.float32)}))
                reply = unpackb(ws.recv(timeout=TIMEOUT))
                assert reply == {"error": "server error: KeyError: 'dtype'"}


def test_a_float64_state_past_float32s_range_is_refused_as_not_finite() -> None:
    huge = {**make_obs([0, 0, 0, 0]), "observation.state": np.array([1e300, 0, 0, 0])}
    large = {**make_obs([0, 0, 0, 0]), "observation.state": np.array([1e30, 0, 0, 0])}
    with limited_server().running_in_thread(timeout=TIMEOUT) as server, client_for(server) as c:
        with pytest.raises(PolicyServerError, match="expected finite values"):
            c.infer(huge)
        np.testing.assert_array_equal(c.infer(large)["actions"], expected_actions([1e30, 0, 0, 0]))


def test_serve_command_wires_the_limits_and_refuses_non_positive_ones(
    monkeypatch, served, capsys
) -> None:
    from dexvla.cli import main

    def from_pretrained(directory: str, dtype=None, device=None) -> EchoPolicy:
        policy = EchoPolicy()
        policy.config = SimpleNamespace(embodiments=(EMBODIMENT,), chunk_size=CHUNK)
        stats = SimpleNamespace(embodiments=[EMBODIMENT])
        policy.processor = SimpleNamespace(require_stats=lambda: stats)
        return policy

    fake = SimpleNamespace(DexVLAPolicy=SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, "dexvla.policy.modeling", fake)
    base = ["serve", "--checkpoint", "ckpt", "--port", "0"]
    limits = ["--max-connections", "3", "--handshake-timeout", "1.5"]
    assert main([*base, *limits, "--ping-interval", "4", "--ping-timeout", "6"]) == 0
    (server,) = served
    assert (server.max_connections, server.open_timeout) == (3, 1.5)
    assert (server.ping_interval, server.ping_timeout) == (4.0, 6.0)
    assert main([*base, "--max-connections", "0"]) == 2
    assert "--max-connections must be positive, got 0" in capsys.readouterr().err
    assert main([*base, "--ping-timeout", "-1"]) == 2
    assert "--ping-timeout must be positive, got -1.0" in capsys.readouterr().err
