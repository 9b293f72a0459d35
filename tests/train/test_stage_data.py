"""A stage's training set: batches carry uint8 images already at the policy's size."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.data.windows import collate_windows
from dexvla.imaging import resize_images
from dexvla.train.recipes import get_stage_preset
from dexvla.train.stage_data import load_stage_data


def test_batches_hold_uint8_images_at_the_policy_size(tmp_path, make_episode):
    roots = []
    for name, embodiment in (("a", "aloha"), ("s", "sawyer")):
        with LeRobotV3Writer(tmp_path / name, embodiment=embodiment, fps=10) as writer:
            writer.add_episode(make_episode(0, length=6, embodiment=embodiment, image_hw=(20, 30)))
        roots.append(tmp_path / name)
    config = get_stage_preset("tiny-stage1").replace(image_size=(28, 56))
    policy = config.policy_config()
    data = load_stage_data(roots, config, policy)
    assert [w.image_size for w in data.dataset.datasets] == [(28, 56), (28, 56)]
    batch = collate_windows([data.dataset[i] for i in range(3)])
    images = batch["observation.images.cam_high"]
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 28, 56)
    source = data.dataset.datasets[0].source
    frame = torch.from_numpy(np.array(source.image(0, 2, "cam_high"))).permute(2, 0, 1)[None]
    assert torch.equal(images[2:3], resize_images(frame.contiguous(), (28, 56)))
    single = load_stage_data(roots[:1], config, policy).dataset
    loader = DataLoader(single, batch_size=4, collate_fn=collate_windows, num_workers=1)
    batch = next(iter(loader))
    assert batch["observation.images.cam_left_wrist"].dtype == torch.uint8
    assert batch["observation.images.cam_left_wrist"].shape == (4, 3, 28, 56)
