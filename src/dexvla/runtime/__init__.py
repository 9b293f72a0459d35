"""Inference runtime: action chunking, temporal ensembling and the reasoning cadence.

`Reasoning` is `dexvla.schema.Reasoning`, re-exported for the policies this runtime drives.
"""

from dexvla.runtime.inference import (
    BatchedInferenceRuntime,
    ChunkPolicy,
    InferenceRuntime,
    RuntimeConfig,
)
from dexvla.schema import Reasoning

__all__ = [
    "BatchedInferenceRuntime",
    "ChunkPolicy",
    "InferenceRuntime",
    "Reasoning",
    "RuntimeConfig",
]
