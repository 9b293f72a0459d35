"""The training engine on one process: config, learning, exact resumption, checkpoints."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from train_toy import ToyDataset, make_policy

from dexvla.train import (
    ConfigMismatchError,
    DistInfo,
    ResumableBatchSampler,
    ShardedBatches,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    read_metrics,
)
from dexvla.train import checkpoint as checkpoint_module
from dexvla.train.checkpoint import MANIFEST_FILE, MODEL_FILE
from dexvla.train.distributed import mixed_precision
from dexvla.train.engine import PREFETCH_FACTOR
from dexvla.train.metrics import MetricWindow
from dexvla.train.optim import EMA, build_optimizer, param_groups
from dexvla.train.tensors import load_tensors, save_tensors


def fast_config(**overrides) -> TrainConfig:
    base = dict(steps=8, batch_size=8, lr=1e-2, log_every=2, save_every=4, tensorboard=False)
    return TrainConfig(**{**base, **overrides})


def test_config_json_round_trip_and_validation(tmp_path: Path) -> None:
    config = TrainConfig(steps=5, betas=[0.9, 0.95], ema=0.99, schedule="cosine", grad_clip=None)
    assert config.betas == (0.9, 0.95)
    assert TrainConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"steps": 3, "learning_rate": 1.0})


def test_sampler_shards_one_global_stream_and_resumes() -> None:
    n, batch = 10, 4
    single = ResumableBatchSampler(n, batch, seed=3)
    stream = iter(single)
    global_batches = [next(stream) for _ in range(5)]  # 20 samples: crosses an epoch boundary
    flat = [i for b in global_batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation per epoch
    # Two ranks with two accumulation micro-steps each cover exactly the same samples per step.
    for step in range(5):
        shards = [
            ResumableBatchSampler(n, batch, grad_accum=2, rank=r, world_size=2, seed=3)
            for r in range(2)
        ]
        per_step = [i for a in range(2) for s in shards for i in s.micro_batches(step)[a]]
        assert per_step == global_batches[step]
    resumed = iter(ResumableBatchSampler(n, batch, seed=3, start_step=3))
    assert [next(resumed), next(resumed)] == global_batches[3:5]


def test_sharded_batches_cut_whole_batches_like_the_stream_sampler() -> None:
    global_batches = [list(range(10 * b, 10 * b + 8)) for b in range(4)]  # 4 steps of 8
    shards = [
        list(ShardedBatches(global_batches, 8, grad_accum=2, rank=r, world_size=2, start_step=0))
        for r in range(2)
    ]
    for step in range(4):
        # Micro-step a of rank r is the (a * world_size + r)-th quarter of the step's batch.
        per_step = [i for a in range(2) for s in shards for i in s[2 * step + a]]
        assert per_step == global_batches[step]
    resumed = ShardedBatches(global_batches, 8, grad_accum=2, rank=1, world_size=2, start_step=3)
    assert list(resumed) == [global_batches[3][2:4], global_batches[3][6:8]]
    assert len(resumed) == 2
    with pytest.raises(ValueError, match="must divide"):
        ShardedBatches(global_batches, 8, grad_accum=3, rank=0, world_size=1, start_step=0)


def test_a_batch_sampler_factory_chooses_each_step_samples(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def evens(dataset, config: TrainConfig, info: DistInfo, start_step: int):
        calls.append((info.world_size, start_step))
        even = [i for i in range(len(dataset)) if i % 2 == 0][: config.batch_size]
        return iter(lambda: even, None)  # the same batch of even indices, forever

    config = fast_config(steps=4, save_every=2)
    first = Trainer(make_policy(), ToyDataset(), config, tmp_path, batch_sampler=evens)
    first.train()
    assert first.model.seen_ids and all(i % 2 == 0 for i in first.model.seen_ids)
    longer = fast_config(steps=6, save_every=2)
    Trainer(make_policy(), ToyDataset(), longer, tmp_path, resume=True, batch_sampler=evens).train()
    assert calls == [(1, 0), (1, 4)]  # the resumed run's sampler starts at the restored step


def test_loss_falls_and_outputs_are_written(tmp_path: Path) -> None:
    model = make_policy()
    frozen_before = model.frozen.weight.clone()
    config = fast_config(steps=60, batch_size=16, log_every=5, save_every=30, tensorboard=True)
    result = Trainer(model, ToyDataset(), config, tmp_path).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 61, 5))
    assert {"loss", "lr", "grad_norm", "samples_per_s", "mae"} <= set(records[0])
    assert records[-1]["loss"] < 0.3 * records[0]["loss"]
    assert torch.equal(model.frozen.weight, frozen_before)  # frozen parameters stay put
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any((tmp_path / "tensorboard").iterdir())
    assert result.step == 60 and result.checkpoint == tmp_path / "checkpoints" / "step-000060"
    assert TrainConfig.from_json(tmp_path / "config.json") == config


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out |= {f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()}
    for i, st in enumerate(trainer.optimizer.state.values()):
        out |= {f"opt{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()}
    out["lr"] = torch.tensor(trainer.scheduler.get_last_lr())
    return out


def test_resume_continues_exactly(tmp_path: Path) -> None:
    config = fast_config(
        steps=10, save_every=5, ema=0.9, grad_accum=2, schedule="cosine", warmup_steps=2
    )
    straight = Trainer(make_policy(noise=0.2), ToyDataset(), config, tmp_path / "a")
    straight.train()

    first = Trainer(make_policy(noise=0.2), ToyDataset(), config, tmp_path / "b")
    original_save = first.save

    def save_then_stop() -> Path:  # interrupt the run right after its step-5 checkpoint
        path = original_save()
        if first.step == 5:
            raise KeyboardInterrupt
        return path

    first.save = save_then_stop  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.train()
    torch.manual_seed(999)  # the resumed run must not depend on the RNG it starts with
    np.random.seed(999)
    second = Trainer(
        make_policy(noise=0.2, seed=42), ToyDataset(), config, tmp_path / "b", resume=True
    )
    second.train()

    a, b = _state(straight), _state(second)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    assert first.model.seen_ids + second.model.seen_ids == straight.model.seen_ids
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8, 10]  # records after the checkpoint were rewritten, not doubled


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    Trainer(
        make_policy(), ToyDataset(), fast_config(steps=6, save_every=1, keep_last=2), tmp_path
    ).train()
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-000005", "step-000006"]


def test_incomplete_checkpoints_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Trainer(
        make_policy(), ToyDataset(), fast_config(steps=8, save_every=2, keep_last=0), tmp_path
    ).train()
    root = tmp_path / "checkpoints"
    (root / "step-000008" / MANIFEST_FILE).unlink()  # never sealed
    with open(root / "step-000006" / MODEL_FILE, "r+b") as f:  # truncated after sealing
        f.truncate(10)
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(root) == root / "step-000004"
    assert "step-000008" in caplog.text and "step-000006" in caplog.text
    trainer = Trainer(
        make_policy(),
        ToyDataset(),
        fast_config(steps=8, save_every=2, keep_last=0),
        tmp_path,
        resume=True,
    )
    trainer.train()
    assert trainer.model.seen_ids and len(trainer.model.seen_ids) == 4 * 8  # steps 5..8


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    Trainer(make_policy(), ToyDataset(), fast_config(steps=4), tmp_path).train()
    with pytest.raises(ConfigMismatchError, match=r"lr: checkpoint 0.01 != now 0.02"):
        Trainer(
            make_policy(), ToyDataset(), fast_config(steps=8, lr=2e-2), tmp_path, resume=True
        ).train()
    with pytest.raises(FileExistsError):
        Trainer(make_policy(), ToyDataset(), fast_config(steps=8), tmp_path).train()
    # A constant schedule may be extended; logging/saving cadence may change.
    result = Trainer(
        make_policy(), ToyDataset(), fast_config(steps=6, log_every=3), tmp_path, resume=True
    ).train()
    assert result.step == 6
    cosine = fast_config(steps=4, schedule="cosine")
    Trainer(make_policy(), ToyDataset(), cosine, tmp_path / "cos").train()
    with pytest.raises(ConfigMismatchError, match="steps"):
        Trainer(
            make_policy(),
            ToyDataset(),
            fast_config(steps=8, schedule="cosine"),
            tmp_path / "cos",
            resume=True,
        ).train()


class Tied(torch.nn.Module):
    """An embedding and a head sharing one weight, as Qwen's LM head shares its embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_stored_once_and_restored(tmp_path: Path) -> None:
    model = Tied()
    save_tensors(model.state_dict(), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 1
    loaded = load_tensors(tmp_path / "m.safetensors")
    assert torch.equal(loaded["head.weight"], model.embed.weight)
    other = Tied()
    load_model_weights(other, tmp_path / "m.safetensors")
    assert torch.equal(other.head.weight, model.embed.weight)
    assert other.head.weight is other.embed.weight


def test_checkpoint_files_hold_no_pickles(tmp_path: Path) -> None:
    config = fast_config(steps=2, save_every=2, ema=0.5)
    Trainer(make_policy(), ToyDataset(), config, tmp_path).train()
    ckpt = tmp_path / "checkpoints" / "step-000002"
    manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "rng.safetensors",
        "trainer_state.json",
        "config.json",
    }
    assert json.loads((ckpt / "trainer_state.json").read_text())["samples_seen"] == 16
    policy = make_policy(seed=7)
    load_model_weights(policy, ckpt, ema=True)
    ema = load_tensors(ckpt / "ema.safetensors")
    torch.testing.assert_close(policy.net[0].weight, ema["net.0.weight"])


