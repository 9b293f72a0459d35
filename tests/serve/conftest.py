"""What the server tests share: openpi's msgpack layout, a `dexvla serve` that returns."""

from __future__ import annotations

import numpy as np
import pytest

from dexvla.serve.server import PolicyServer


@pytest.fixture
def served(monkeypatch) -> list[PolicyServer]:
    """Servers `dexvla serve` starts; each starts and stops at once instead of running."""
    seen: list[PolicyServer] = []

    async def serve_once(self: PolicyServer) -> None:
        await self.start()
        seen.append(self)
        await self.stop()

    monkeypatch.setattr(PolicyServer, "serve_forever", serve_once)
    return seen


def openpi_encode(obj):
    """The layout openpi's msgpack_numpy documents, written independently for the tests."""
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def openpi_decode(obj: dict):
    """openpi's msgpack_numpy object hook for arrays."""
    if b"__ndarray__" in obj:
        return np.frombuffer(obj[b"data"], dtype=obj[b"dtype"]).reshape(obj[b"shape"])
    return obj
