"""Label whole datasets: pick the embodiment's annotator, write the labels back, and score
them against known sub-steps (a dataset's own, or the scripted experts' in simulation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dexvla.annotate.aloha import annotate_aloha
from dexvla.annotate.hand import annotate_hand
from dexvla.annotate.sawyer import annotate_sawyer, sawyer_task
from dexvla.data import act_hdf5, lerobot_v3
from dexvla.data.sources import open_dataset

ANNOTATORS: dict[str, Callable[[np.ndarray, str], list[str]]] = {
    "aloha": annotate_aloha,
    "sawyer": annotate_sawyer,
    "hand": annotate_hand,
}


def annotate_episode(embodiment: str, action: np.ndarray, task: str) -> list[str]:
    """Sub-steps for one episode of `embodiment` from its (T, A) actions; KeyError if it has
    no templates."""
    try:
        annotator = ANNOTATORS[embodiment]
    except KeyError:
        raise KeyError(
            f"no sub-step templates for embodiment {embodiment!r}; have {sorted(ANNOTATORS)}"
        ) from None
    return annotator(np.asarray(action), task)


def agreement(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Fraction of frames whose labels match exactly."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"agreement: {len(predicted)} predicted vs {len(truth)} true labels")
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


def annotate_dataset(
    path: Path, *, overwrite: bool = False, evaluate: bool = False
) -> dict[str, Any]:
    """Label every episode of a LeRobot v3 or ACT HDF5 directory.

    Episodes that already carry sub-steps are left alone unless `overwrite`. With `evaluate`,
    nothing is written: the labels are compared with the episodes' existing sub-steps
    (frame-level exact-match agreement, per episode and mean).
    """
    dataset = open_dataset(path)
    labels: dict[int, list[str]] = {}
    scores: list[float] = []
    skipped = 0
    for i in range(dataset.num_episodes):
        low = dataset.lowdim(i)
        has_labels = any(low["substeps"])
        predicted = annotate_episode(dataset.embodiment, low["action"], low["task"])
        if evaluate:
            if has_labels:
                scores.append(agreement(predicted, low["substeps"]))
        elif has_labels and not overwrite:
            skipped += 1
        else:
            labels[i] = predicted
    if isinstance(dataset, act_hdf5.ActHdf5Dataset):
        for i, substeps in labels.items():
            act_hdf5.write_substeps(dataset.paths[i], substeps)
    elif labels:
        lerobot_v3.write_substeps(Path(path), labels)
    result: dict[str, Any] = {
        "episodes": dataset.num_episodes,
        "annotated": len(labels),
        "skipped": skipped,
    }
    if evaluate:
        result["agreement_per_episode"] = scores
        result["agreement"] = float(np.mean(scores)) if scores else None
    return result


def evaluate_on_sim(task_name: str, seeds: Sequence[int], *, image_size: int = 16) -> dict:
    """Collect scripted demonstrations with `dexvla.sim` and score the annotator against the
    expert's ground-truth sub-steps (frame-level exact match). A Sawyer task whose sub-steps
    cannot be read from its actions fails before any rollout."""
    from dexvla.sim import collect_episode, get_task  # the simulators load only when used

    spec = get_task(task_name)
    if spec.embodiment == "sawyer":
        sawyer_task(spec.instruction)
    scores = []
    for seed in seeds:
        episode = collect_episode(task_name, seed, image_size=image_size)
        predicted = annotate_episode(episode.embodiment, episode.action, episode.task)
        scores.append(agreement(predicted, episode.substeps))
    return {
        "task": task_name,
        "seeds": list(seeds),
        "agreement_per_episode": scores,
        "agreement": float(np.mean(scores)),
        "min": float(np.min(scores)),
    }