def test_bf16_on_cpu_falls_back_to_fp32(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(
            make_policy(),
            ToyDataset(),
            fast_config(steps=2, precision="bf16", device="cpu"),
            tmp_path,
        )
    assert trainer.autocast_dtype is None and "fp32" in caplog.text
    trainer.train()
    assert trainer.model.net[0].weight.dtype == torch.float32


def test_error_after_sealing_before_rename_keeps_previous(tmp_path: Path) -> None:
    config = fast_config(steps=6, save_every=2)
    trainer = Trainer(make_policy(), ToyDataset(), config, tmp_path)
    write_json = checkpoint_module._write_json

    def crash_after_manifest(path: Path, obj: object) -> None:
        write_json(path, obj)
        if path.name == MANIFEST_FILE and ".step-000004.tmp-" in str(path):
            raise OSError("simulated crash")

    checkpoint_module._write_json = crash_after_manifest
    try:
        with pytest.raises(OSError, match="simulated"):
            trainer.train()
    finally:
        checkpoint_module._write_json = write_json
    root = tmp_path / "checkpoints"
    assert not list(root.glob(".*.tmp-*"))  # the sealed staging directory is removed ...
    assert not (root / "step-000004").exists()  # ... and never moved in place
    assert latest_checkpoint(root) == root / "step-000002"
    assert Trainer(make_policy(), ToyDataset(), config, tmp_path, resume=True).train().step == 6
    assert not list(root.glob(".*.tmp-*"))


def test_gradient_checkpointing_flag_reaches_the_model(tmp_path: Path) -> None:
    model = make_policy()
    calls: list[bool] = []
    model.gradient_checkpointing_enable = lambda: calls.append(True)  # type: ignore[attr-defined]
    Trainer(model, ToyDataset(), fast_config(steps=1, gradient_checkpointing=True), tmp_path)
    assert calls == [True]


def test_resume_with_other_trainable_parameters_is_refused(tmp_path: Path) -> None:
    Trainer(make_policy(), ToyDataset(), fast_config(steps=2, save_every=2), tmp_path).train()
    model = make_policy()
    model.net[0].requires_grad_(False)
    with pytest.raises(ValueError, match="other trainable parameters"):
        Trainer(model, ToyDataset(), fast_config(steps=4), tmp_path, resume=True).train()


def test_ema_warms_up_then_holds_its_decay() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9)
    expected = model.weight.detach().clone()
    for step in range(1, 31):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(ema.state_dict()["weight"], expected)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(1000) == 0.9


