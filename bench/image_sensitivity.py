"""Does a trained policy look at its cameras? Image effect vs noise effect on predicted chunks.

For pairs of training episodes (i, j) and frames t, the policy predicts a chunk for episode i's
observation twice more: once with episode j's images at frame t (same state, same sub-step,
same diffusion noise) and once with another noise seed (same observation). The two mean
absolute differences, per embodiment arm, are measured side by side in one run:

- image effect: how much the chunk moves when only the scene (e.g. the cube's place) changes;
- noise effect: how much it moves between two samples of the same observation.

A policy whose image effect is a small fraction of its noise effect acts from the state and
the time alone: it can reproduce the average demonstration but cannot find the object.

Then, where the scene signal goes: over the first frames of `--scenes` episodes, the spread
between scenes (std over scenes / mean |x|) of the pixels, of each vision-tower token and each
VLM position (largest and median), of the pooled prompt and of the condition vector. A few
tokens that vary a lot and a pooled vector that varies little mean the pooling dilutes them.

    python bench/image_sensitivity.py --checkpoint runs/demo/stage3/final \
        --data runs/demo/data/aloha-transfer-cube
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dexvla.data.lerobot_v3 import LeRobotV3Dataset
from dexvla.embodiments import get_embodiment
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.schema import STATE, TASK, image_key

# ALOHA's two arms (joints + gripper) in its 14-D action; other embodiments: all dimensions.
GROUPS = {"aloha": {"left arm": slice(0, 7), "right arm": slice(7, 14)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a save_pretrained directory")
    parser.add_argument("--data", required=True, help="a LeRobot v3 dataset the policy knows")
    parser.add_argument("--pairs", type=int, default=6, help="episode pairs (i, i + offset)")
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 40], help="frames t")
    parser.add_argument("--scenes", type=int, default=12, help="episodes for the signal path")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = DexVLAPolicy.from_pretrained(args.checkpoint).eval()
    dataset = LeRobotV3Dataset(args.data)
    if dataset.num_episodes < 2:
        raise SystemExit(f"{args.data}: need at least 2 episodes, got {dataset.num_episodes}")
    embodiment = dataset.embodiment
    groups = GROUPS.get(embodiment, {"all": slice(None)})
    image_effect = {name: [] for name in groups}
    noise_effect = {name: [] for name in groups}
    offset = max(1, dataset.num_episodes // 2)

    def observation(images_from: int, state_from: int, t: int) -> dict:
        """Frame t's cameras (and object positions, which an oracle policy reads with them)
        from one episode, the state and task from another."""
        obs = dataset.observation(images_from, t)
        low = dataset.lowdim(state_from)
        obs.update({STATE: low["state"][t], TASK: low["task"]})
        return obs

    def seeded(seed: int) -> torch.Generator:
        return torch.Generator(device=policy.device).manual_seed(seed)

    for i in range(min(args.pairs, dataset.num_episodes)):
        j = (i + offset) % dataset.num_episodes
        length = min(dataset.episode_length(i), dataset.episode_length(j))
        for t in (t for t in args.frames if t < length):
            own = observation(i, i, t)
            base, reasoning = policy.predict_action_chunk(own, generator=seeded(0))
            other_scene, _ = policy.predict_action_chunk(
                observation(j, i, t), reasoning=reasoning, generator=seeded(0)
            )
            other_noise, _ = policy.predict_action_chunk(
                own, reasoning=reasoning, generator=seeded(1)
            )
            for name, dims in groups.items():
                image_effect[name].append(float(np.abs(base - other_scene)[:, dims].mean()))
                noise_effect[name].append(float(np.abs(base - other_noise)[:, dims].mean()))

    print(f"{args.checkpoint} on {args.data} ({len(next(iter(image_effect.values())))} samples)")
    print(f"{'actions':<12} {'image effect':>13} {'noise effect':>13} {'ratio':>8}")
    for name in groups:
        image, noise = np.mean(image_effect[name]), np.mean(noise_effect[name])
        print(f"{name:<12} {image:>13.4f} {noise:>13.4f} {image / noise:>8.3f}")
    scenes = min(args.scenes, dataset.num_episodes)
    print(f"\nbetween-scene spread, frame 0 of {scenes} episodes (std over scenes / mean |x|)")
    for name, (largest, median) in signal_path(policy, dataset, scenes).items():
        print(f"{name:<22} largest {largest:.4f}   median {median:.4f}")


def spread(x: torch.Tensor) -> torch.Tensor:
    """(N, positions, D) -> per-position std over the N scenes, relative to mean |x|."""
    x = x.float()
    return x.std(0).mean(-1) / x.abs().mean()


@torch.no_grad()
def signal_path(
    policy: DexVLAPolicy, dataset: LeRobotV3Dataset, scenes: int
) -> dict[str, tuple[float, float]]:
    """Largest and median between-scene spread at each stage of the condition's path."""
    embodiment = dataset.embodiment
    batch = {
        image_key(cam): torch.from_numpy(
            np.stack([dataset.image(i, 0, cam) for i in range(scenes)])
        )
        .permute(0, 3, 1, 2)
        .float()
        / 255
        for cam in get_embodiment(embodiment).cameras
    }
    batch[TASK] = [dataset.lowdim(0)["task"]] * scenes
    vision = policy.vision_inputs(batch, embodiment)
    tokens = policy.vlm.model.visual(vision["pixel_values"], grid_thw=vision["image_grid_thw"])
    tokens = getattr(tokens, "pooler_output", tokens)
    encoding = policy.encode(batch, embodiment, [""] * scenes, vision)
    hidden, prompt = encoding.hidden, encoding.prompt  # (N, L, D_vlm), (N, D_vlm)
    cond = policy.fusion(prompt, torch.zeros_like(prompt))  # the image path (no oracle term)
    stages = {
        "pixels": vision["pixel_values"].reshape(scenes, 1, -1),
        "vision-tower tokens": tokens.reshape(scenes, -1, tokens.shape[-1]),
        "VLM positions": hidden,
        "pooled prompt": prompt[:, None],
        "condition vector": cond[:, None],
    }
    result = {}
    for name, values in stages.items():
        per_position = spread(values)
        result[name] = (float(per_position.max()), float(per_position.median()))
    return result


if __name__ == "__main__":
    main()
