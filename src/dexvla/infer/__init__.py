"""Inference runtime: action chunking, temporal ensembling and the reasoning cadence."""

from dexvla.infer.runtime import ChunkPolicy, InferenceRuntime, Reasoning, RuntimeConfig

__all__ = ["ChunkPolicy", "InferenceRuntime", "Reasoning", "RuntimeConfig"]