def test_compile_flag_reaches_the_model(tmp_path: Path) -> None:
    model = make_policy()
    calls = []
    model.compile_blocks = lambda: calls.append(1)
    Trainer(model, ToyDataset(), fast_config(steps=2, compile=True), tmp_path / "on").train()
    assert calls == [1]
    Trainer(make_policy(), ToyDataset(), fast_config(steps=2), tmp_path / "off").train()
    assert calls == [1]
    # Compiling changes speed, not the run: a run may resume with or without it.
    resumed = Trainer(
        make_policy(),
        ToyDataset(),
        fast_config(steps=4, compile=True),
        tmp_path / "off",
        resume=True,
    )
    assert resumed.train().step == 4


def test_adamw_uses_the_fused_kernel_and_steps_as_the_reference() -> None:
    """Plain parameters get torch's fused AdamW, whose update equals the single-tensor loop's."""
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    loop_model = copy.deepcopy(fused_model)
    config = fast_config()
    fused = build_optimizer(fused_model, config)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(
        param_groups(loop_model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        foreach=False,
    )
    x = torch.randn(16, 4)
    for model, optimizer in ((fused_model, fused), (loop_model, loop)):
        for _ in range(3):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for got, expected in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_metric_window_sums_tensors_and_floats_and_reads_once() -> None:
    window = MetricWindow()
    window.add({"loss": torch.tensor(1.0), "mae": 0.5})
    window.add({"loss": torch.tensor(3.0), "extra": torch.tensor(4.0)})
    assert isinstance(window.sums["loss"], torch.Tensor)  # summed on the device, not read
    assert window.means() == {"loss": 2.0, "mae": 0.5, "extra": 4.0}
    assert window.steps == 2


def test_fsdp_mixed_precision_policy() -> None:
    bf16 = mixed_precision("bf16", torch.device("cuda", 0))  # a policy object: no GPU needed
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    for precision, device in (("bf16", "cpu"), ("no", "cuda")):
        policy = mixed_precision(precision, torch.device(device))
        assert (policy.param_dtype, policy.reduce_dtype) == (torch.float32, torch.float32)


def test_format_1_checkpoints_still_resume(tmp_path: Path) -> None:
    config = fast_config(steps=4, save_every=2, ema=0.9)
    Trainer(make_policy(), ToyDataset(), config, tmp_path / "a").train()
    straight = Trainer(make_policy(), ToyDataset(), fast_config(steps=6, ema=0.9), tmp_path / "b")
    straight.train()
    ckpt = tmp_path / "a" / "checkpoints" / "step-000004"
    manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
    del manifest["layout"]  # as written before the sharded layout existed
    (ckpt / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 1}))
    longer = fast_config(steps=6, save_every=2, ema=0.9)
    resumed = Trainer(make_policy(seed=3), ToyDataset(), longer, tmp_path / "a", resume=True)
    resumed.train()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    (ckpt / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 9}))
    assert latest_checkpoint(tmp_path / "a" / "checkpoints") == ckpt.parent / "step-000006"
    assert checkpoint_module.checkpoint_problem(ckpt) == "unknown format 9"


