"""The control-loop side of inference: turns action chunks into one action per control step.

A DexVLA policy predicts a chunk of H actions at once and, before that, a sub-step sentence
("reasoning") with the VLM. Regenerating the sentence is the slow part, so the runtime decides
*when* to call the policy and *what* to reuse:

- chunking: execute the first `k` actions of each chunk open-loop, then ask for a new chunk;
- temporal ensembling (ACT): ask for a chunk every `k` steps and average every chunk's
  prediction for the current step with weights ``exp(-m * i)``, ``i = 0`` the oldest;
- reasoning cadence: regenerate the sub-step every `M` chunks, or when `request_reasoning()`
  is called, and pass the cached reasoning to the fast action path in between;
- asynchronous reasoning (slow/fast dual system): the sub-step is regenerated in a background
  thread while chunks keep coming from the latest finished reasoning; only the very first
  chunk of an episode waits for reasoning.

Parallel environments: `BatchedInferenceRuntime` steps N environments in lockstep with one
batched policy call per chunk (the policy takes a list of observations); for environments that
must reset independently, run one `InferenceRuntime` per environment instead.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from dexvla.schema import Observation, Observations, Reasoning


@runtime_checkable
class ChunkPolicy(Protocol):
    """What the runtime and the server need from a policy (`DexVLAPolicy` implements it).

    `obs` is one observation dict as in docs/interfaces.md, or, for `BatchedInferenceRuntime`,
    a list of them (all of one embodiment). Actions are in robot units. A policy used with
    ``async_reasoning=True`` must accept `generate_reasoning` and `predict_action_chunk` being
    called at the same time from two threads.
    """

    def generate_reasoning(self, obs: Observations) -> Reasoning:
        """Run the VLM (slow) and return the sub-step text with the cached states."""
        ...

    def predict_action_chunk(
        self, obs: Observations, reasoning: Reasoning | None = None
    ) -> tuple[np.ndarray, Reasoning]:
        """Return an (H, A) chunk, (B, H, A) for a list; reuse `reasoning`, else generate it."""
        ...


@dataclass
class RuntimeConfig:
    """How the runtime turns chunks into actions and how often it regenerates the sub-step.

    mode: "chunk" executes `execute_steps` actions of each chunk open-loop; "ensemble" asks for a
        chunk every `execute_steps` steps and averages all predictions for the current step.
    execute_steps: k, the stride between chunk predictions (1 <= k <= H; ACT ensembling uses 1).
    ensemble_decay: m in the ensembling weights exp(-m * i), i = 0 the oldest prediction.
    reasoning_every: M, regenerate the sub-step every M chunks (1 = every chunk, as released).
    async_reasoning: regenerate the sub-step in a background thread instead of in line.
    """

    mode: Literal["chunk", "ensemble"] = "chunk"
    execute_steps: int = 16
    ensemble_decay: float = 0.01
    reasoning_every: int = 1
    async_reasoning: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("chunk", "ensemble"):
            raise ValueError(f"mode must be 'chunk' or 'ensemble', got {self.mode!r}")
        if self.execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1, got {self.execute_steps}")
        if not np.isfinite(self.ensemble_decay) or self.ensemble_decay < 0:
            raise ValueError(f"ensemble_decay must be finite and >= 0, got {self.ensemble_decay}")
        if self.reasoning_every < 1:
            raise ValueError(f"reasoning_every must be >= 1, got {self.reasoning_every}")


@dataclass
class LatencyStat:
    """Running count, mean, max and last value of one latency, in milliseconds."""

    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)
        self.last_ms = ms

    def as_dict(self) -> dict[str, float]:
        mean = self.total_ms / self.count if self.count else 0.0
        return {
            "count": self.count,
            "mean_ms": mean,
            "max_ms": self.max_ms,
            "last_ms": self.last_ms,
        }


@dataclass
class _Counters:
    steps: int = 0
    chunks: int = 0
    reasoning_generated: int = 0
    reasoning_reused: int = 0
    reasoning_async_started: int = 0
    step_latency: LatencyStat = field(default_factory=LatencyStat)
    chunk_latency: LatencyStat = field(default_factory=LatencyStat)
    reasoning_latency: LatencyStat = field(default_factory=LatencyStat)


class InferenceRuntime:
    """Steps a `ChunkPolicy` one control step at a time: `step(obs) -> action (A,)`.

    Not thread-safe: one control loop drives one runtime. Call `close()` (or use it as a
    context manager) to stop the background reasoning thread in asynchronous mode.
    """

    def __init__(self, policy: ChunkPolicy, config: RuntimeConfig | None = None) -> None:
        self.policy = policy
        self.config = config or RuntimeConfig()
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dexvla-reasoning")
            if self.config.async_reasoning
            else None
        )
        self._counters = _Counters()
        self._batch_shape: tuple[int, ...] = ()
        self._pending: Future[tuple[Reasoning, float]] | None = None
        self.reset()

    # -- public API -------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new episode: drop queued actions, cached reasoning and cadence counters.

        A background reasoning job still running belongs to the old episode; its result is
        dropped.
        """
        if self._pending is not None:
            self._pending.cancel()
        self._pending = None
        self._t = 0
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._reasoning: Reasoning | None = None
        self._chunks_since_reasoning = 0
        self._reasoning_requested = False

    def request_reasoning(self) -> None:
        """Regenerate the sub-step at the next chunk boundary (e.g. after a failure signal)."""
        self._reasoning_requested = True

    @property
    def substep(self) -> str | list[str] | None:
        """The sub-step the current actions come from (None before the first chunk)."""
        return None if self._reasoning is None else self._reasoning.text

    @property
    def reasoning(self) -> Reasoning | None:
        """The cached reasoning (text and opaque states) the fast path currently reuses."""
        return self._reasoning

    def step(self, obs: Observation) -> np.ndarray:
        """Return the action (A,) float32 to execute now, predicting a new chunk if due."""
        return self._step(obs)

    def _step(self, obs: Observations) -> np.ndarray:
        start = time.perf_counter()
        if self._t % self.config.execute_steps == 0:
            self._predict_chunk(obs)
        action = self._action_at(self._t)
        self._t += 1
        self._counters.steps += 1
        self._counters.step_latency.add((time.perf_counter() - start) * 1e3)
        return action

    def stats(self) -> dict[str, Any]:
        """Counters and latencies since construction (not reset by `reset()`)."""
        c = self._counters
        return {
            "steps": c.steps,
            "chunks": c.chunks,
            "reasoning_generated": c.reasoning_generated,
            "reasoning_reused": c.reasoning_reused,
            "reasoning_async_started": c.reasoning_async_started,
            "reasoning_pending": self._pending is not None and not self._pending.done(),
            "substep": self.substep,
            "step_latency": c.step_latency.as_dict(),
            "chunk_latency": c.chunk_latency.as_dict(),
            "reasoning_latency": c.reasoning_latency.as_dict(),
        }

    def close(self) -> None:
        """Stop the background reasoning thread (waits for a running job to finish)."""
        if self._executor is not None:
            if self._pending is not None:
                self._pending.cancel()
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> InferenceRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _reasoning_due(self) -> bool:
        return (
            self._reasoning_requested or self._chunks_since_reasoning >= self.config.reasoning_every
        )

    def _predict_chunk(self, obs: Observations) -> None:
        start = time.perf_counter()
        if self.config.async_reasoning:
            chunk = self._predict_chunk_async(obs)
        else:
            chunk = self._predict_chunk_sync(obs)
        self._counters.chunks += 1
        self._counters.chunk_latency.add((time.perf_counter() - start) * 1e3)
        self._chunks.append((self._t, self._check_chunk(chunk)))
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].shape[-2] <= self._t:
            self._chunks.popleft()

    def _predict_chunk_sync(self, obs: Observations) -> np.ndarray:
        if self._reasoning is None or self._reasoning_due():
            reasoning_start = time.perf_counter()
            chunk, self._reasoning = self.policy.predict_action_chunk(obs, None)
            self._counters.reasoning_latency.add((time.perf_counter() - reasoning_start) * 1e3)
            self._counters.reasoning_generated += 1
            self._reasoning_requested = False
            self._chunks_since_reasoning = 1
            return chunk
        chunk, _ = self.policy.predict_action_chunk(obs, self._reasoning)
        self._counters.reasoning_reused += 1
        self._chunks_since_reasoning += 1
        return chunk

    def _predict_chunk_async(self, obs: Observations) -> np.ndarray:
        self._collect_finished_reasoning()
        if self._reasoning is None:
            return self._predict_chunk_sync(obs)
        if self._pending is None and self._reasoning_due():
            self._start_background_reasoning(obs)
        chunk, _ = self.policy.predict_action_chunk(obs, self._reasoning)
        self._counters.reasoning_reused += 1
        self._chunks_since_reasoning += 1
        return chunk

    def _start_background_reasoning(self, obs: Observations) -> None:
        assert self._executor is not None
        snapshot = _snapshot(obs)

        def job() -> tuple[Reasoning, float]:
            start = time.perf_counter()
            reasoning = self.policy.generate_reasoning(snapshot)
            return reasoning, (time.perf_counter() - start) * 1e3

        self._pending = self._executor.submit(job)
        self._counters.reasoning_async_started += 1
        self._reasoning_requested = False
        self._chunks_since_reasoning = 0

    def _collect_finished_reasoning(self) -> None:
        if self._pending is None or not self._pending.done():
            return
        future, self._pending = self._pending, None
        self._reasoning, ms = future.result()
        self._counters.reasoning_generated += 1
        self._counters.reasoning_latency.add(ms)

    def _check_chunk(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        want = (*self._batch_shape, "H", "A")
        if chunk.ndim != len(want) or chunk.shape[: len(self._batch_shape)] != self._batch_shape:
            raise ValueError(f"policy returned an action chunk of shape {chunk.shape}; want {want}")
        if chunk.shape[-2] < self.config.execute_steps:
            raise ValueError(
                f"policy returned a chunk of {chunk.shape[-2]} actions but execute_steps is "
                f"{self.config.execute_steps}; lower execute_steps to at most the chunk size"
            )
        if not np.isfinite(chunk).all():
            raise FloatingPointError("policy returned non-finite actions")
        return chunk

    def _action_at(self, t: int) -> np.ndarray:
        if self.config.mode == "chunk":
            start, chunk = self._chunks[-1]
            return chunk[..., t - start, :].copy()
        predictions = [
            chunk[..., t - start, :] for start, chunk in self._chunks if t - start < chunk.shape[-2]
        ]
        weights = np.exp(-self.config.ensemble_decay * np.arange(len(predictions)))
        stacked = np.stack(predictions).astype(np.float64)
        return (np.tensordot(weights, stacked, axes=1) / weights.sum()).astype(np.float32)


class BatchedInferenceRuntime(InferenceRuntime):
    """Steps N environments in lockstep: `step([obs_0, ..., obs_N-1]) -> actions (N, A)`.

    One batched policy call per chunk serves every environment; chunking, ensembling and the
    reasoning cadence are shared, and `reset()` restarts all of them together (an environment
    that finishes early keeps being stepped, or its actions are ignored). `substep` is a list.
    """

    def __init__(
        self, policy: ChunkPolicy, config: RuntimeConfig | None = None, *, num_envs: int
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(policy, config)
        self.num_envs = num_envs
        self._batch_shape = (num_envs,)

    def step(self, obs: list[Observation]) -> np.ndarray:  # type: ignore[override]
        """Return the actions (N, A) float32 to execute now, one row per environment."""
        if not isinstance(obs, list) or len(obs) != self.num_envs:
            got = len(obs) if isinstance(obs, list) else type(obs).__name__
            raise ValueError(f"expected a list of {self.num_envs} observations, got {got}")
        return self._step(obs)


def _snapshot(obs: Observations) -> Observations:
    """Copy the arrays of an observation (or a list of them): environments reuse buffers."""
    if isinstance(obs, list):
        return [_snapshot(one) for one in obs]
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in obs.items()}
