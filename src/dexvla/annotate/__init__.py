"""Automatic sub-step labels for datasets that have none, from the robot's own signals.

One annotator per embodiment (`aloha`, `sawyer`, `hand`) turns an episode's actions into
per-frame sub-step text, worded as the project's scripted experts word theirs; `dataset`
labels whole datasets and scores the labels; `commands` is `dexvla annotate`.
"""

from dexvla.annotate.aloha import annotate_aloha
from dexvla.annotate.dataset import (
    ANNOTATORS,
    agreement,
    annotate_dataset,
    annotate_episode,
    evaluate_on_sim,
)
from dexvla.annotate.events import gripper_runs, objects_from_task
from dexvla.annotate.hand import annotate_hand
from dexvla.annotate.sawyer import SAWYER_COMMANDS, annotate_sawyer

__all__ = [
    "ANNOTATORS",
    "SAWYER_COMMANDS",
    "agreement",
    "annotate_aloha",
    "annotate_dataset",
    "annotate_episode",
    "annotate_hand",
    "annotate_sawyer",
    "evaluate_on_sim",
    "gripper_runs",
    "objects_from_task",
]
