"""Does the condition hold where the object is? A linear probe on the trained VLM's pooled states.

For frames of every episode of a dataset that records `observation.environment_state` (the
simulator's object positions; `dexvla collect` writes it for the ALOHA tasks), the frozen policy
computes the pooled prompt states (B, D_vlm), the vector its fusion turns into the condition.
A ridge regression fitted on the first episodes predicts the positions of the held-out ones;
R^2 per coordinate says how much of the object's place the condition carries (1: all of it,
0: no more than the mean position). A policy trained with `--env-state aux` also reports its
own head's R^2 on the same held-out frames.

    python bench/vision_probe.py --checkpoint runs/tc/final --data data/aloha-transfer-cube
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dexvla.data.lerobot_v3 import LeRobotV3Dataset
from dexvla.embodiments import get_embodiment
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import ENV_STATE_SCALE
from dexvla.schema import TASK, image_key


def r_squared(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column R^2 of (N, E) predictions."""
    residual = ((target - predicted) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    return 1.0 - residual / np.maximum(total, 1e-12)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a ridge regression on standardised features."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    weights = np.linalg.solve(z.T @ z + alpha * len(z) * np.eye(z.shape[1]), z.T @ (y - y.mean(0)))
    weights = weights / std[:, None]
    return weights, y.mean(0) - mean @ weights


@torch.no_grad()
def pooled_states(
    policy: DexVLAPolicy, dataset: LeRobotV3Dataset, episode: int, frames: list[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled prompt states (F, D_vlm) of `frames`, and the aux head's predictions (F, E)."""
    embodiment = dataset.embodiment
    batch = {
        image_key(cam): torch.from_numpy(
            np.stack([dataset.image(episode, t, cam) for t in frames])
        ).permute(0, 3, 1, 2)
        for cam in get_embodiment(embodiment).cameras
    }
    batch[TASK] = [dataset.lowdim(episode)["task"]] * len(frames)
    prompt = policy.encode(batch, embodiment, [""] * len(frames)).prompt  # (F, D_vlm)
    head = None
    if policy.env_head is not None:
        head = (policy.env_head(prompt).float() / ENV_STATE_SCALE).cpu().numpy()
    return prompt.float().cpu().numpy(), head


def collect_frames(
    policy: DexVLAPolicy, dataset: LeRobotV3Dataset, frames_per_episode: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Pooled states (N, D), positions (N, E), aux-head predictions (N, E) or None, and each
    frame's episode index (N,), for evenly spaced frames of every episode."""
    if dataset.env_state_dim is None:
        raise SystemExit(f"{dataset.root} records no observation.environment_state")
    features, targets, heads, episodes = [], [], [], []
    for i in range(dataset.num_episodes):
        length = dataset.episode_length(i)
        frames = sorted({int(t) for t in np.linspace(0, length - 1, frames_per_episode)})
        states, head = pooled_states(policy, dataset, i, frames)
        features.append(states)
        targets.append(dataset.lowdim(i)["env_state"][frames])
        heads.append(head)
        episodes += [i] * len(frames)
    head = None if heads[0] is None else np.concatenate(heads)
    return np.concatenate(features), np.concatenate(targets), head, np.asarray(episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a save_pretrained directory")
    parser.add_argument("--data", required=True, help="a dataset with environment_state")
    parser.add_argument(
        "--test-data", help="held-out scenes (e.g. other seeds); default: the last episodes"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames per episode, evenly spaced")
    parser.add_argument("--held-out", type=float, default=0.25, help="fraction of episodes")
    parser.add_argument("--alpha", type=float, default=1e-2, help="ridge penalty")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = DexVLAPolicy.from_pretrained(args.checkpoint).eval()
    x, y, head, episode = collect_frames(policy, LeRobotV3Dataset(args.data), args.frames)
    if args.test_data:
        x_test, y_test, head_test, _ = collect_frames(
            policy, LeRobotV3Dataset(args.test_data), args.frames
        )
        held = f"the episodes of {args.test_data} held out"
    else:
        count = episode.max() + 1
        test = episode >= count - max(1, round(count * args.held_out))
        if test.all() or test.sum() == 0:
            raise SystemExit(f"{args.data}: too few episodes to hold some out")
        x, x_test, y, y_test = x[~test], x[test], y[~test], y[test]
        head_test = None if head is None else head[test]
        held = f"the last {len(set(episode[test]))} episodes held out"
    weights, bias = ridge(x, y, args.alpha)
    probe = r_squared(x_test @ weights + bias, y_test)
    print(f"{args.checkpoint}: fit on {len(x)} frames, tested on {len(x_test)} ({held})")
    print("R^2 per coordinate of observation.environment_state")
    print(f"{'':<14}" + "".join(f"{f'env_{k}':>9}" for k in range(y.shape[1])))
    print(f"{'ridge probe':<14}" + "".join(f"{v:>9.3f}" for v in probe))
    if head_test is not None:
        own = r_squared(head_test, y_test)
        print(f"{'aux head':<14}" + "".join(f"{v:>9.3f}" for v in own))


if __name__ == "__main__":
    main()
