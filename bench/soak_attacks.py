"""The attacker of `soak_server.py`: malformed messages of every kind against a policy server.

`attack(port, count, duration, metadata, options)` sends `count` malformed messages spread
over `duration` seconds and returns ``{kind: {outcome: n}}``. Kinds (shares of `count`):

- over one websocket, one frame each, the rest of the count shared equally: random bytes,
  truncated msgpack, wrong types (non-maps, keys of the wrong type, deep nesting, fields of the
  wrong type), missing keys, extra keys with a missing one, wrong image shapes, wrong image
  dtypes, NaN/inf state (and float64 past float32's range), unknown embodiment, oversized
  arrays (headers claiming more elements than their data, object dtype), text frames;
- 1% each: a message over the message limit, a frame over the transport limit;
- 2% each: a raw websocket frame breaking the protocol (unmasked, reserved opcode, bad UTF-8,
  a stray continuation), HTTP garbage on a raw TCP socket;
- 1% each: a slow-loris handshake (half an HTTP request, then silence) and a slow-loris frame
  (a finished handshake, then half a frame and silence), at most 8 of each held at once;
- 10%: a connection storm, bursts of (max_connections - clients + 4) handshakes held open
  together, then closed: more than the free sessions, so some get HTTP 503.

Outcomes: ``error`` (an error reply), ``close NNNN`` (a close frame with that code), ``http
NNN`` (a refused handshake), ``dropped`` (the server closed the TCP connection), ``metadata``
(a storm connection admitted); the failures, listed in `FAILURES`, are ``hung`` (nothing within
the deadline), ``actions`` (garbage answered as if it were valid) and ``unexpected``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct
import time
from collections import Counter
from typing import Any

import msgpack
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dexvla.serve.protocol import packb

FAILURES = frozenset({"hung", "actions", "unexpected"})
REPLY_DEADLINE_S = 30.0
HELD_AT_ONCE = 8


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A websocket frame as a client sends it (a zero mask leaves the payload as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def close_code(stream: bytes) -> int | None:
    """The code of the first close frame in a stream of server frames, if any."""
    at = 0
    while at + 2 <= len(stream):
        opcode, n = stream[at] & 0x0F, stream[at + 1] & 0x7F
        at += 2
        if n == 126:
            (n,), at = struct.unpack("!H", stream[at : at + 2]), at + 2
        elif n == 127:
            (n,), at = struct.unpack("!Q", stream[at : at + 8]), at + 8
        if opcode == 8 and n >= 2 and at + 2 <= len(stream):
            return struct.unpack("!H", stream[at : at + 2])[0]
        at += n
    return None


def array(shape: list, dtype: str, data: bytes) -> dict:
    """A msgpack-numpy array header with arbitrary (possibly inconsistent) fields."""
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


class Garbage:
    """Malformed message bodies, each a variation of one valid observation."""

    def __init__(self, metadata: dict, max_message_bytes: int, factor: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        spec = metadata["observation"]
        self.images = [k for k, s in spec.items() if s["dtype"] == "uint8"]
        self.state = next(k for k, s in spec.items() if s["dtype"].startswith("float"))
        self.required = [k for k, s in spec.items() if s.get("required", True)]
        self.good: dict[str, Any] = {k: np.zeros((8, 8, 3), np.uint8) for k in self.images} | {
            self.state: np.zeros(spec[self.state]["shape"], np.float32),
            "task": "pick",
        }
        self.limit, self.factor = max_message_bytes, factor

    def variant(self, **changes: Any) -> bytes:
        return packb({**self.good, **changes})

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 4096))

    def truncated_msgpack(self) -> bytes:
        full = self.variant()
        return full[: self.rng.randint(1, len(full) - 1)]

    def wrong_types(self) -> bytes:
        choices = [
            lambda: packb([1, 2, 3]),
            lambda: packb(3.5),
            lambda: packb("observation"),
            lambda: packb(None),
            lambda: msgpack.packb({1: 2, 3: 4}),
            lambda: b"\x91" * 5000 + b"\xc0",
            lambda: self.variant(**{self.state: "0,0,0"}),
            lambda: self.variant(task=7),
            lambda: self.variant(**{self.images[0]: [[1, 2, 3]]}),
            lambda: self.variant(**{self.state: {"a": 1}}),
        ]
        return self.rng.choice(choices)()

    def missing_keys(self) -> bytes:
        drop = set(self.rng.sample(self.required, self.rng.randint(1, len(self.required))))
        return packb({k: v for k, v in self.good.items() if k not in drop})

    def extra_keys(self) -> bytes:
        drop = self.rng.choice(self.required)
        body = {k: v for k, v in self.good.items() if k != drop}
        body |= {f"extra.{i}": np.arange(i, dtype=np.int32) for i in range(20)}
        return packb(body)

    def wrong_image_shape(self) -> bytes:
        shape = self.rng.choice([(8, 8, 4), (8, 8), (8,), (0, 8, 3), (1, 1, 1, 3), (8, 8, 1)])
        return self.variant(**{self.rng.choice(self.images): np.zeros(shape, np.uint8)})

    def wrong_image_dtype(self) -> bytes:
        dtype = self.rng.choice([np.float32, np.float64, np.int16, np.bool_, np.uint16])
        return self.variant(**{self.rng.choice(self.images): np.zeros((8, 8, 3), dtype)})

    def nan_inf_state(self) -> bytes:
        state = np.zeros(self.good[self.state].shape, np.float64)
        state[self.rng.randrange(state.size)] = self.rng.choice([np.nan, np.inf, -np.inf, 1e300])
        dtype = np.float64 if state.max() == 1e300 else self.rng.choice([np.float32, np.float64])
        return self.variant(**{self.state: state.astype(dtype)})

    def unknown_embodiment(self) -> bytes:
        return self.variant(embodiment=self.rng.choice(["robot-x", "", "ALOHA", 7, None]))

    def oversized_array(self) -> bytes:
        choices = [
            array([2**40], "<f4", b"\0" * 16),
            array([2**31, 2**31, 3], "|u1", b"\0" * 8),
            array([-1], "<f4", b"\0" * 4),
            array([4], "|O", b"\0" * 32),
            array([4], "<c8", b"\0" * 32),
            array([4], "not-a-dtype", b"\0" * 16),
        ]
        return self.variant(**{self.state: self.rng.choice(choices)})

    def text_frame(self) -> str:
        return self.rng.choice(["hello", "{}", '{"observation.state": [0, 0]}', "\u2603" * 100])

    def oversized_message(self) -> bytes:
        side = int((self.limit * 1.2 / 3) ** 0.5) + 1
        return self.variant(**{self.images[0]: np.zeros((side, side, 3), np.uint8)})

    def oversized_frame(self) -> bytes:
        return b"\0" * int(self.limit * self.factor * 1.25)


FRAME_KINDS = (
    "random_bytes", "truncated_msgpack", "wrong_types", "missing_keys", "extra_keys",
    "wrong_image_shape", "wrong_image_dtype", "nan_inf_state", "unknown_embodiment",
    "oversized_array", "text_frame",
)  # fmt: skip
SHARES = {
    "oversized_message": 0.01,
    "oversized_frame": 0.01,
    "bad_frame": 0.02,
    "http_garbage": 0.02,
    "slow_loris_handshake": 0.01,
    "slow_loris_frame": 0.01,
    "connection_storm": 0.10,
}
BAD_FRAMES = (
    client_frame(2, b"unmasked", masked=False),
    client_frame(3, b"reserved opcode"),
    client_frame(1, b"\xff\xfe not utf-8"),
    client_frame(0, b"stray continuation"),
)


def schedule(count: int, burst: int, seed: int) -> list[str]:
    """`count` message kinds, shuffled; a storm burst is one entry counting `burst` messages."""
    kinds = {kind: max(1, round(count * share)) for kind, share in SHARES.items()}
    kinds["connection_storm"] = max(1, round(kinds["connection_storm"] / burst))
    others = sum(kinds.values()) - kinds["connection_storm"]
    frames = max(len(FRAME_KINDS), count - others - kinds["connection_storm"] * burst)
    items = [FRAME_KINDS[i % len(FRAME_KINDS)] for i in range(frames)]
    for kind, n in kinds.items():
        items += [kind] * n
    random.Random(seed).shuffle(items)
    return items


class Attacker:
    """Runs the schedule; `outcomes[kind][outcome]` counts what each message got."""

    def __init__(self, port: int, metadata: dict, options: dict) -> None:
        self.port, self.options = port, options
        self.uri = f"ws://127.0.0.1:{port}"
        limit = int(options["max_message_mb"] * 2**20)
        self.garbage = Garbage(metadata, limit, factor=2, seed=0)
        self.burst = options["max_connections"] - options["clients"] + 4
        self.outcomes: dict[str, Counter[str]] = {}
        self.ws: ClientConnection | None = None
        self.held = {
            "slow_loris_handshake": asyncio.Semaphore(HELD_AT_ONCE),
            "slow_loris_frame": asyncio.Semaphore(HELD_AT_ONCE),
            "connection_storm": asyncio.Semaphore(1),
        }

    def count(self, kind: str, outcome: str) -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    async def connection(self) -> ClientConnection:
        """The frame lane's websocket, (re)opened as needed; retried while the server is full."""
        deadline = time.monotonic() + REPLY_DEADLINE_S
        while self.ws is None:
            try:
                self.ws = await connect(self.uri, open_timeout=10, max_size=None, compression=None)
                await self.ws.recv()  # the metadata
            except (InvalidHandshake, OSError, ConnectionClosed, TimeoutError):
                self.ws = None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        return self.ws

    async def frame(self, kind: str) -> None:
        message = getattr(self.garbage, kind)()
        ws = await self.connection()
        try:
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), REPLY_DEADLINE_S)
        except TimeoutError:
            self.count(kind, "hung")
            await ws.close()
            self.ws = None
            return
        except ConnectionClosed as closed:
            self.count(kind, f"close {closed.rcvd.code}" if closed.rcvd else "dropped")
            self.ws = None
            return
        body = msgpack.unpackb(reply) if isinstance(reply, bytes) else {}
        outcome = "error" if "error" in body else "actions" if "actions" in body else "unexpected"
        self.count(kind, outcome)

    async def raw(self, kind: str, request: bytes, then: bytes, deadline_s: float) -> None:
        """Send `request` on a raw socket, then `then` once a 101 came back; read to EOF."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        received = b""
        try:
            writer.write(request)
            async with asyncio.timeout(deadline_s):
                while b"\r\n\r\n" not in received:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    received += chunk
                if then and received.startswith(b"HTTP/1.1 101"):
                    writer.write(then)
                while chunk := await reader.read(65536):
                    received += chunk
        except TimeoutError:
            self.count(kind, "hung")
            return
        except ConnectionError:
            pass
        finally:
            writer.close()
        head, _, frames = received.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else None
        code = close_code(frames) if status == "101" else None
        self.count(kind, f"close {code}" if code else f"http {status}" if status else "dropped")

    def handshake(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    async def storm_one(self, opened: list) -> None:
        try:
            ws = await connect(self.uri, open_timeout=20, compression=None)
            opened.append(ws)
            await asyncio.wait_for(ws.recv(), REPLY_DEADLINE_S)
            self.count("connection_storm", "metadata")
        except InvalidStatus as refused:
            self.count("connection_storm", f"http {refused.response.status_code}")
        except (InvalidHandshake, ConnectionClosed, OSError):
            self.count("connection_storm", "dropped")
        except TimeoutError:
            self.count("connection_storm", "hung")

    async def storm(self) -> None:
        opened: list[ClientConnection] = []
        await asyncio.gather(*(self.storm_one(opened) for _ in range(self.burst)))
        await asyncio.gather(*(ws.close() for ws in opened))

    async def background(self, kind: str) -> None:
        options = self.options
        async with self.held[kind]:
            if kind == "connection_storm":
                await self.storm()
            elif kind == "slow_loris_handshake":
                partial = self.handshake()[:40]
                await self.raw(kind, partial, b"", options["handshake_timeout"] + 20)
            else:
                stall = client_frame(2, b"x" * 1000)[:20]
                wait = options["ping_interval"] + options["ping_timeout"] + 25
                await self.raw(kind, self.handshake(), stall, wait)

    async def run(self, items: list[str], duration: float) -> None:
        pace = 0.9 * duration / max(1, len(items))
        start = time.monotonic()
        tasks = []
        for index, kind in enumerate(items):
            delay = start + index * pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if kind in self.held:
                    tasks.append(asyncio.create_task(self.background(kind)))
                elif kind == "bad_frame":
                    frame = BAD_FRAMES[index % len(BAD_FRAMES)]
                    await self.raw(kind, self.handshake(), frame, REPLY_DEADLINE_S)
                elif kind == "http_garbage":
                    junk = self.garbage.random_bytes().replace(b"\r\n", b"") + b"\r\n\r\n"
                    await self.raw(kind, junk, b"", REPLY_DEADLINE_S)
                else:
                    await self.frame(kind)
            except (OSError, InvalidHandshake, TimeoutError) as error:
                self.count(kind, "unexpected")
                print(f"{kind}: {type(error).__name__}: {error}", flush=True)
        await asyncio.gather(*tasks)
        if self.ws is not None:
            await self.ws.close()


def attack(port: int, count: int, duration: float, metadata: dict, options: dict) -> dict:
    """Run the attack to its end; ``{kind: {outcome: n}}`` (see the module docstring)."""
    attacker = Attacker(port, metadata, options)
    asyncio.run(attacker.run(schedule(count, attacker.burst, seed=0), duration))
    return {kind: dict(outcomes) for kind, outcomes in attacker.outcomes.items()}
