"""InferenceRuntime: chunking and ensembling arithmetic, reasoning cadence, async reasoning."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

import dexvla.runtime
from dexvla.runtime.inference import (
    BatchedInferenceRuntime,
    ChunkPolicy,
    InferenceRuntime,
    RuntimeConfig,
)
from dexvla.schema import EMBODIMENT, STATE, TASK, Reasoning

OBS = {STATE: np.zeros(2, np.float32), TASK: "t", EMBODIMENT: "sawyer"}


def test_the_runtime_exports_the_one_reasoning_class():
    assert dexvla.runtime.Reasoning is Reasoning
    assert Reasoning(text=["a", "b"]).texts == ["a", "b"] and Reasoning(text="a").texts == ["a"]


class FakePolicy:
    """Chunk c (0-based, in call order) holds action c*100 + i at row i, column 0 (column 1 is
    its negative), so every executed action says which chunk and row it came from. For a list
    of observations, environment n gets a (H, 2) chunk offset by 1000 * n."""

    def __init__(self, horizon: int = 4, gate: threading.Event | None = None) -> None:
        self.horizon = horizon
        self.gate = gate
        self.chunk_calls: list[str | None] = []  # reasoning text passed in (None = generate)
        self.chunk_used: list[str] = []  # reasoning text each chunk was made from
        self.reasoning_threads: list[str] = []
        self._generated = 0
        self._lock = threading.Lock()

    def generate_reasoning(self, obs: dict) -> Reasoning:
        with self._lock:
            n = self._generated
            self._generated += 1
        self.reasoning_threads.append(threading.current_thread().name)
        if n > 0 and self.gate is not None:
            assert self.gate.wait(timeout=5.0), "test gate never opened"
        if isinstance(obs, list):
            return Reasoning([f"substep-{n}-env{e}" for e in range(len(obs))], np.full(3, n))
        return Reasoning(text=f"substep-{n}", states=np.full(3, n))

    def predict_action_chunk(
        self, obs: dict, reasoning: Reasoning | None = None
    ) -> tuple[np.ndarray, Reasoning]:
        self.chunk_calls.append(None if reasoning is None else str(reasoning.text))
        if reasoning is None:
            reasoning = self.generate_reasoning(obs)
        self.chunk_used.append(str(reasoning.text))
        c = len(self.chunk_calls) - 1
        rows = np.arange(self.horizon, dtype=np.float32) + 100 * c
        chunk = np.stack([rows, -rows], axis=1)
        if isinstance(obs, list):
            return np.stack(
                [chunk + 1000 * n * np.array([1, -1]) for n in range(len(obs))]
            ), reasoning
        return chunk, reasoning

    @property
    def generated(self) -> int:
        return self._generated


def run(runtime: InferenceRuntime, steps: int) -> list[float]:
    return [float(runtime.step(OBS)[0]) for _ in range(steps)]


def wait_for_reasoning(runtime: InferenceRuntime, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while runtime.stats()["reasoning_pending"]:
        assert time.monotonic() < deadline, "background reasoning did not finish"
        time.sleep(0.002)


def test_fake_policy_satisfies_protocol() -> None:
    assert isinstance(FakePolicy(), ChunkPolicy)


def test_chunking_executes_first_k_actions_of_each_chunk() -> None:
    policy = FakePolicy(horizon=5)
    runtime = InferenceRuntime(policy, RuntimeConfig(mode="chunk", execute_steps=3))
    assert run(runtime, 7) == [0, 1, 2, 100, 101, 102, 200]
    action = runtime.step(OBS)
    assert action.shape == (2,) and action.dtype == np.float32
    np.testing.assert_array_equal(action, [201, -201])
    assert runtime.stats()["chunks"] == 3 and runtime.stats()["steps"] == 8


def test_ensembling_with_zero_decay_is_the_plain_mean_of_overlapping_predictions() -> None:
    policy = FakePolicy(horizon=3)
    runtime = InferenceRuntime(
        policy, RuntimeConfig(mode="ensemble", execute_steps=1, ensemble_decay=0.0)
    )
    # step 0: c0[0]; step 1: c0[1], c1[0]; step 2: c0[2], c1[1], c2[0]; step 3: c1[2], c2[1], c3[0]
    expected = [0, (1 + 100) / 2, (2 + 101 + 200) / 3, (102 + 201 + 300) / 3]
    np.testing.assert_allclose(run(runtime, 4), expected, rtol=1e-6)


def test_ensembling_weights_are_exp_minus_m_i_with_the_oldest_first() -> None:
    m = 0.5
    policy = FakePolicy(horizon=3)
    runtime = InferenceRuntime(
        policy, RuntimeConfig(mode="ensemble", execute_steps=1, ensemble_decay=m)
    )
    w1 = math.exp(-m)
    w2 = math.exp(-2 * m)
    expected = [
        0.0,
        (1 * 1 + 100 * w1) / (1 + w1),
        (2 * 1 + 101 * w1 + 200 * w2) / (1 + w1 + w2),
        (102 * 1 + 201 * w1 + 300 * w2) / (1 + w1 + w2),
    ]
    got = run(runtime, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[1] < 50.5  # the older prediction (1) outweighs the newer one (100)


def test_ensembling_with_a_stride_predicts_every_k_steps() -> None:
    policy = FakePolicy(horizon=4)
    runtime = InferenceRuntime(
        policy, RuntimeConfig(mode="ensemble", execute_steps=2, ensemble_decay=0.0)
    )
    # chunks at t=0 and t=2; step 2: c0[2], c1[0]; step 3: c0[3], c1[1]
    np.testing.assert_allclose(run(runtime, 4), [0, 1, 51, 52])
    assert len(policy.chunk_calls) == 2


def test_reasoning_regenerated_every_m_chunks_and_reused_in_between() -> None:
    policy = FakePolicy(horizon=4)
    runtime = InferenceRuntime(policy, RuntimeConfig(execute_steps=2, reasoning_every=3))
    run(runtime, 14)  # 7 chunks: reasoning at chunks 0, 3, 6
    assert policy.chunk_calls == [
        None,
        "substep-0",
        "substep-0",
        None,
        "substep-1",
        "substep-1",
        None,
    ]
    assert policy.generated == 3
    stats = runtime.stats()
    assert (stats["reasoning_generated"], stats["reasoning_reused"]) == (3, 4)
    assert runtime.substep == "substep-2"


def test_request_reasoning_forces_regeneration_at_the_next_chunk_and_restarts_cadence() -> None:
    policy = FakePolicy(horizon=2)
    runtime = InferenceRuntime(policy, RuntimeConfig(execute_steps=1, reasoning_every=3))
    run(runtime, 2)
    runtime.request_reasoning()
    run(runtime, 4)
    assert policy.chunk_calls == [None, "substep-0", None, "substep-1", "substep-1", None]


def test_reset_clears_queued_actions_and_the_reasoning_cache() -> None:
    policy = FakePolicy(horizon=4)
    runtime = InferenceRuntime(policy, RuntimeConfig(execute_steps=4, reasoning_every=10))
    run(runtime, 2)
    runtime.reset()
    assert runtime.substep is None
    assert run(runtime, 1) == [100]
    assert policy.chunk_calls == [None, None]


def test_async_reasoning_uses_the_latest_finished_reasoning_without_blocking() -> None:
    gate = threading.Event()
    policy = FakePolicy(horizon=4, gate=gate)
    config = RuntimeConfig(execute_steps=1, reasoning_every=1, async_reasoning=True)
    with InferenceRuntime(policy, config) as runtime:
        runtime.step(OBS)  # the first chunk waits for reasoning (substep-0)
        start = time.perf_counter()
        run(runtime, 2)  # starts substep-1 in the background; it is stuck on the gate
        assert time.perf_counter() - start < 1.0
        assert runtime.stats()["reasoning_pending"]
        assert policy.chunk_used == ["substep-0"] * 3
        gate.set()
        wait_for_reasoning(runtime)
        runtime.step(OBS)
        assert policy.chunk_used[-1] == "substep-1"
        assert runtime.substep == "substep-1"
        assert policy.chunk_calls[0] is None and None not in policy.chunk_calls[1:]
        assert policy.reasoning_threads[0] == threading.current_thread().name
        assert all(name.startswith("dexvla-reasoning") for name in policy.reasoning_threads[1:])
    assert runtime.stats()["reasoning_async_started"] == 2


def test_async_reasoning_follows_the_cadence() -> None:
    policy = FakePolicy(horizon=4)
    config = RuntimeConfig(execute_steps=1, reasoning_every=3, async_reasoning=True)
    with InferenceRuntime(policy, config) as runtime:
        for _ in range(7):
            runtime.step(OBS)
            wait_for_reasoning(runtime)
        # the first chunk generates in line; background jobs start at chunks 3 and 6
        assert runtime.stats()["reasoning_async_started"] == 2
        assert policy.chunk_used == ["substep-0"] * 4 + ["substep-1"] * 3


def test_chunk_shorter_than_execute_steps_is_refused() -> None:
    runtime = InferenceRuntime(FakePolicy(horizon=2), RuntimeConfig(execute_steps=3))
    with pytest.raises(ValueError, match="execute_steps"):
        runtime.step(OBS)


def test_non_finite_actions_are_refused() -> None:
    class NaNPolicy(FakePolicy):
        def predict_action_chunk(self, obs, reasoning=None):
            chunk, reasoning = super().predict_action_chunk(obs, reasoning)
            chunk[1, 0] = np.nan
            return chunk, reasoning

    with pytest.raises(FloatingPointError):
        InferenceRuntime(NaNPolicy(), RuntimeConfig(execute_steps=2)).step(OBS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "average"},
        {"execute_steps": 0},
        {"ensemble_decay": -0.1},
        {"ensemble_decay": float("nan")},
        {"reasoning_every": 0},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RuntimeConfig(**kwargs)


def test_stats_report_latencies() -> None:
    runtime = InferenceRuntime(FakePolicy(horizon=4), RuntimeConfig(execute_steps=2))
    run(runtime, 4)
    stats = runtime.stats()
    assert stats["step_latency"]["count"] == 4
    assert stats["chunk_latency"]["count"] == 2
    assert stats["reasoning_latency"]["count"] == 2
    assert stats["substep"] == "substep-1"


def test_batched_runtime_steps_all_environments_with_one_call_per_chunk() -> None:
    policy = FakePolicy(horizon=3)
    runtime = BatchedInferenceRuntime(policy, RuntimeConfig(execute_steps=2), num_envs=2)
    actions = [runtime.step([OBS, OBS]) for _ in range(3)]
    assert all(a.shape == (2, 2) and a.dtype == np.float32 for a in actions)
    np.testing.assert_array_equal([a[:, 0] for a in actions], [[0, 1000], [1, 1001], [100, 1100]])
    np.testing.assert_array_equal(actions[2][:, 1], [-100, -1100])
    assert len(policy.chunk_calls) == 2
    assert runtime.substep == ["substep-1-env0", "substep-1-env1"]  # reasoning_every=1


def test_batched_ensembling_averages_per_environment() -> None:
    policy = FakePolicy(horizon=3)
    config = RuntimeConfig(mode="ensemble", execute_steps=1, ensemble_decay=0.0)
    runtime = BatchedInferenceRuntime(policy, config, num_envs=3)
    runtime.step([OBS] * 3)
    np.testing.assert_allclose(runtime.step([OBS] * 3)[:, 0], [50.5, 1050.5, 2050.5])


def test_batched_async_reasoning_snapshots_every_observation() -> None:
    policy = FakePolicy(horizon=2)
    config = RuntimeConfig(execute_steps=1, reasoning_every=1, async_reasoning=True)
    with BatchedInferenceRuntime(policy, config, num_envs=2) as runtime:
        for _ in range(3):
            runtime.step([OBS, OBS])
            wait_for_reasoning(runtime)
    assert policy.chunk_used == [str(["substep-0-env0", "substep-0-env1"])] * 2 + [
        str(["substep-1-env0", "substep-1-env1"])
    ]


def test_batched_runtime_checks_the_batch() -> None:
    runtime = BatchedInferenceRuntime(
        FakePolicy(horizon=2), RuntimeConfig(execute_steps=1), num_envs=2
    )
    with pytest.raises(ValueError, match="list of 2 observations"):
        runtime.step([OBS])
    with pytest.raises(ValueError, match="list of 2 observations"):
        runtime.step(OBS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_envs"):
        BatchedInferenceRuntime(FakePolicy(), num_envs=0)


def test_single_runtime_refuses_a_batched_chunk() -> None:
    class BatchPolicy(FakePolicy):
        def predict_action_chunk(self, obs, reasoning=None):
            return super().predict_action_chunk([obs, obs], reasoning)

    with pytest.raises(ValueError, match="shape"):
        InferenceRuntime(BatchPolicy(horizon=2), RuntimeConfig(execute_steps=1)).step(OBS)
