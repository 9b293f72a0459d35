"""The websocket server end to end on loopback: client, raw openpi-style peer, errors, auth."""

from __future__ import annotations

import http.client
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from dexvla.schema import Reasoning
from dexvla.serve.client import PolicyServerError, WebsocketClientPolicy
from dexvla.serve.protocol import packb, unpackb
from dexvla.serve.server import PolicyServer
from dexvla.serve.service import ChunkPolicyService

from .conftest import openpi_decode, openpi_encode

TIMEOUT = 10.0
EMBODIMENT = "sawyer"  # state 4, action 4, one camera "cam_high"
CHUNK = 5
MAX_MESSAGE_BYTES = 64 * 1024


class EchoPolicy:
    """actions[i, j] = state[j] + i; the reasoning text is the task, so replies are checkable."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def generate_reasoning(self, obs: dict) -> Reasoning:
        return Reasoning(text=f"do: {obs['task']}", states=obs["observation.state"])

    def predict_action_chunk(
        self, obs: dict, reasoning: Reasoning | None = None
    ) -> tuple[np.ndarray, Reasoning]:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        reasoning = reasoning or self.generate_reasoning(obs)
        state = obs["observation.state"]
        if obs["task"] == "explode":
            raise RuntimeError("boom")
        if obs["task"] == "bad shape":
            return np.zeros((CHUNK + 1, 4), np.float32), reasoning
        if obs["task"] == "unencodable":
            reasoning = Reasoning(text=object())  # type: ignore[arg-type]
        return state[None, :] + np.arange(CHUNK, dtype=np.float32)[:, None], reasoning


def make_obs(state: list[float] | np.ndarray, task: str = "pick", size: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return {
        "observation.images.cam_high": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation.state": np.asarray(state, dtype=np.float32),
        "task": task,
    }


def expected_actions(state: list[float] | np.ndarray) -> np.ndarray:
    return np.asarray(state, np.float32)[None, :] + np.arange(CHUNK, dtype=np.float32)[:, None]


@pytest.fixture
def policy() -> EchoPolicy:
    return EchoPolicy()


def start_server(policy: EchoPolicy, api_key: str | None = None) -> PolicyServer:
    service = ChunkPolicyService(policy, EMBODIMENT, chunk_size=CHUNK)
    return PolicyServer(
        service, host="127.0.0.1", port=0, api_key=api_key, max_message_bytes=MAX_MESSAGE_BYTES
    )


@pytest.fixture
def server(policy: EchoPolicy) -> Iterator[PolicyServer]:
    with start_server(policy).running_in_thread(timeout=10.0) as running:
        yield running


def client_for(server: PolicyServer, api_key: str | None = None) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(
        "127.0.0.1", server.port, api_key=api_key, open_timeout=TIMEOUT, timeout=TIMEOUT
    )


def test_metadata_on_connect_describes_the_embodiment(server: PolicyServer) -> None:
    with client_for(server) as client:
        meta = client.get_server_metadata()
    assert meta["embodiment"] == EMBODIMENT
    assert (meta["chunk_size"], meta["action_dim"], meta["state_dim"]) == (CHUNK, 4, 4)
    assert meta["action"] == {"dtype": "float32", "shape": [CHUNK, 4]}
    spec = meta["observation"]
    assert spec["observation.images.cam_high"] == {"dtype": "uint8", "shape": [None, None, 3]}
    assert spec["observation.state"]["shape"] == [4]
    assert spec["task"] == {"dtype": "str"}
    assert spec["embodiment"]["required"] is False


def test_round_trip_with_the_package_client(server: PolicyServer) -> None:
    with client_for(server) as client:
        reply = client.infer(make_obs([1, 2, 3, 4], task="stack"))
        reply_float64 = client.infer(make_obs(np.array([0.5, 0, 0, 0]), size=16))
        client.reset()
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (CHUNK, 4)
    np.testing.assert_array_equal(reply["actions"], expected_actions([1, 2, 3, 4]))
    assert reply["reasoning"] == "do: stack"
    assert set(reply["server_timing"]) == {"decode_ms", "queue_ms", "infer_ms", "total_ms"}
    assert set(reply["policy_timing"]) == {"chunk_ms"}
    assert server.service.policy.calls == 2  # one policy call per request, reasoning inside it
    np.testing.assert_array_equal(reply_float64["actions"], expected_actions([0.5, 0, 0, 0]))


def test_round_trip_with_a_raw_websockets_peer_speaking_openpi_msgpack(server: PolicyServer):
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as ws:
        meta = msgpack.unpackb(ws.recv(timeout=TIMEOUT), object_hook=openpi_decode)
        assert meta["chunk_size"] == CHUNK
        obs = {**make_obs([4, 3, 2, 1], task="raw"), "embodiment": EMBODIMENT, "extra": 1}
        ws.send(msgpack.packb(obs, default=openpi_encode, use_bin_type=True))
        reply = msgpack.unpackb(ws.recv(timeout=TIMEOUT), object_hook=openpi_decode)
    np.testing.assert_array_equal(reply["actions"], expected_actions([4, 3, 2, 1]))
    assert reply["reasoning"] == "do: raw"


def test_concurrent_clients_all_get_their_own_answers() -> None:
    policy = EchoPolicy(delay_s=0.01)
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(index: int, port: int) -> None:
        try:
            with WebsocketClientPolicy("127.0.0.1", port, timeout=TIMEOUT) as client:
                results[index] = [
                    client.infer(make_obs([index, step, 0, 0]))["actions"] for step in range(5)
                ]
        except BaseException as error:
            errors.append(error)

    with start_server(policy).running_in_thread(timeout=TIMEOUT) as server:
        threads = [threading.Thread(target=worker, args=(i, server.port)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in threads)
    assert not errors
    for index in range(4):
        for step, actions in enumerate(results[index]):
            np.testing.assert_array_equal(actions, expected_actions([index, step, 0, 0]))
    assert policy.calls == 20


def test_an_idle_connection_does_not_block_other_clients(server: PolicyServer) -> None:
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as idle:
        idle.recv(timeout=TIMEOUT)
        with client_for(server) as client:
            reply = client.infer(make_obs([1, 1, 1, 1]))
    np.testing.assert_array_equal(reply["actions"], expected_actions([1, 1, 1, 1]))


def oversized_obs() -> dict:
    side = int((MAX_MESSAGE_BYTES * 1.5 / 3) ** 0.5)
    return make_obs([0, 0, 0, 0], size=side)


def bad_messages() -> list[tuple[str, bytes | str, str]]:
    good = make_obs([1, 2, 3, 4])
    without_state = {k: v for k, v in good.items() if k != "observation.state"}
    object_array = {
        **good,
        "observation.state": {
            b"__ndarray__": True,
            b"data": b"\0" * 8,
            b"dtype": "|O",
            b"shape": [1],
        },
    }
    return [
        ("garbage bytes", b"\xc1\xff\x00garbage", "not a valid msgpack"),
        ("text frame", "hello", "text frame"),
        ("msgpack non-dict", packb([1, 2, 3]), "expected a map"),
        ("missing key", packb(without_state), "'observation.state': missing"),
        (
            "wrong image shape",
            packb({**good, "observation.images.cam_high": np.zeros((8, 8, 4), np.uint8)}),
            "shape (8, 8, 4)",
        ),
        (
            "wrong image dtype",
            packb({**good, "observation.images.cam_high": np.zeros((8, 8, 3), np.float32)}),
            "dtype float32",
        ),
        (
            "wrong state length",
            packb({**good, "observation.state": np.zeros(5, np.float32)}),
            "shape (4,)",
        ),
        (
            "integer state",
            packb({**good, "observation.state": np.zeros(4, np.int64)}),
            "dtype int64",
        ),
        (
            "NaN state",
            packb({**good, "observation.state": np.array([0, np.nan, 0, 0], np.float32)}),
            "NaN",
        ),
        ("task not a string", packb({**good, "task": 3}), "'task': expected a str"),
        ("wrong embodiment", packb({**good, "embodiment": "aloha"}), "expected one of"),
        ("object dtype", packb(object_array), "not allowed"),
        ("oversized", packb(oversized_obs()), "exceeds the limit"),
        ("policy exception", packb(make_obs([0, 0, 0, 0], task="explode")), "boom"),
        ("policy bad output", packb(make_obs([0, 0, 0, 0], task="bad shape")), "shape"),
        ("unencodable reply", packb(make_obs([0, 0, 0, 0], task="unencodable")), "encode"),
    ]


def test_malformed_messages_get_error_replies_and_the_connection_keeps_serving(
    server: PolicyServer,
) -> None:
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as ws:
        ws.recv(timeout=TIMEOUT)
        for name, message, match in bad_messages():
            ws.send(message)
            reply = unpackb(ws.recv(timeout=TIMEOUT))
            assert set(reply) == {"error"}, name
            assert match in reply["error"], (name, reply["error"])
        ws.send(packb(make_obs([9, 8, 7, 6])))
        reply = unpackb(ws.recv(timeout=TIMEOUT))
    np.testing.assert_array_equal(reply["actions"], expected_actions([9, 8, 7, 6]))


def test_package_client_raises_on_error_reply_and_stays_usable(server: PolicyServer) -> None:
    with client_for(server) as client:
        with pytest.raises(PolicyServerError, match=r"'observation\.state': missing"):
            client.infer({"observation.images.cam_high": np.zeros((4, 4, 3), np.uint8)})
        reply = client.infer(make_obs([1, 0, 0, 0]))
    np.testing.assert_array_equal(reply["actions"], expected_actions([1, 0, 0, 0]))


def test_frames_far_over_the_limit_close_only_that_connection(server: PolicyServer) -> None:
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as ws:
        ws.recv(timeout=TIMEOUT)
        ws.send(b"\0" * (MAX_MESSAGE_BYTES * 5))
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with client_for(server) as client:
        assert client.infer(make_obs([2, 2, 2, 2]))["reasoning"] == "do: pick"


def test_api_key_is_required_when_set(policy: EchoPolicy) -> None:
    with start_server(policy, api_key="s3cret").running_in_thread(timeout=TIMEOUT) as server:
        with pytest.raises(PolicyServerError) as missing:
            client_for(server)
        assert missing.value.status == 401
        with pytest.raises(PolicyServerError) as wrong:
            client_for(server, api_key="guess")
        assert wrong.value.status == 403
        with client_for(server, api_key="s3cret") as client:
            assert client.infer(make_obs([0, 0, 0, 1]))["reasoning"] == "do: pick"
        uri = f"ws://127.0.0.1:{server.port}"
        with connect(uri, additional_headers={"x-api-key": "s3cret"}, open_timeout=TIMEOUT) as ws:
            assert unpackb(ws.recv(timeout=TIMEOUT))["embodiment"] == EMBODIMENT
        assert healthz(server.port) == (200, "OK\n")
    assert policy.calls == 1


def healthz(port: int) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_healthz(server: PolicyServer) -> None:
    assert healthz(server.port) == (200, "OK\n")


def test_server_stops_and_releases_the_port(policy: EchoPolicy) -> None:
    with start_server(policy).running_in_thread(timeout=TIMEOUT) as server:
        port = server.port
    with pytest.raises(OSError):
        WebsocketClientPolicy("127.0.0.1", port, open_timeout=1.0)


def test_a_busy_client_does_not_starve_another() -> None:
    policy = EchoPolicy(delay_s=0.05)
    busy_done: list[int] = []

    def busy(port: int) -> None:
        with WebsocketClientPolicy("127.0.0.1", port, timeout=TIMEOUT) as client:
            for step in range(20):
                client.infer(make_obs([step, 0, 0, 0]))
                busy_done.append(step)

    with start_server(policy).running_in_thread(timeout=TIMEOUT) as server:
        thread = threading.Thread(target=busy, args=(server.port,))
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while len(busy_done) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with client_for(server) as client:
            reply = client.infer(make_obs([7, 7, 7, 7]))
        served_before = len(busy_done)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    np.testing.assert_array_equal(reply["actions"], expected_actions([7, 7, 7, 7]))
    assert served_before < 20  # first in, first out: it did not wait for all 20 busy requests
    assert reply["server_timing"]["queue_ms"] < 1000


def test_serve_command_is_registered_with_loopback_defaults() -> None:
    from dexvla.cli import build_parser

    args = build_parser().parse_args(["serve", "--checkpoint", "ckpt"])
    assert (args.host, args.port, args.max_message_mb) == ("127.0.0.1", 8000, 32.0)
    assert args.func.__module__ == "dexvla.serve.commands"


def test_serve_command_wires_checkpoint_embodiment_and_limits(monkeypatch, served) -> None:
    from dexvla.cli import main

    loaded_from: list[tuple] = []

    def from_pretrained(directory: str, dtype=None, device=None) -> EchoPolicy:
        loaded_from.append((directory, dtype, device))
        policy = EchoPolicy()
        policy.config = SimpleNamespace(embodiments=(EMBODIMENT,), chunk_size=CHUNK)
        stats = SimpleNamespace(embodiments=[EMBODIMENT])
        policy.processor = SimpleNamespace(require_stats=lambda: stats)
        return policy

    fake_class = SimpleNamespace(from_pretrained=from_pretrained)
    fake_module = SimpleNamespace(DexVLAPolicy=fake_class)
    monkeypatch.setitem(sys.modules, "dexvla.policy.modeling", fake_module)
    argv = [
        "serve",
        "--checkpoint",
        "ckpt",
        "--port",
        "0",
        "--api-key",
        "k",
        "--max-message-mb",
        "1",
    ]
    assert main(argv) == 0
    (server,) = served
    # no CUDA here: "auto" is the CPU in fp32
    assert loaded_from == [("ckpt", torch.float32, torch.device("cpu"))]
    assert (server.host, server.api_key, server.max_message_bytes) == ("127.0.0.1", "k", 2**20)
    assert server.service.metadata()["embodiment"] == EMBODIMENT
    assert server.service.metadata()["chunk_size"] == CHUNK
    assert main(["serve", "--checkpoint", "ckpt", "--embodiment", "aloha"]) == 2
    assert main(["serve", "--checkpoint", "ckpt", "--port", "0", "--dtype", "bfloat16"]) == 0
    assert loaded_from[-1] == ("ckpt", torch.bfloat16, torch.device("cpu"))
    assert main(["serve", "--checkpoint", "ckpt", "--device", "cuda:0"]) == 2  # no CUDA: said so
