"""Inference runtime: action chunking, temporal ensembling and the reasoning cadence."""

from dexvla.runtime.inference import (
    BatchedInferenceRuntime,
    ChunkPolicy,
    InferenceRuntime,
    Reasoning,
    RuntimeConfig,
)

__all__ = [
    "BatchedInferenceRuntime",
    "ChunkPolicy",
    "InferenceRuntime",
    "Reasoning",
    "RuntimeConfig",
]
