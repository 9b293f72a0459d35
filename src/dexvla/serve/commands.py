"""`dexvla serve`: serve a checkpoint over websockets with the openpi policy protocol."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

from dexvla.runtime.device import add_device_arguments
from dexvla.serve.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OPEN_TIMEOUT_S,
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_PING_TIMEOUT_S,
    TRANSPORT_LIMIT_FACTOR,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a checkpoint to openpi-compatible websocket clients"
    )
    parser.add_argument("--checkpoint", required=True, help="directory written by training")
    parser.add_argument(
        "--embodiment",
        default=None,
        help="embodiment to serve (default: the one the checkpoint's statistics cover, if "
        "they cover exactly one of its expert heads)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0 picks a free one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DEXVLA_API_KEY"),
        help="require this key from clients (default: $DEXVLA_API_KEY; unset = no key)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest observation message accepted, in MiB (default: %(default)g); larger ones "
        f"get an error reply, and frames over {TRANSPORT_LIMIT_FACTOR}x it close the connection",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open websocket sessions allowed at once (default: %(default)s); a handshake past "
        "it gets HTTP 503, and TCP connections past twice it are closed at once",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=DEFAULT_OPEN_TIMEOUT_S,
        help="seconds a client has to finish the websocket handshake (default: %(default)g)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=DEFAULT_PING_INTERVAL_S,
        help="seconds between keepalive pings to each client (default: %(default)g)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=DEFAULT_PING_TIMEOUT_S,
        help="seconds a client has to answer a ping before it is dropped; a client stalled "
        "half-way through a frame cannot answer (default: %(default)g)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the expert's denoising step (faster chunks; the first takes longer)",
    )
    add_device_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dexvla.policy.modeling import DexVLAPolicy
    from dexvla.runtime.device import resolve_device, resolve_dtype
    from dexvla.serve.server import PolicyServer
    from dexvla.serve.service import ChunkPolicyService

    for flag in (
        "max_message_mb",
        "max_connections",
        "handshake_timeout",
        "ping_interval",
        "ping_timeout",
    ):
        value = getattr(args, flag)
        if not value > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    device = resolve_device(args.device)
    policy = DexVLAPolicy.from_pretrained(
        args.checkpoint, dtype=resolve_dtype(args.dtype, device), device=device
    )
    if args.compile:
        policy.expert.compile_steps()
    embodiment = served_embodiment(
        args.embodiment, policy.config.embodiments, policy.processor.require_stats().embodiments
    )
    service = ChunkPolicyService(policy, embodiment, chunk_size=policy.config.chunk_size)
    server = PolicyServer(
        service,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_connections=args.max_connections,
        open_timeout=args.handshake_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())
    return 0


def served_embodiment(requested: str | None, heads: Sequence[str], covered: Sequence[str]) -> str:
    """The embodiment to serve: `requested`, else the one head the statistics cover.

    A policy can act only for an embodiment it has a head and normalisation statistics for,
    so a checkpoint with two heads whose statistics cover one serves that one by default.
    Errors list the choices.
    """
    usable = [name for name in heads if name in covered]
    if requested is None:
        if len(usable) == 1:
            return usable[0]
        if not usable:
            raise ValueError(
                f"the checkpoint's statistics cover {list(covered)}, none of its expert heads "
                f"{list(heads)}: it cannot serve any embodiment"
            )
        raise ValueError(
            f"the checkpoint serves several embodiments {usable}: pass --embodiment as one of them"
        )
    if requested not in heads:
        raise ValueError(
            f"pass --embodiment as one of the checkpoint's embodiments {usable}, "
            f"not {requested!r} (its expert heads are {list(heads)})"
        )
    if requested not in covered:
        raise ValueError(
            f"the checkpoint has no statistics for {requested!r} (they cover {list(covered)}): "
            f"pass --embodiment as one of {usable}"
        )
    return requested
