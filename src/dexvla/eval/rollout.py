"""Evaluation episodes: the policy adapters and result records around the one rollout loop.

`run_episode` runs `dexvla.sim.rollout.roll_out` (which ends an episode at its first success,
at truncation or at `max_steps`) and keeps what the report needs. Two kinds of policy go
through it:

- `RuntimePolicy`: a `DexVLAPolicy` (or any `ChunkPolicy`) stepped by `InferenceRuntime`, so
  chunking, ensembling and the reasoning cadence are exactly those of deployment. Every chunk
  the policy returns is recorded (for the predicted-vs-executed plot) with its latency.
- `ScriptedPolicy`: the task's scripted expert, a sanity ceiling for the loop and the task.

An episode records only small per-step data (actions, states, sub-steps, reward stages) plus,
when asked, annotated video frames; `EpisodeResult.summary()` is what the JSONL stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dexvla.runtime.inference import InferenceRuntime, RuntimeConfig
from dexvla.sim.registry import TaskSpec
from dexvla.sim.rollout import EpisodePolicy, ExpertPolicy, FrameFn, roll_out


@dataclass
class ChunkRecord:
    """One chunk the policy predicted: the step it starts at, its actions, its latency."""

    start: int
    actions: np.ndarray  # (H, A) robot units
    ms: float
    reasoning: bool  # True when the sub-step was regenerated for this chunk


class _RecordingPolicy:
    """Forwards to a `ChunkPolicy`, seeding its diffusion noise and recording every chunk."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.records: list[ChunkRecord] = []
        self.t = 0
        self.generator: torch.Generator | None = None

    def generate_reasoning(self, obs: Any) -> Any:
        return self.policy.generate_reasoning(obs)

    def predict_action_chunk(self, obs: Any, reasoning: Any = None) -> tuple[np.ndarray, Any]:
        start = time.perf_counter()
        chunk, used = self.policy.predict_action_chunk(obs, reasoning, generator=self.generator)
        ms = (time.perf_counter() - start) * 1e3
        self.records.append(ChunkRecord(self.t, np.asarray(chunk), ms, reasoning is None))
        return chunk, used


class RuntimePolicy:
    """A chunk policy run through `InferenceRuntime`; episode `seed` seeds the diffusion noise."""

    def __init__(self, policy: Any, config: RuntimeConfig) -> None:
        self.recorder = _RecordingPolicy(policy)
        self.runtime = InferenceRuntime(self.recorder, config)

    def reset(self, env: gym.Env, seed: int) -> None:
        self.runtime.reset()
        self.recorder.records = []
        device = getattr(self.recorder.policy, "device", torch.device("cpu"))
        self.recorder.generator = torch.Generator(device=device).manual_seed(seed)

    def act(self, obs: dict[str, Any], t: int) -> tuple[np.ndarray, str]:
        self.recorder.t = t
        action = self.runtime.step(obs)
        substep = self.runtime.substep
        return action, substep if isinstance(substep, str) else ""

    @property
    def chunks(self) -> list[ChunkRecord]:
        return self.recorder.records

    def close(self) -> None:
        self.runtime.close()


class ScriptedPolicy(ExpertPolicy):
    """The task's scripted expert as an evaluation policy: it predicts no chunks."""

    chunks: tuple[ChunkRecord, ...] = ()

    def close(self) -> None:
        return None


@dataclass
class EpisodeResult:
    """Everything one closed-loop episode produced."""

    index: int
    seed: int
    success: bool
    success_step: int | None
    steps: int
    rewards: list[float]
    stages: list[int]
    max_stage: int
    stage_names: list[str]
    substeps: list[str]
    actions: np.ndarray  # (T, A) executed
    states: np.ndarray  # (T, S) observed before each action
    step_ms: list[float]
    chunks: list[ChunkRecord]
    wall_s: float
    frames: list[np.ndarray] = field(default_factory=list)

    def timeline(self) -> list[dict[str, Any]]:
        """Runs of equal sub-steps: [{"start", "end" (exclusive), "text"}]."""
        runs: list[dict[str, Any]] = []
        for t, text in enumerate(self.substeps):
            if runs and runs[-1]["text"] == text:
                runs[-1]["end"] = t + 1
            else:
                runs.append({"start": t, "end": t + 1, "text": text})
        return runs

    def latency(self) -> dict[str, Any]:
        """Policy latency: ms per chunk (all / with reasoning / cached) and per control step."""
        return {
            "chunk_ms": _describe([c.ms for c in self.chunks]),
            "reasoning_chunk_ms": _describe([c.ms for c in self.chunks if c.reasoning]),
            "cached_chunk_ms": _describe([c.ms for c in self.chunks if not c.reasoning]),
            "step_ms": _describe(self.step_ms),
            "policy_s": float(sum(self.step_ms) / 1e3),
        }

    def summary(self) -> dict[str, Any]:
        """The JSON-safe record of this episode (one line of the per-episode JSONL)."""
        top = self.max_stage
        return {
            "episode": self.index,
            "seed": self.seed,
            "success": self.success,
            "success_step": self.success_step,
            "steps": self.steps,
            "total_reward": float(sum(self.rewards)),
            "max_reward": top,
            "max_reward_possible": len(self.stage_names) - 1 if self.stage_names else None,
            "max_stage_name": self.stage_names[top] if top < len(self.stage_names) else str(top),
            "stage_names": self.stage_names,
            "chunks": len(self.chunks),
            "latency": self.latency(),
            "timeline": self.timeline(),
            "wall_s": self.wall_s,
        }


def _describe(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "count": len(values),
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def stage_names(env: gym.Env, max_reward: int | None) -> list[str]:
    """Names of the reward stages 0..max (ALOHA scenes name theirs; others get numbers)."""
    scene = getattr(env.unwrapped, "scene", None)
    names = getattr(scene, "stage_names", None)
    if names:
        return list(names)
    if max_reward is None:
        return []
    return ["none", *(f"stage {i}" for i in range(1, max_reward)), "success"]


def run_episode(
    env: gym.Env,
    policy: EpisodePolicy,
    spec: TaskSpec,
    *,
    index: int,
    seed: int,
    max_steps: int,
    frame_fn: FrameFn | None = None,
) -> EpisodeResult:
    """Run one episode from `env.reset(seed=seed)` until success, truncation or `max_steps`.

    `frame_fn(obs, substep, t)`, when given, turns each observation into a video frame.
    """
    start_wall = time.perf_counter()
    run = roll_out(env, policy, spec, seed=seed, max_steps=max_steps, frame_fn=frame_fn)
    return EpisodeResult(
        index=index,
        seed=seed,
        success=run.success,
        success_step=run.success_step,
        steps=run.steps,
        rewards=run.rewards,
        stages=run.stages,
        max_stage=max(run.stages),
        stage_names=stage_names(env, run.info.get("max_reward")),
        substeps=run.substeps,
        actions=run.actions,
        states=run.states,
        step_ms=run.step_ms,
        chunks=list(getattr(policy, "chunks", [])),
        wall_s=time.perf_counter() - start_wall,
        frames=run.frames,
    )
