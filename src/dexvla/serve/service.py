"""The policy service the server runs, observation checking, and the `ChunkPolicy` adapter.

A service is any object with `metadata() -> dict` and `infer(obs) -> dict`. Its metadata
carries an ``"observation"`` map from key to field spec, which the server checks every
incoming observation against before calling `infer`:

    {"dtype": "uint8", "shape": [None, None, 3]}    # an array; None = any size on that axis
    {"dtype": "float32", "shape": [14], "cast_from": ["float64"]}   # also accepted, then cast
    {"dtype": "str"}                                # a string
    {"dtype": "str", "required": False, "choices": ["aloha"]}
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from dexvla.embodiments import Embodiment, get_embodiment
from dexvla.runtime.inference import ChunkPolicy
from dexvla.schema import EMBODIMENT, STATE, TASK, Observation, image_key

PROTOCOL_NAME = "openpi-msgpack-numpy"
PROTOCOL_VERSION = 1


class PolicyService(Protocol):
    """What `PolicyServer` serves: openpi's policy interface plus a declared observation spec."""

    def metadata(self) -> dict[str, Any]:
        """Sent to every client on connect; ``metadata()["observation"]`` is the spec."""
        ...

    def infer(self, obs: Observation) -> dict[str, Any]:
        """Return at least ``{"actions": (H, D) float32}`` for one checked observation."""
        ...


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


def _check_field(key: str, value: Any, spec: dict[str, Any]) -> tuple[Any, str | None]:
    """Return the value to pass on (cast if allowed) and an error message or None."""
    dtype = spec["dtype"]
    if dtype == "str":
        if not isinstance(value, str):
            return None, f"{key!r}: expected a str, got {_describe(value)}"
        choices = spec.get("choices")
        if choices is not None and value not in choices:
            return None, f"{key!r}: expected one of {list(choices)}, got {value!r}"
        return value, None
    shape = tuple(spec["shape"])
    want = f"array of dtype {dtype} and shape {tuple('any' if d is None else d for d in shape)}"
    if not isinstance(value, np.ndarray):
        return None, f"{key!r}: expected {want}, got {_describe(value)}"
    accepted = {dtype, *spec.get("cast_from", ())}
    if value.dtype.name not in accepted:
        return None, f"{key!r}: expected {want}, got {_describe(value)}"
    if value.ndim != len(shape) or any(
        w is not None and w != g for w, g in zip(shape, value.shape, strict=True)
    ):
        return None, f"{key!r}: expected {want}, got {_describe(value)}"
    if value.size == 0:
        return None, f"{key!r}: expected {want}, got an empty array"
    with np.errstate(over="ignore"):  # checked after the cast: 1e300 is inf in float32
        cast = np.array(value, dtype=dtype)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        return None, f"{key!r}: expected finite values (within {dtype}), got NaN or inf"
    return cast, None


def validate_observation(obs: Any, spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Check `obs` against an observation spec; return a clean copy holding only spec keys.

    Raises ValueError listing every problem (expected vs got). Keys outside the spec are
    dropped, so openpi-style extras do not reach the policy.
    """
    if not isinstance(obs, dict):
        raise ValueError(f"expected a map of observation keys, got {_describe(obs)}")
    clean: dict[str, Any] = {}
    problems = []
    for key, field_spec in spec.items():
        if key not in obs:
            if field_spec.get("required", True):
                problems.append(f"{key!r}: missing (expected {field_spec})")
            continue
        value, problem = _check_field(key, obs[key], field_spec)
        if problem is None:
            clean[key] = value
        else:
            problems.append(problem)
    if problems:
        raise ValueError("invalid observation: " + "; ".join(problems))
    return clean


def observation_spec(embodiment: Embodiment) -> dict[str, dict[str, Any]]:
    """The observation spec of one embodiment, as in docs/interfaces.md."""
    spec: dict[str, dict[str, Any]] = {
        image_key(cam): {"dtype": "uint8", "shape": [None, None, 3]} for cam in embodiment.cameras
    }
    spec[STATE] = {
        "dtype": "float32",
        "shape": [embodiment.state_dim],
        "cast_from": ["float64", "float16"],
    }
    spec[TASK] = {"dtype": "str"}
    spec[EMBODIMENT] = {"dtype": "str", "required": False, "choices": [embodiment.name]}
    return spec


class ChunkPolicyService:
    """Serves a `ChunkPolicy` for one embodiment: one request, one policy call, which writes a
    fresh sub-step and the chunk conditioned on it.

    Every request regenerates the sub-step, as the released evaluation loop does; the
    client executes the chunk (or part of it) and asks again.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        embodiment: str | Embodiment,
        chunk_size: int,
        extra_metadata: dict[str, Any] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.policy = policy
        self.embodiment = get_embodiment(embodiment) if isinstance(embodiment, str) else embodiment
        self.chunk_size = chunk_size
        self._extra = dict(extra_metadata or {})

    def metadata(self) -> dict[str, Any]:
        e = self.embodiment
        return {
            "protocol": PROTOCOL_NAME,
            "protocol_version": PROTOCOL_VERSION,
            "embodiment": e.name,
            "cameras": list(e.cameras),
            "state_dim": e.state_dim,
            "action_dim": e.action_dim,
            "chunk_size": self.chunk_size,
            "fps": e.fps,
            "observation": observation_spec(e),
            "action": {"dtype": "float32", "shape": [self.chunk_size, e.action_dim]},
            **self._extra,
        }

    def infer(self, obs: Observation) -> dict[str, Any]:
        obs = {**obs, EMBODIMENT: self.embodiment.name}
        start = time.perf_counter()
        # One policy call: the sub-step is generated inside it, from the same vision pass and
        # prompt prefill the chunk is conditioned on.
        actions, reasoning = self.policy.predict_action_chunk(obs)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        actions = np.asarray(actions, dtype=np.float32)
        want = (self.chunk_size, self.embodiment.action_dim)
        if actions.shape != want:
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, want {want}")
        if not np.isfinite(actions).all():
            raise FloatingPointError("policy returned non-finite actions")
        return {
            "actions": actions,
            "reasoning": reasoning.text,
            "policy_timing": {"chunk_ms": elapsed_ms},
        }
