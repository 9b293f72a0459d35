"""The three-stage curriculum: configs, stage 1 -> 2 -> 3 hand-over, freezing, LoRA, CLI."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dexvla.cli import main
from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.data.windows import collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.policy.configuration import get_policy_preset
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.policy.scaledp import ScaleDP
from dexvla.schema import Episode
from dexvla.stats import DatasetStats
from dexvla.train.freezing import apply_freezing, merge_lora, trainable_parameters
from dexvla.train.metrics import read_metrics
from dexvla.train.recipes import QWEN2_LM_LINEARS
from dexvla.train.stage1 import (
    STAGE1_KIND,
    Stage1Policy,
    load_stage1_expert,
    map_stage1_state,
    read_stage1,
)
from dexvla.train.stage_data import load_stage_data
from dexvla.train.stages import STAGE_PRESETS, StageConfig, get_stage_preset

# 28 px cameras: one Qwen2-VL token each, so the tiny VLM costs little on the CPU.
# Short runs: a large learning rate and a short warm-up (the tiny presets warm up for 100 steps).
FAST = ["--image-size", "28x28", "--batch-size", "8", "--save-every", "1000", "--lr", "1e-3",
        "--warmup-steps", "3"]  # fmt: skip


def write_dataset(
    root: Path,
    embodiment: str,
    *,
    substeps: bool = True,
    episodes: int = 2,
    camera_fovy: dict[str, float] | None = None,
    env_state: bool = False,
) -> Path:
    """Smooth per-episode action curves, noisy 32x32 images, three sub-steps per episode
    (and, with `env_state`, an object position per frame that differs between episodes)."""
    spec = get_embodiment(embodiment)
    rng = np.random.default_rng(len(embodiment))
    length = 30
    time = np.linspace(0, 1, length, dtype=np.float32)[:, None]
    with LeRobotV3Writer(root, embodiment=embodiment, fps=spec.fps) as writer:
        for e in range(episodes):
            phase = np.arange(spec.action_dim, dtype=np.float32) / spec.action_dim + 0.1 * e
            action = np.sin(2 * np.pi * (time + phase)).astype(np.float32)
            state = np.roll(action, 1, axis=0)[:, : spec.state_dim].copy()
            images = {
                cam: rng.integers(0, 256, (length, 32, 32, 3), dtype=np.uint8)
                for cam in spec.cameras
            }
            labels = [("reach the cube", "grasp the cube", "lift the cube")[3 * t // length]
                      for t in range(length)]  # fmt: skip
            writer.add_episode(
                Episode(
                    embodiment,
                    "pick up the cube",
                    images,
                    state,
                    action,
                    labels if substeps else [""] * length,
                    seed=e,
                    camera_fovy=camera_fovy or {},
                    env_state=np.tile([0.1 * e, 0.5, 0.05], (length, 1)).astype(np.float32)
                    if env_state
                    else None,
                )
            )
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage_data")
    return {
        "aloha": write_dataset(root / "aloha", "aloha", camera_fovy={"cam_high": 50.0}),
        "wide": write_dataset(root / "wide", "aloha", episodes=1, camera_fovy={"cam_high": 78.0}),
        "sawyer": write_dataset(root / "sawyer", "sawyer"),
        "bare": write_dataset(root / "bare", "aloha", substeps=False),
        "objects": write_dataset(root / "objects", "aloha", env_state=True),
    }


def train(*args: str) -> int:
    torch.set_num_threads(1)
    return main(["train", *args])


def assert_loss_falls(out: Path, ratio: float = 0.75) -> None:
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < ratio * first, f"loss did not fall enough: {losses}"


@pytest.fixture(scope="module")
def stage2_final(data, tmp_path_factory) -> Path:
    """A stage-2 run from scratch (the ablation without stage 1), 30 steps."""
    out = tmp_path_factory.mktemp("s2") / "run"
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["aloha"]),
               "--out", str(out), "--steps", "30", "--log-every", "5", *FAST)  # fmt: skip
    assert rc == 0
    return out


# ------------------------------------------------------------------------------- configs
def test_presets_are_valid_and_round_trip():
    for name, config in STAGE_PRESETS.items():
        assert config.name == name
        assert StageConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    stage2, stage3 = get_stage_preset("2b-stage2"), get_stage_preset("2b-stage3")
    assert (stage2.train.lr, stage2.train.batch_size, stage2.train.steps) == (2e-5, 96, 100_000)
    assert stage2.train.betas == (0.9, 0.98) and stage2.train.schedule == "constant"
    assert stage2.train.precision == "bf16" and stage2.train.gradient_checkpointing
    assert (stage3.train.steps, stage3.train.schedule) == (80_000, "cosine")
    assert stage2.freeze_vision and stage3.freeze_vision  # pretrained Qwen2-VL: the paper's
    assert not get_stage_preset("tiny-stage2").freeze_vision  # random tiny tower: trained


@pytest.mark.parametrize(
    "change, message",
    [
        ({"llm": "half"}, "llm must be"),
        ({"lora_targets": ("qkv",)}, "lora_targets"),
        ({"policy": "nope"}, "unknown policy preset"),
        ({"embodiments": ("octopus",)}, "unknown embodiment"),
        ({"image_size": (30, 30)}, "multiples of 28"),
        ({"data_weights": (1.0, -1.0)}, "data_weights"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"stage": 4}, "stage must be one of"),
    ],
)
def test_bad_stage_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        get_stage_preset("tiny-stage2").replace(**change)


def test_flags_override_the_preset_fields_they_are_declared_on(capsys):
    base = ["train", "--stage", "2", "--preset", "tiny-stage2", "--data", "x", "--out", "y",
            "--print-config"]  # fmt: skip
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out) == get_stage_preset("tiny-stage2").to_dict()
    assert main([*base, "--policy", "tiny-l", "--workers", "2", "--grad-accum", "2",
                 "--precision", "bf16", "--ema", "0.9", "--gradient-checkpointing",
                 "--no-freeze-vision", "--embodiments", "aloha, sawyer", "--image-size", "56x28",
                 "--data-weights", "1,0.5", "--llm", "lora", "--lora-rank", "4",
                 "--no-reasoning", "--noise-samples", "2"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    expected = get_stage_preset("tiny-stage2").to_dict()
    expected["train"] |= {"num_workers": 2, "grad_accum": 2, "precision": "bf16", "ema": 0.9,
                          "gradient_checkpointing": True}  # fmt: skip
    expected |= {"policy": "tiny-l", "freeze_vision": False, "embodiments": ["aloha", "sawyer"],
                 "image_size": [56, 28], "data_weights": [1.0, 0.5], "llm": "lora",
                 "lora_rank": 4, "use_reasoning": False, "noise_samples": 2}  # fmt: skip
    assert printed == expected


def test_vlm_path_replaces_the_presets_pretrained_id(tmp_path, capsys):
    config = get_stage_preset("2b-stage2").replace(vlm_path=str(tmp_path))
    assert config.policy_config().vlm.pretrained == str(tmp_path)
    assert get_stage_preset("2b-stage2").policy_config().vlm.pretrained != str(tmp_path)
    with pytest.raises(ValueError, match=r"vlm_path .*missing is not a directory"):
        get_stage_preset("2b-stage2").replace(vlm_path=str(tmp_path / "missing"))
    assert main(["train", "--stage", "2", "--preset", "2b-stage2", "--data", "x", "--out", "y",
                 "--vlm-path", str(tmp_path), "--print-config"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["vlm_path"] == str(tmp_path)
    assert get_stage_preset("2b-stage2").train.num_workers >= 1  # the 2b presets load in workers
    assert get_stage_preset("tiny-stage2").train.num_workers == 0  # measured: docs/training.md


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="tiny-stage1"):
        get_stage_preset("tiny-stage9")


# -------------------------------------------------------------------------- key mapping
def _stage1_state(expert: ScaleDP) -> dict[str, torch.Tensor]:
    state = {f"expert.{k}": v.clone() for k, v in expert.state_dict().items()}
    state["stage1_proj.0.weight"] = torch.zeros(4, 4)
    return state


def test_stage1_mapping_keeps_expert_and_drops_projection_by_name():
    config = get_policy_preset("tiny").expert  # heads: aloha, sawyer
    source = ScaleDP(config)
    target = ScaleDP(dataclasses.replace(config, embodiments={"aloha": (14, 14)}))
    mapped, dropped = map_stage1_state(_stage1_state(source), target)
    assert set(mapped) == set(target.state_dict())
    assert "stage1_proj.0.weight" in dropped
    assert {k.split(".")[2] for k in dropped if k.startswith("expert.")} == {"sawyer"}
    target.load_state_dict(mapped, strict=True)
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("defect", ["extra key", "missing key", "wider expert", "other head"])
def test_stage1_mapping_refuses_a_wrong_checkpoint(defect):
    config = get_policy_preset("tiny").expert
    target = ScaleDP(config)
    if defect == "wider expert":
        state = _stage1_state(ScaleDP(dataclasses.replace(config, width=64)))
        match = "wrong shape"
    elif defect == "other head":  # the target serves sawyer, the checkpoint has no sawyer head
        state = _stage1_state(ScaleDP(dataclasses.replace(config, embodiments={"aloha": (14, 14)})))
        match = "missing keys.*expert.action_in.sawyer"
    else:
        state = _stage1_state(target)
        if defect == "extra key":
            state["vlm.model.embed_tokens.weight"] = torch.zeros(2, 2)
            match = "unexpected keys.*vlm.model.embed_tokens.weight"
        else:
            del state["expert.pos_embed"]
            match = "missing keys.*expert.pos_embed"
    with pytest.raises(ValueError, match=match):
        map_stage1_state(state, target)


def test_stage2_init_refuses_a_policy_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"name": "tiny"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a stage-1 checkpoint"):
        read_stage1(tmp_path)


# ---------------------------------------------------------------------- freezing and LoRA
def _tiny_policy() -> DexVLAPolicy:
    torch.manual_seed(0)
    config = get_stage_preset("tiny-stage2").replace(image_size=(28, 28)).policy_config()
    stats = DatasetStats.from_arrays("aloha", np.random.randn(8, 14), np.random.randn(8, 14))
    return DexVLAPolicy(config, processor=DexVLAProcessor((28, 28), config.embodiments, stats))


def test_freezing_modes_leave_the_intended_parameters_trainable():
    policy = _tiny_policy()
    everything = {n for n, _ in policy.named_parameters()}
    visual = {n for n in everything if n.startswith("vlm.model.visual.")}
    language = {n for n in everything if n.startswith(("vlm.model.language_model.", "vlm.lm_head"))}
    head = {n for n in everything if n.startswith(("fusion.", "expert."))}
    assert visual and language and head and everything == visual | language | head

    apply_freezing(policy, get_stage_preset("tiny-stage2"))  # random vision: trained
    assert set(trainable_parameters(policy)) == everything
    apply_freezing(policy, get_stage_preset("tiny-stage2").replace(freeze_vision=True))
    assert set(trainable_parameters(policy)) == language | head
    apply_freezing(policy, get_stage_preset("tiny-stage2").replace(llm="frozen"))
    assert set(trainable_parameters(policy)) == visual | head


def test_lora_adapters_land_in_the_language_model_only_and_merge_for_export(tmp_path):
    policy = _tiny_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    tuner = apply_freezing(
        policy, get_stage_preset("tiny-stage2").replace(llm="lora", freeze_vision=True)
    )
    lora = [n for n in trainable_parameters(policy) if ".lora_" in n]
    layers = policy.config.vlm.text["num_hidden_layers"]
    assert len(lora) == 2 * layers * len(QWEN2_LM_LINEARS)  # lora_A and lora_B per target
    for name in lora:
        assert name.startswith("vlm.model.language_model.layers.")
        assert name.split(".")[-4] in QWEN2_LM_LINEARS
    assert not any("lora" in n for n, _ in policy.vlm.model.visual.named_parameters())
    others = [n for n in trainable_parameters(policy) if ".lora_" not in n]
    assert others and all(n.startswith(("fusion.", "expert.")) for n in others)

    # Non-zero adapters change the output; merging must keep exactly that output.
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    policy.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    lm = policy.vlm.model.language_model
    with torch.no_grad():
        adapted = lm(input_ids=ids).last_hidden_state
    merge_lora(policy, tuner)
    with torch.no_grad():
        merged = policy.vlm.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    assert set(policy.state_dict()) == set(before)
    changed = policy.vlm.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(
        changed, before["vlm.model.language_model.layers.0.self_attn.q_proj.weight"]
    )

    policy.save_pretrained(tmp_path / "final")  # strict from_pretrained takes it as it is
    loaded = DexVLAPolicy.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(loaded.vlm.model.language_model.layers[0].self_attn.q_proj.weight,
                               changed)  # fmt: skip


# --------------------------------------------------------------------------- the stages
def test_stage1_trains_the_expert_on_a_mixture(data, tmp_path):
    out = tmp_path / "s1"
    rc = train("--stage", "1", "--preset", "tiny-stage1", "--data",
               f"{data['aloha']},{data['sawyer']}", "--data-weights", "1,1", "--out", str(out),
               "--steps", "30", "--log-every", "5", *FAST)  # fmt: skip
    assert rc == 0
    assert_loss_falls(out)
    config, state = read_stage1(out / "final")
    assert config["kind"] == STAGE1_KIND
    assert {k.split(".")[0] for k in state} == {"expert", "stage1_proj"}
    heads = {k.split(".")[2] for k in state if k.startswith("expert.action_out.")}
    assert heads == {"aloha", "sawyer"}
    stats = DatasetStats.load(out / "final" / "stats.json")
    assert stats.embodiments == ["aloha", "sawyer"]
    saved = json.loads((out / "checkpoints" / "step-000030" / "stage_config.json").read_text())
    assert saved["data_weights"] == [1.0, 1.0] and saved["train"]["steps"] == 30

    # Its expert goes into a full policy (projection dropped) and reproduces the trained one.
    policy = _tiny_policy()
    dropped = load_stage1_expert(policy, out / "final")
    assert dropped and all(k.startswith("stage1_proj.") for k in dropped)
    torch.testing.assert_close(policy.expert.pos_embed, state["expert.pos_embed"])


def test_stage2_loss_falls_and_final_loads(stage2_final):
    assert_loss_falls(stage2_final, ratio=0.5)
    records = read_metrics(stage2_final / "metrics.jsonl")
    assert records[-1]["action_loss"] < records[0]["action_loss"]
    policy = DexVLAPolicy.from_pretrained(stage2_final / "final")
    assert policy.config.vlm.image_size == (28, 28)
    assert policy.processor.stats.camera_fovy == {"aloha": {"cam_high": 50.0}}


def test_stage3_continues_stage2_on_annotated_data(data, stage2_final, tmp_path):
    out = tmp_path / "s3"
    rc = train("--stage", "3", "--preset", "tiny-stage3", "--data", str(data["aloha"]),
               "--init", str(stage2_final / "final"), "--out", str(out), "--steps", "20",
               "--log-every", "5", "--lr", "5e-4", *FAST[:-2])  # fmt: skip
    assert rc == 0
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert losses[-1] < losses[0], losses
    # Stage 3 starts where stage 2 ended: its first losses are far below stage 2's first.
    stage2_first = read_metrics(stage2_final / "metrics.jsonl")[0]["loss"]
    assert losses[0] < 0.5 * stage2_first
    assert DexVLAPolicy.from_pretrained(out / "final").config.chunk_size == 50


def test_env_state_aux_trains_its_head_and_needs_recorded_positions(data, tmp_path, capsys):
    out = tmp_path / "aux"
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["objects"]),
               "--out", str(out), "--steps", "20", "--log-every", "5", "--env-state", "aux",
               *FAST)  # fmt: skip
    assert rc == 0
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["env_state_loss"] < records[0]["env_state_loss"]
    policy = DexVLAPolicy.from_pretrained(out / "final")
    assert policy.config.env_state == "aux" and policy.config.env_state_dim == 3
    assert policy.env_head is not None
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["aloha"]),
               "--out", str(tmp_path / "none"), "--steps", "2", "--env-state", "oracle",
               *FAST)  # fmt: skip
    assert rc != 0
    assert "observation.environment_state" in capsys.readouterr().err
    rc = train("--stage", "3", "--preset", "tiny-stage3", "--data", str(data["objects"]),
               "--init", str(out / "final"), "--out", str(tmp_path / "s3"), "--steps", "2",
               *FAST)  # fmt: skip
    assert rc != 0
    assert "env_state 'none' (init: 'aux')" in capsys.readouterr().err


def test_stage1_with_object_positions_hands_its_embedding_to_stage2(data, tmp_path, capsys):
    """Stage 1 adds the recorded positions to the expert's condition where the data has them
    (ALOHA, not Sawyer); stage 2 "predicted" starts from that embedding, "none" drops it."""
    s1 = tmp_path / "s1"
    rc = train("--stage", "1", "--preset", "tiny-stage1", "--data",
               f"{data['objects']},{data['sawyer']}", "--out", str(s1), "--steps", "30",
               "--log-every", "5", "--env-state", "predicted", *FAST)  # fmt: skip
    assert rc == 0
    assert_loss_falls(s1)
    _, state = read_stage1(s1 / "final")
    assert state["env_embed.weight"].shape == (get_policy_preset("tiny").expert.cond_dim, 3)

    s2 = tmp_path / "s2"
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["objects"]),
               "--init", str(s1 / "final"), "--out", str(s2), "--steps", "1",
               "--env-state", "predicted", *FAST)  # fmt: skip
    assert rc == 0
    config = get_stage_preset("tiny-stage2").replace(
        image_size=(28, 28), env_state="predicted", embodiments=("aloha",)
    )
    policy = DexVLAPolicy(config.policy_config(3))
    dropped = load_stage1_expert(policy, s1 / "final")
    assert {k.split(".")[0] for k in dropped} == {"stage1_proj", "expert"}  # and sawyer's heads
    torch.testing.assert_close(policy.env_embed.weight, state["env_embed.weight"])
    plain = DexVLAPolicy(config.replace(env_state="none").policy_config())
    assert "env_embed.weight" in load_stage1_expert(plain, s1 / "final")
    # The expert keeps the target it was trained on (epsilon here).
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["objects"]),
               "--init", str(s1 / "final"), "--out", str(tmp_path / "x0"), "--steps", "1",
               "--prediction-type", "sample", *FAST)  # fmt: skip
    assert rc != 0
    assert "cannot continue as a 'sample' predictor" in capsys.readouterr().err

    # Positions recorded by no stage-1 dataset, and a head stage 1 cannot train, are refused.
    rc = train("--stage", "1", "--preset", "tiny-stage1", "--data", str(data["sawyer"]),
               "--out", str(tmp_path / "bad"), "--steps", "1", "--env-state", "oracle",
               *FAST)  # fmt: skip
    assert rc != 0
    assert "needs one dataset to record observation.environment_state" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stage 1 takes one of"):
        get_stage_preset("tiny-stage1").replace(env_state="aux")


def test_stage1_loss_averages_its_noise_draws(data):
    """`noise_samples` K: stage 1's expert sees the batch K times, each with its own noise."""
    config = get_stage_preset("tiny-stage1").replace(image_size=(28, 28), noise_samples=3)
    stage = load_stage_data([data["aloha"]], config, config.policy_config())
    model = Stage1Policy(config.policy_config())
    batch = collate_windows([stage.dataset[i] for i in range(4)])
    seen = []
    model.expert.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    model(batch)
    assert seen == [12]


