"""A websocket policy server speaking openpi's protocol (msgpack-numpy over binary frames).

On connect the server sends the service's metadata; then each binary frame holding one
observation map gets one reply: ``{"actions", "reasoning", "server_timing", "policy_timing"}``,
or ``{"error": "..."}`` for a malformed, oversized or invalid message, after which the
connection keeps serving. The model runs in one worker thread fed first-in first-out, and
each connection has at most one request in flight, so concurrent clients take turns. A plain
HTTP ``GET /healthz`` answers 200; with an API key set, websocket handshakes without it get
401 and with a wrong one 403.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from dexvla.serve.protocol import ProtocolError, packb, unpackb
from dexvla.serve.service import PolicyService, validate_observation

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20
TRANSPORT_LIMIT_FACTOR = 4
"""Frames up to this many times the message limit get an error reply; larger ones close the
connection (websockets' close code 1009) before they are read into memory."""


def _api_key_from_headers(request: Request) -> str | None:
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() in ("api-key", "bearer") and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key")


class PolicyServer:
    """Serves one `PolicyService` over websockets; see the module docstring for the protocol."""

    def __init__(
        self,
        service: PolicyService,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self.service = service
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_message_bytes = max_message_bytes
        self._metadata = service.metadata()
        if not isinstance(self._metadata.get("observation"), dict):
            raise ValueError("service metadata must hold an 'observation' spec map")
        self._metadata_frame = packb(self._metadata)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dexvla-policy")
        self._server: Server | None = None

    # -- HTTP side: health check and authentication ----------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is None:
            return None
        given = _api_key_from_headers(request)
        if given is None:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing API key\n")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            return connection.respond(http.HTTPStatus.FORBIDDEN, "wrong API key\n")
        return None

    # -- websocket side ----------------------------------------------------------------------

    async def _handler(self, websocket: ServerConnection) -> None:
        logger.info("connection from %s opened", websocket.remote_address)
        await websocket.send(self._metadata_frame)
        try:
            async for message in websocket:
                await websocket.send(self._encode(await self._answer(message)))
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

    async def _answer(self, message: str | bytes) -> dict[str, Any]:
        received = time.perf_counter()
        if isinstance(message, str):
            return {"error": "expected a binary msgpack frame, got a text frame"}
        if len(message) > self.max_message_bytes:
            return {
                "error": f"message of {len(message)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes"
            }
        try:
            obs = unpackb(message)
            obs = validate_observation(obs, self._metadata["observation"])
        except (ProtocolError, ValueError) as error:
            return {"error": str(error)}
        decoded = time.perf_counter()
        loop = asyncio.get_running_loop()
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
            max_size=self.max_message_bytes * TRANSPORT_LIMIT_FACTOR,
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
