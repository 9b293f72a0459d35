"""A small blocking client for the policy server (websockets + msgpack + numpy, no torch).

    client = WebsocketClientPolicy("127.0.0.1", 8000, api_key=None)
    meta = client.get_server_metadata()          # observation spec, chunk_size, action_dim...
    reply = client.infer(obs)                    # {"actions": (H, D) float32, "reasoning": ...}

openpi's `WebsocketClientPolicy` talks to the same server unchanged; this one adds clear
exceptions for refused handshakes and error replies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dexvla.serve.protocol import packb, unpackb


class PolicyServerError(RuntimeError):
    """The server refused the connection or answered a request with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WebsocketClientPolicy:
    """Connects at construction, receives the metadata, then sends one observation per `infer`.

    `timeout` bounds each reply wait in seconds (None waits for ever); `max_message_bytes`
    bounds the replies accepted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        *,
        open_timeout: float = 10.0,
        timeout: float | None = None,
        max_message_bytes: int = 64 * 2**20,
    ) -> None:
        self.uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}:{port}"
        self.timeout = timeout
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            self._ws: ClientConnection = connect(
                self.uri,
                additional_headers=headers,
                open_timeout=open_timeout,
                max_size=max_message_bytes,
                compression=None,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            body = error.response.body.decode(errors="replace").strip()
            raise PolicyServerError(
                f"server at {self.uri} refused the connection: HTTP {status} {body}", status
            ) from None
        self._metadata = self._receive()

    def _receive(self) -> dict[str, Any]:
        message = self._ws.recv(timeout=self.timeout)
        if isinstance(message, str):
            raise PolicyServerError(f"server error: {message}")
        reply = unpackb(message)
        if not isinstance(reply, dict):
            raise PolicyServerError(f"expected a map from the server, got {type(reply).__name__}")
        if "error" in reply:
            raise PolicyServerError(f"server error: {reply['error']}")
        return reply

    def get_server_metadata(self) -> dict[str, Any]:
        """The metadata the server sent on connect."""
        return self._metadata

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation; return the reply or raise `PolicyServerError` on an error."""
        self._ws.send(packb(obs))
        reply = self._receive()
        if isinstance(reply.get("actions"), np.ndarray):
            reply["actions"] = np.array(reply["actions"])  # writable copy of the frame view
        return reply

    def reset(self) -> None:
        """Start a new episode. The server keeps no per-episode state, so nothing to send."""

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        self._ws.close()

    def __enter__(self) -> WebsocketClientPolicy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
