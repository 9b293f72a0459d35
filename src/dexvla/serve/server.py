"""A websocket policy server speaking openpi's protocol (msgpack-numpy over binary frames).

On connect the server sends the service's metadata; then each binary frame holding one
observation map gets one reply: ``{"actions", "reasoning", "server_timing", "policy_timing"}``,
or ``{"error": "..."}`` for a malformed, oversized or invalid message, after which the
connection keeps serving. Messages are decoded and checked on a worker thread and the model
runs in one more, fed first-in first-out; each connection has at most one request in flight, so
concurrent clients take turns and the event loop stays free for the others.

A plain HTTP ``GET /healthz`` answers 200; with an API key set, websocket handshakes without
it get 401 and with a wrong one 403 (compared in constant time). Limits, all configurable:
frames over `TRANSPORT_LIMIT_FACTOR` times the message limit close the connection (code 1009)
before they are read; past `max_connections` open sessions a handshake gets 503, and TCP
connections past twice that (handshakes in progress included) are closed at once; a handshake
not finished within `open_timeout` is dropped, and so is a peer that leaves a ping unanswered
for `ping_timeout` (a frame left half-sent stalls its pongs too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import http
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from dexvla.serve.limits import (
    CLOSE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OPEN_TIMEOUT_S,
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_PING_TIMEOUT_S,
    MAX_QUEUED_FRAMES,
    TRANSPORT_LIMIT_FACTOR,
)
from dexvla.serve.protocol import ProtocolError, packb, unpackb
from dexvla.serve.service import PolicyService, validate_observation

logger = logging.getLogger(__name__)


def _api_key_from_headers(request: Request) -> str | None:
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() in ("api-key", "bearer") and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key")


def _key_digest(key: str) -> bytes:
    """SHA-256 of a key as sent: equal-length digests make the comparison constant in time
    whatever the lengths; surrogateescape keeps non-ASCII header bytes comparable."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class _GuardedConnection(ServerConnection):
    """Closes a TCP connection at once when `tcp_limit` connections are already being served
    (handshakes in progress included), so a connection storm cannot exhaust file descriptors."""

    def __init__(self, *args: Any, tcp_limit: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tcp_limit = tcp_limit

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # registers this connection's handler task
        if len(self.server.handler_tasks) > self.tcp_limit:
            transport.abort()


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


class PolicyServer:
    """Serves one `PolicyService` over websockets; see the module docstring for the protocol
    and the limits."""

    def __init__(
        self,
        service: PolicyService,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT_S,
        ping_interval: float = DEFAULT_PING_INTERVAL_S,
        ping_timeout: float = DEFAULT_PING_TIMEOUT_S,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str or None, got {type(api_key).__name__}")
        for name, value in (
            ("max_message_bytes", max_message_bytes),
            ("max_connections", max_connections),
            ("open_timeout", open_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
        ):
            _positive(name, value)
        self.service = service
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._metadata = service.metadata()
        if not isinstance(self._metadata.get("observation"), dict):
            raise ValueError("service metadata must hold an 'observation' spec map")
        self._metadata_frame = packb(self._metadata)
        self._key_digest = None if self.api_key is None else _key_digest(self.api_key)
        self._admitted: set[ServerConnection] = set()
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dexvla-decode")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dexvla-policy")
        self._server: Server | None = None

    # -- HTTP side: health check, authentication, connection limit ---------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._key_digest is not None:
            given = _api_key_from_headers(request)
            if given is None:
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing API key\n")
            if not hmac.compare_digest(_key_digest(given), self._key_digest):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "wrong API key\n")
        if len(self._admitted) >= self.max_connections:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server busy: {self.max_connections} connections open, the limit\n",
            )
        self._admitted.add(connection)
        connection.connection_lost_waiter.add_done_callback(
            lambda _: self._admitted.discard(connection)
        )
        return None

    # -- websocket side ----------------------------------------------------------------------

    async def _handler(self, websocket: ServerConnection) -> None:
        logger.info("connection from %s opened", websocket.remote_address)
        try:
            await websocket.send(self._metadata_frame)
            async for message in websocket:
                await websocket.send(self._encode(await self._reply(message)))
        except websockets.ConnectionClosed:
            pass
        logger.info("connection from %s closed", websocket.remote_address)

    @staticmethod
    def _encode(reply: dict[str, Any]) -> bytes:
        try:
            return packb(reply)
        except (TypeError, ValueError) as error:
            logger.exception("could not encode the reply")
            return packb({"error": f"server could not encode its reply: {error}"})

    async def _reply(self, message: str | bytes) -> dict[str, Any]:
        """The reply to one message; whatever goes wrong becomes an error reply."""
        try:
            return await self._answer(message)
        except Exception as error:  # a bug must cost one reply, never the connection
            logger.exception("could not answer a message")
            return {"error": f"server error: {type(error).__name__}: {error}"}

    def _decode(self, message: bytes) -> dict[str, Any]:
        return validate_observation(unpackb(message), self._metadata["observation"])

    async def _answer(self, message: str | bytes) -> dict[str, Any]:
        received = time.perf_counter()
        if isinstance(message, str):
            return {"error": "expected a binary msgpack frame, got a text frame"}
        if len(message) > self.max_message_bytes:
            return {
                "error": f"message of {len(message)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes"
            }
        loop = asyncio.get_running_loop()
        try:
            obs = await loop.run_in_executor(self._decoder, self._decode, message)
        except (ProtocolError, ValueError) as error:
            return {"error": str(error)}
        decoded = time.perf_counter()
        started: list[float] = []

        def run() -> dict[str, Any]:
            started.append(time.perf_counter())
            return self.service.infer(obs)

        try:
            result = await loop.run_in_executor(self._executor, run)
        except Exception as error:
            logger.exception("policy inference failed")
            return {"error": f"policy inference failed: {type(error).__name__}: {error}"}
        done = time.perf_counter()
        return {
            **result,
            "server_timing": {
                "decode_ms": (decoded - received) * 1e3,
                "queue_ms": (started[0] - decoded) * 1e3,
                "infer_ms": (done - started[0]) * 1e3,
                "total_ms": (done - received) * 1e3,
            },
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections; `port=0` picks a free port (see `.port`)."""
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            create_connection=functools.partial(  # type: ignore[arg-type]
                _GuardedConnection, tcp_limit=2 * self.max_connections
            ),
            max_size=self.max_message_bytes * TRANSPORT_LIMIT_FACTOR,
            max_queue=MAX_QUEUED_FRAMES,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=CLOSE_TIMEOUT_S,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("serving on ws://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Close every connection, stop listening and stop the worker thread."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._decoder.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    async def serve_forever(self) -> None:
        """Start and serve until cancelled."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self, timeout: float = 10.0) -> Iterator[PolicyServer]:
        """Run the server on an event loop in a background thread for the `with` block."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:
                errors.append(error)
                self._decoder.shutdown(wait=False)
                self._executor.shutdown(wait=False)
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=main, name="dexvla-server", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if errors:
            thread.join(timeout)
            raise errors[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"server did not stop within {timeout} s")
