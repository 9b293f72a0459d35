"""A stage run is a function of its seed: the same seed gives the same weights bit for bit (the
initialisation included), and a run stopped after a checkpoint and resumed ends where an
uninterrupted one does (RNG, optimiser, scheduler and EMA state restored exactly)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.embodiments import get_embodiment
from dexvla.schema import Episode
from dexvla.train.engine import Trainer
from dexvla.train.stages import FINAL_DIR, get_stage_preset, run_stage

STEPS, SAVE_EVERY = 3, 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One aloha episode of 20 frames with 32 px images."""
    root = tmp_path_factory.mktemp("determinism") / "aloha"
    spec = get_embodiment("aloha")
    rng = np.random.default_rng(0)
    length = 20
    action = rng.standard_normal((length, spec.action_dim)).astype(np.float32)
    images = {c: rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8) for c in spec.cameras}
    with LeRobotV3Writer(root, embodiment="aloha", fps=spec.fps) as writer:
        episode = Episode(
            "aloha", "pick up the cube", images, action[:, : spec.state_dim].copy(), action,
            ["lift"] * length, seed=0,
        )  # fmt: skip
        writer.add_episode(episode)
    return root


def train(data: Path, out: Path, seed: int, resume: bool = False) -> dict[str, torch.Tensor]:
    """A short stage-2 run on one thread: bit-identity holds for one thread count (another
    count sums matmul partial products in another order, ~1e-7 apart; the module-scoped
    fixture below runs before the per-test thread setting, so the count is set here)."""
    config = get_stage_preset("tiny-stage2").replace(
        steps=STEPS, save_every=SAVE_EVERY, batch_size=4, warmup_steps=1, seed=seed,
        image_size=(28, 28), tensorboard=False,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage(config, [data], out, resume=resume)
    finally:
        torch.set_num_threads(threads)
    return weights(out)


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(dataset, out, seed=3)
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / FINAL_DIR / "model.safetensors"))


def test_same_seed_same_weights_other_seed_other_weights(dataset, uninterrupted, tmp_path):
    first = weights(uninterrupted)
    again = train(dataset, tmp_path / "b", seed=3)
    other = train(dataset, tmp_path / "c", seed=4)
    assert differing(first, again) == []
    # No sawyer batch: its head stays as initialised (the randomly drawn tensors of it).
    untrained = [k for k in first if ".sawyer." in k and first[k].float().std() > 0]
    assert untrained and set(untrained) <= set(differing(first, other))


class Killed(Exception):
    """Stands in for a SIGKILL right after a checkpoint (bench/kill_resume.py sends real ones)."""


def test_stopped_after_a_checkpoint_and_resumed_equals_uninterrupted(
    dataset, uninterrupted, tmp_path, monkeypatch
):
    whole = weights(uninterrupted)
    step = Trainer._train_step

    def dies_after_first_save(self, batches):
        if self.step == SAVE_EVERY:
            raise Killed
        return step(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", dies_after_first_save)
    with pytest.raises(Killed):
        train(dataset, tmp_path / "cut", seed=3)
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert not (tmp_path / "cut" / FINAL_DIR).exists()
    resumed = train(dataset, tmp_path / "cut", seed=3, resume=True)
    assert differing(whole, resumed) == []
    for name in ("ema", "optimizer"):
        last = f"checkpoints/step-{STEPS:06d}/{name}.safetensors"
        whole_state = load_file(str(uninterrupted / last))
        assert differing(whole_state, load_file(str(tmp_path / "cut" / last))) == []
