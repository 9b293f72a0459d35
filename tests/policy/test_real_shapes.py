"""The `dexvla-2b` preset's real widths on CPU, and `bench/gpu_check.py`'s code paths.

The full preset (3.2B parameters) needs a GPU; here every tower keeps its real width, heads,
M-RoPE sections, image size, vocabulary and tokenizer, with 2 layers each, so every shape and
config path the real preset uses runs in a few GB. `bench/gpu_check.py --cpu-smoke` runs the
GPU check's sections at the tiny preset's sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dexvla.data.windows import collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.train.freezing import apply_freezing
from dexvla.train.recipes import get_stage_preset
from dexvla.train.stage_data import load_stage_data

GPU_CHECK = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
LAYERS = 2


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """bench/gpu_check.py as a module (its offline Qwen tokenizer and synthetic dataset)."""
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def printed_fields(stdout: str) -> dict[str, str]:
    """`name: value unit` lines -> {name: "value unit"}."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.mark.slow
def test_dexvla_2b_widths_train_step_and_chunk_with_reasoning(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    preset = get_policy_preset("dexvla-2b")
    config = gpu_check.with_layers(preset, LAYERS)
    config = config.replace(vlm=dataclasses.replace(config.vlm, max_new_tokens=4))
    stage = get_stage_preset("2b-stage2")
    root = gpu_check.write_dataset(tmp_path / "data", episodes=1, length=6, camera=(240, 320))
    data = load_stage_data([root], stage, config)
    windows, stats = data.dataset, data.stats
    tokenizer = gpu_check.qwen_tokenizer()
    torch.manual_seed(0)
    policy = gpu_check.build_policy(config, tokenizer, stats, "cpu")

    # The real widths, as the preset says, with LAYERS of each tower.
    text, vision = policy.vlm.config.text_config, policy.vlm.config.vision_config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        assert getattr(text, key) == preset.vlm.text[key]
    assert text.vocab_size == preset.vlm.text["vocab_size"]
    assert (
        text.rope_parameters["mrope_section"] == preset.vlm.text["rope_parameters"]["mrope_section"]
    )
    assert text.num_hidden_layers == vision.depth == policy.config.expert.depth == LAYERS
    for key in ("embed_dim", "hidden_size", "num_heads"):
        assert getattr(vision, key) == preset.vlm.vision[key]
    assert policy.config.vlm.image_size == preset.vlm.image_size
    assert (policy.config.expert.width, policy.config.expert.heads) == (
        preset.expert.width,
        preset.expert.heads,
    )
    embedding = policy.vlm.get_input_embeddings().weight
    assert tuple(embedding.shape) == (preset.vlm.text["vocab_size"], preset.vlm.text["hidden_size"])
    # Qwen2-VL's own token ids (the image token near the vocabulary's end), not the tiny ones.
    assert policy.vlm.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert policy.vlm.config.image_token_id == 151655
    assert tokenizer.encode("You are a helpful assistant.") == [2610, 525, 264, 10950, 17847, 13]

    # One training step as the 2b stages take it: vision frozen, gradient checkpointing.
    apply_freezing(policy, stage)
    assert stage.freeze_vision and stage.train.gradient_checkpointing
    policy.gradient_checkpointing_enable()
    policy.train()
    batch = collate_windows([windows[i] for i in (0, len(windows) - 1)])
    loss, metrics = policy(batch)
    assert torch.isfinite(loss) and metrics["language_loss"] > 0 and metrics["action_loss"] > 0
    loss.backward()
    for part in (policy.vlm.model.language_model, policy.fusion, policy.expert):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in policy.vlm.model.visual.parameters())
    trainable = [p for p in policy.parameters() if p.requires_grad]
    steepest = max(trainable, key=lambda p: float(p.grad.abs().max()))
    before = steepest.detach().clone()
    torch.optim.SGD(trainable, lr=1e-3, foreach=False).step()  # foreach would copy every grad
    assert not torch.equal(before, steepest.detach())
    policy.zero_grad(set_to_none=True)

    # A chunk with reasoning (the sub-step generated), then with it cached.
    policy.eval()
    observation = gpu_check.observation(windows)
    action_dim = get_embodiment("aloha").action_dim
    actions, reasoning = policy.predict_action_chunk(observation)
    assert actions.shape == (config.chunk_size, action_dim) and np.isfinite(actions).all()
    assert isinstance(reasoning.text, str)
    assert tuple(reasoning.states.shape) == (1, preset.vlm.text["hidden_size"])
    cached, _ = policy.predict_action_chunk(observation, reasoning)
    assert cached.shape == (config.chunk_size, action_dim) and np.isfinite(cached).all()


