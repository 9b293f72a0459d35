"""convert-released-expert -> a stage-1 artefact -> stage 2: what is kept, re-initialised, fresh."""

import dataclasses
import json

import pytest
import torch
from released_facts import SIZES

from dexvla.cli import main
from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.embodiments import get_embodiment
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.train.metrics import read_metrics
from dexvla.train.stage1 import read_stage1
from dexvla.train.stages import build_model, get_stage_preset, open_stage, run_stage


@pytest.fixture
def artefact(ckpt, tmp_path):
    out = tmp_path / "released-s1"
    assert main(["convert-released-expert", str(ckpt), "--out", str(out), "--heads", "4"]) == 0
    return out


@pytest.fixture
def aloha_data(tmp_path, make_episode):
    root = tmp_path / "aloha"
    with LeRobotV3Writer(root, embodiment="aloha", fps=get_embodiment("aloha").fps) as writer:
        for seed in range(2):
            writer.add_episode(make_episode(seed, length=16, image_hw=(28, 28)))
    return root


def stage2(**changes):
    return get_stage_preset("tiny-stage2").replace(image_size=(28, 28), **changes)


def test_the_artefact_holds_the_released_expert_and_its_architecture(artefact, weights):
    config, state = read_stage1(artefact)
    assert config["expert"]["layout"] == "released"
    assert (config["expert"]["depth"], config["expert"]["heads"]) == (2, 4)
    assert config["reinitialise"] == ["cond_obs_emb"] and config["fresh_heads"] is True
    assert config["released_source"]["dropped_backbone_tensors"] == 2
    assert len(config["released_source"]["sha256"]) == 64
    assert all(k.startswith("expert.") for k in state) and len(state) == len(weights)
    assert torch.equal(state["expert.action_in.aloha.weight"], weights["x_embedder.weight"])
    assert torch.equal(state["expert.cond_obs_emb.bias"], weights["cond_obs_emb.bias"])


