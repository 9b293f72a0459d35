"""The authors' released stage-1 experts (ScaleDP-H / ScaleDP-L): load them exactly, and convert
them into a stage-1 artefact that stage 2 starts from (docs/released.md)."""

from dexvla.released.convert import convert_released_expert
from dexvla.released.expert import load_released_expert, read_released_expert

__all__ = ["convert_released_expert", "load_released_expert", "read_released_expert"]