def test_loader_workers_persist_and_prefetch(tmp_path: Path) -> None:
    trainer = Trainer(make_policy(), ToyDataset(), fast_config(steps=2, num_workers=1), tmp_path)
    loader = trainer.loader()
    assert loader.persistent_workers and loader.prefetch_factor == PREFETCH_FACTOR
    assert not loader.pin_memory  # CPU: nothing to pin for
    trainer.train()
    assert trainer.model.seen_ids


def test_assign_loading_into_an_empty_model_reties_tied_weights(tmp_path: Path) -> None:
    model = Tied()
    save_tensors(model.state_dict(), tmp_path / "m.safetensors")
    with torch.device("meta"):
        empty = Tied()
    empty.head.weight = torch.nn.Parameter(torch.empty(10, 4, device="meta"))  # tie lost
    load_model_weights(empty, tmp_path / "m.safetensors", assign=True)
    assert empty.head.weight is empty.embed.weight
    assert torch.equal(empty.embed.weight, model.embed.weight)


def test_grad_norm_is_logged_and_clips_only_when_asked(tmp_path: Path) -> None:
    def run(name: str, grad_clip: float | None) -> tuple[float, torch.Tensor]:
        model = make_policy(unused_head=False)
        config = fast_config(steps=1, log_every=1, save_every=1, lr=1e-1, grad_clip=grad_clip)
        Trainer(model, ToyDataset(), config, tmp_path / name).train()
        weight = model.net[0].weight.detach().clone()
        return read_metrics(tmp_path / name / "metrics.jsonl")[0]["grad_norm"], weight

    free_norm, free = run("none", None)
    huge_norm, huge = run("huge", 1e9)
    tight_norm, tight = run("tight", 1e-3)
    assert free_norm > 1e-3 and free_norm == huge_norm == tight_norm  # the norm before clipping
    assert torch.equal(free, huge)  # no clip: the same step as a clip that never bites
    assert not torch.equal(free, tight)