def test_a_safetensors_file_converts_to_the_same_artefact(artefact, safetensors_file, capsys):
    out = safetensors_file.parent / "from-safetensors"
    assert main(["convert-released-expert", str(safetensors_file), "--out", str(out),
                 "--heads", "4"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and '"depth": 2, "width": 32, "heads": 4' in printed
    (config, state), (first_config, first_state) = read_stage1(out), read_stage1(artefact)
    assert config["expert"] == first_config["expert"] and state.keys() == first_state.keys()
    assert all(torch.equal(state[k], first_state[k]) for k in state)


def test_convert_refuses_an_embodiment_of_other_sizes(ckpt, tmp_path, capsys):
    rc = main(["convert-released-expert", str(ckpt), "--out", str(tmp_path / "x"),
               "--heads", "4", "--embodiment", "sawyer"])  # fmt: skip
    assert rc == 2
    assert "(14, 14) do not match embodiment 'sawyer'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_stage2_keeps_reinitialises_and_adds_heads_as_documented(artefact, weights, aloha_data):
    config = stage2(embodiments=("aloha", "sawyer"))
    data = open_stage(config, [aloha_data], artefact)
    policy, _ = build_model(config, data, artefact)
    expert = policy.expert
    # The architecture is the artefact's, not the tiny preset's.
    assert expert.config.layout == "released"
    assert (expert.config.depth, expert.config.width, expert.config.heads) == (2, 32, 4)
    assert expert.config.cond_dim == SIZES["cond"] and policy.config.chunk_size == 10
    assert policy.config.n_action_steps == 10  # the preset's 16 exceeds the artefact's chunk
    # Kept: the trunk, the condition MLP and the released head (as aloha's).
    assert torch.equal(expert.blocks[1].attn.qkv.weight, weights["blocks.1.attn.qkv.weight"])
    assert torch.equal(expert.combine[2].weight, weights["combine.2.weight"])
    assert torch.equal(expert.action_out["aloha"].weight, weights["final_layer.linear.weight"])
    assert torch.equal(expert.t_embedder.mlp[0].bias, weights["t_embedder.mlp.0.bias"])
    # Re-initialised as the authors' stage 2 does: cond_obs_emb.
    assert not torch.equal(expert.cond_obs_emb.weight, weights["cond_obs_emb.weight"])
    assert torch.all(expert.cond_obs_emb.bias == 0)
    # Fresh: sawyer's head; its 4-D state is projected to the 14 floats combine reads.
    assert torch.all(expert.action_out["sawyer"].weight == 0)
    assert tuple(expert.state_in["sawyer"].weight.shape) == (14, 4)
    assert "aloha" not in expert.state_in  # the released state path reads aloha's state raw


def test_the_released_expert_computes_as_loaded_inside_the_policy(artefact, ckpt, aloha_data):
    from dexvla.released import load_released_expert

    config = stage2(embodiments=("aloha",))
    policy, _ = build_model(config, open_stage(config, [aloha_data], artefact), artefact)
    released = load_released_expert(ckpt, heads=4)
    with torch.no_grad():  # give both the same cond_obs_emb: then every other weight is kept
        policy.expert.cond_obs_emb.load_state_dict(released.cond_obs_emb.state_dict())
    noisy, t = torch.randn(2, 10, 14), torch.tensor([5, 80])
    cond, state = torch.randn(2, SIZES["cond"]), torch.randn(2, 14)
    policy.expert.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            policy.expert(noisy, t, cond, state, "aloha"), released(noisy, t, cond, state, "aloha")
        )


def test_a_short_stage2_runs_from_the_converted_artefact(artefact, aloha_data, tmp_path):
    torch.set_num_threads(1)
    config = stage2(steps=3, batch_size=4, log_every=1, save_every=1000, warmup_steps=1)
    final = run_stage(config, [aloha_data], tmp_path / "s2", init=artefact)
    losses = [r["loss"] for r in read_metrics(tmp_path / "s2" / "metrics.jsonl")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    policy = DexVLAPolicy.from_pretrained(final)
    assert policy.expert.config.layout == "released" and policy.config.chunk_size == 10
    saved = json.loads((final / "config.json").read_text())
    assert saved["expert"]["combine_dim"] == 1024


def test_the_2b_preset_takes_a_converted_scaledp_h(tmp_path):
    """A ScaleDP-H artefact (released layout, cond 1536 = Qwen2-VL-2B's width) makes the
    dexvla-2b stage-2 policy's expert: the released H's 955,861,518 parameters (counted from
    the authors' class), built on `meta`; aloha's 14-value state enters `combine` raw."""
    from dexvla.io import atomic_write_json
    from dexvla.policy.checkpoint import CONFIG_NAME, WEIGHTS_NAME
    from dexvla.policy.configuration import count_expert_parameters, vlm_hidden
    from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig
    from dexvla.train.stage1 import FRESH_HEADS_KEY, REINITIALISE_KEY, STAGE1_KIND
    from dexvla.train.stages import stage_policy_config

    h = ScaleDPConfig(depth=32, width=1280, heads=16, cond_dim=1536, chunk_size=50,
                      state_embed_dim=14, layout="released")  # fmt: skip
    artefact = tmp_path / "released-h"
    artefact.mkdir()
    atomic_write_json(
        artefact / CONFIG_NAME,
        {"kind": STAGE1_KIND, "expert": h.to_dict(), REINITIALISE_KEY: ["cond_obs_emb"],
         FRESH_HEADS_KEY: True},
    )  # fmt: skip
    (artefact / WEIGHTS_NAME).write_bytes(b"")  # only the config is read here
    policy = stage_policy_config(get_stage_preset("2b-stage2"), artefact)
    expert = policy.expert
    assert (expert.depth, expert.width, expert.heads, expert.layout) == (32, 1280, 16, "released")
    assert expert.cond_dim == vlm_hidden(policy.vlm) == 1536
    aloha_only = dataclasses.replace(expert, embodiments={"aloha": (14, 14)})
    assert count_expert_parameters(aloha_only) == 955_861_518
    with torch.device("meta"):
        trunk = ScaleDP(expert)
    assert trunk.cond_obs_emb.in_features == 1536 and "aloha" not in trunk.state_in