SMOKE_FIELDS = (
    "device",
    "dataset",
    "dataset_write_s",
    "loader_samples_per_s",
    "loader_workers",
    "tokenizer",
    "arch_text",
    "arch_vision",
    "arch_expert",
    "params_total",
    "build_s",
    "train_precision",
    "train_step_s",
    "train_samples_per_s",
    "train_model_flops",
    "train_executed_flops",
    "peak_assumed",
    "train_mfu",
    "train_hfu",
    "train_peak_memory",
    "chunk_latency_reasoning",
    "chunk_latency_cached",
    "latency_peak_memory",
    "wall_s",
    "json",
)
POSITIVE = (
    "loader_samples_per_s",
    "params_total",
    "train_samples_per_s",
    "train_model_flops",
    "train_mfu",
    "chunk_latency_reasoning",
    "chunk_latency_cached",
    "train_peak_memory",
)


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_every_section(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    command = [sys.executable, str(GPU_CHECK), "--cpu-smoke", "--peak-tflops", "1"]
    out = subprocess.run(
        [*command, "--json", str(summary_path)], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout + out.stderr
    fields = printed_fields(out.stdout)
    assert [name for name in SMOKE_FIELDS if name not in fields] == []
    assert "FAILED" not in out.stdout
    for name in POSITIVE:
        assert float(fields[name].split()[0]) > 0, (name, fields[name])
    # Recomputation in the checkpointed step executes more FLOPs than the model's count.
    assert float(fields["train_executed_flops"].split()[0]) > float(
        fields["train_model_flops"].split()[0]
    )
    summary = json.loads(summary_path.read_text())
    assert summary == json.loads(fields["json"])
    assert summary["mode"] == "cpu-smoke" and summary["errors"] == {}
    assert summary["results"]["train_samples_per_s"]["unit"] == "samples/s"


def test_gpu_check_fails_fast_without_cuda(
    gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    out = capsys.readouterr()
    assert "no CUDA device" in out.err and "--cpu-smoke" in out.err
    assert out.out == ""


def test_gpu_check_stops_a_section_at_its_budget(
    gpu_check: ModuleType, capsys: pytest.CaptureFixture
) -> None:
    assert gpu_check.main(["--cpu-smoke", "--budget-s", "0.5"]) == 1
    fields = printed_fields(capsys.readouterr().out)
    assert fields["data"].startswith("FAILED stopped after its budget")
    for name in ("loader", "build", "train", "latency"):
        assert fields[name].startswith("FAILED skipped"), (name, fields[name])
    errors = json.loads(fields["json"])["errors"]
    assert set(errors) == {"data", "loader", "build", "train", "latency"}


def test_time_limit_re_arms_an_outer_timer(gpu_check: ModuleType) -> None:
    before, _ = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's, where it uses SIGALRM
    with gpu_check.time_limit(60.0):
        with pytest.raises(gpu_check.SectionTimeout), gpu_check.time_limit(0.05):
            time.sleep(5)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 50 < remaining <= 60
    after, _ = signal.getitimer(signal.ITIMER_REAL)
    assert (after > 0) == (before > 0) and after <= max(before, 0.0)
