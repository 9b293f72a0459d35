"""Inference runtime: action chunking, temporal ensembling and the reasoning cadence."""

from dexvla.infer.runtime import (
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
