"""The registry of robot embodiments: what each robot sends and expects.

Every part of the project (model heads, normalisation, simulators, datasets, the server) agrees
on an embodiment through its name here, so action and state sizes and camera names are never
repeated elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Embodiment:
    """A robot: its action and state sizes, camera names and control rate."""

    name: str
    action_dim: int
    state_dim: int
    cameras: tuple[str, ...]
    fps: int
    description: str = ""

    def __post_init__(self) -> None:
        if self.action_dim <= 0 or self.state_dim <= 0:
            raise ValueError(f"embodiment {self.name!r}: action_dim and state_dim must be positive")
        if not self.cameras:
            raise ValueError(f"embodiment {self.name!r}: at least one camera is required")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"embodiment {self.name!r}: duplicate camera names {self.cameras}")


EMBODIMENTS: dict[str, Embodiment] = {}


def register_embodiment(embodiment: Embodiment) -> Embodiment:
    """Add an embodiment to the registry; a name can be registered only once."""
    if embodiment.name in EMBODIMENTS and EMBODIMENTS[embodiment.name] != embodiment:
        raise ValueError(f"embodiment {embodiment.name!r} is already registered differently")
    EMBODIMENTS[embodiment.name] = embodiment
    return embodiment


def get_embodiment(name: str) -> Embodiment:
    """Look an embodiment up by name, with an error that lists the known ones."""
    try:
        return EMBODIMENTS[name]
    except KeyError:
        known = ", ".join(sorted(EMBODIMENTS)) or "none"
        raise KeyError(f"unknown embodiment {name!r}; known embodiments: {known}") from None


ALOHA = register_embodiment(
    Embodiment(
        name="aloha",
        action_dim=14,
        state_dim=14,
        cameras=("cam_high", "cam_left_wrist", "cam_right_wrist"),
        fps=50,
        description="bimanual ALOHA: 2 x (6 joints + gripper)",
    )
)
SAWYER = register_embodiment(
    Embodiment(
        name="sawyer",
        action_dim=4,
        state_dim=4,
        cameras=("cam_high",),
        fps=80,
        description="MetaWorld Sawyer: end-effector xyz delta + gripper; state hand xyz + gripper",
    )
)
HAND = register_embodiment(
    Embodiment(
        name="hand",
        action_dim=18,
        state_dim=18,
        cameras=("cam_high", "cam_wrist"),
        fps=25,
        description=(
            "dexterous hand on a 6-DoF wrist: wrist x/y/z/roll/pitch/yaw + 12 hand joints "
            "(3 fingers x 3 + thumb 3), joint positions"
        ),
    )
)
