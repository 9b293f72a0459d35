"""The server with a real (tiny, untrained) DexVLA checkpoint, as `dexvla serve` loads it."""

from __future__ import annotations

import numpy as np
import pytest

from dexvla.policy.modeling import DexVLAPolicy
from dexvla.serve.client import PolicyServerError, WebsocketClientPolicy
from dexvla.serve.server import PolicyServer
from dexvla.serve.service import ChunkPolicyService

from ..policy.conftest import make_observation, make_policy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny"
    make_policy().save_pretrained(path)
    return path


def test_real_checkpoint_round_trip(checkpoint):
    policy = DexVLAPolicy.from_pretrained(checkpoint)
    service = ChunkPolicyService(policy, "aloha", chunk_size=policy.config.chunk_size)
    server = PolicyServer(service, host="127.0.0.1", port=0)
    with server.running_in_thread(), WebsocketClientPolicy("127.0.0.1", server.port) as client:
        metadata = client.get_server_metadata()
        assert metadata["embodiment"] == "aloha"
        assert metadata["chunk_size"] == 50
        obs = make_observation()
        obs.pop("embodiment")
        reply = client.infer(obs)
        assert reply["actions"].shape == (50, 14)
        assert reply["actions"].dtype == np.float32
        assert np.isfinite(reply["actions"]).all()
        assert isinstance(reply["reasoning"], str)
        bad = make_observation()
        bad["observation.state"] = np.zeros(3, np.float32)
        with pytest.raises(PolicyServerError, match="state"):
            client.infer(bad)
        assert client.infer(obs)["actions"].shape == (50, 14)