def test_prediction_type_and_chunk_size_are_stage_options_kept_by_continued_stages(
    data, tmp_path, capsys
):
    out = tmp_path / "sample"
    rc = train("--stage", "2", "--preset", "tiny-stage2", "--data", str(data["aloha"]),
               "--out", str(out), "--steps", "20", "--log-every", "5",
               "--prediction-type", "sample", "--chunk-size", "20", *FAST)  # fmt: skip
    assert rc == 0
    assert_loss_falls(out)
    policy = DexVLAPolicy.from_pretrained(out / "final")
    assert policy.config.diffusion.prediction_type == "sample"
    assert policy.config.chunk_size == 20 and policy.expert.pos_embed.shape[1] == 20
    rc = train("--stage", "3", "--preset", "tiny-stage3", "--data", str(data["aloha"]),
               "--init", str(out / "final"), "--out", str(tmp_path / "s3"), "--steps", "1",
               "--prediction-type", "epsilon", "--chunk-size", "50", *FAST)  # fmt: skip
    assert rc != 0
    err = capsys.readouterr().err
    assert "prediction type 'epsilon' (init: 'sample')" in err
    assert "chunk size 50 (init: 20)" in err


def test_resume_continues_from_the_last_checkpoint(data, tmp_path):
    out = tmp_path / "s1"
    args = ["--stage", "1", "--preset", "tiny-stage1", "--data", str(data["sawyer"]),
            "--out", str(out), "--log-every", "1", "--save-every", "2", "--image-size", "28x28",
            "--batch-size", "4", "--schedule", "constant"]  # fmt: skip
    assert train(*args, "--steps", "4") == 0
    saved = (out / "stage_config.json").read_text()
    assert train(*args, "--steps", "6", "--llm", "frozen") == 2  # no --resume: refused
    assert (out / "stage_config.json").read_text() == saved
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert train(*args, "--steps", "6", "--resume") == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    state = json.loads((out / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["step"] == 6
    assert train(*args, "--steps", "6", "--resume", "--llm-loss-weight", "0.5") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "2", "--preset", "tiny-stage9"], "unknown stage preset"),
        (["--stage", "1", "--preset", "tiny-stage2"], "stage-2 preset"),
        (["--stage", "2", "--preset", "tiny-stage2", "--data", "{missing}"], "no such dataset"),
        (["--stage", "3", "--preset", "tiny-stage3"], "pass --init"),
        (["--stage", "3", "--preset", "tiny-stage3", "--data", "{bare}", "--init", "{s2}"],
         "dexvla annotate"),
        (["--stage", "2", "--preset", "tiny-stage2", "--embodiments", "aloha", "--data",
          "{sawyer}"], "no expert head|expert heads for"),
        (["--stage", "2", "--preset", "tiny-stage2", "--init", "{s2}"], "not a stage-1"),
        (["--stage", "3", "--preset", "tiny-stage3", "--init", "{aloha}"], "no config.json"),
        (["--stage", "3", "--preset", "tiny-stage3", "--init", "{s2}", "--image-size", "56x56"],
         "cannot change its image size"),
        (["--stage", "2", "--preset", "tiny-stage2", "--data", "{aloha},{wide}"],
         "wide: aloha camera 'cam_high': datasets disagree on its field of view"),
    ],
)  # fmt: skip
def test_cli_errors_are_clear(args, message, data, stage2_final, tmp_path, capsys):
    fill = {"missing": tmp_path / "nope", "bare": data["bare"], "s2": stage2_final / "final",
            "sawyer": data["sawyer"], "aloha": data["aloha"], "wide": data["wide"]}  # fmt: skip
    args = [a.format(**fill) for a in args]
    if "--data" not in args:
        args += ["--data", str(data["aloha"])]
    assert train(*args, "--out", str(tmp_path / "out")) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_three_stages_end_to_end_through_the_cli(data, tmp_path):
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    common = [*FAST, "--steps", "4", "--log-every", "2"]
    both = f"{data['aloha']},{data['sawyer']}"
    assert train("--stage", "1", "--preset", "tiny-stage1", "--data", both, "--out", str(s1),
                 *common) == 0  # fmt: skip
    assert train("--stage", "2", "--preset", "tiny-stage2", "--data", both, "--out", str(s2),
                 "--init", str(s1 / "final"), "--llm", "lora", "--ema", "0.9",
                 *common) == 0  # fmt: skip
    assert train("--stage", "3", "--preset", "tiny-stage3", "--data", str(data["aloha"]),
                 "--out", str(s3), "--init", str(s2 / "final"), *common) == 0  # fmt: skip

    policy = DexVLAPolicy.from_pretrained(s3 / "final")
    assert sorted(policy.processor.stats.embodiments) == ["aloha", "sawyer"]
    rng = np.random.default_rng(0)
    for embodiment in ("aloha", "sawyer"):
        spec = get_embodiment(embodiment)
        obs = {f"observation.images.{c}": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
               for c in spec.cameras}  # fmt: skip
        obs.update({"observation.state": np.zeros(spec.state_dim, np.float32),
                    "task": "pick up the cube", "embodiment": embodiment})  # fmt: skip
        chunk, reasoning = policy.predict_action_chunk(obs)
        assert chunk.shape == (50, spec.action_dim) and np.isfinite(chunk).all()
        assert isinstance(reasoning.text, str)
