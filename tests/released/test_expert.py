"""load_released_expert: both file kinds, the mapping, the released numerics, strictness."""

import argparse
import os

import pytest
import torch
from released_facts import SIZES, as_file_dict, released_forward, released_weights
from safetensors.torch import save_file

from dexvla.policy.scaledp import ScaleDP
from dexvla.released import load_released_expert, read_released_expert


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, SIZES["horizon"], SIZES["action"], generator=g),
        torch.tensor([0, 37, 99])[:batch],
        torch.randn(batch, SIZES["cond"], generator=g),
        torch.randn(batch, SIZES["state"], generator=g),
    )


@pytest.mark.parametrize("kind", ["ckpt", "safetensors_file"])
def test_both_file_kinds_compute_the_released_forward(kind, weights, request):
    path = request.getfixturevalue(kind)
    expert = load_released_expert(path, heads=4, embodiment="aloha")
    assert isinstance(expert, ScaleDP) and expert.config.layout == "released"
    noisy, t, cond, state = inputs()
    with torch.no_grad():
        got = expert(noisy, t, cond, state, "aloha")
    want = released_forward(weights, noisy, t, cond, state, heads=4)
    assert want.abs().max() > 0.1  # a non-trivial output, so the bound below means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_architecture_comes_from_the_shapes_and_heads_from_the_flag(ckpt):
    config, mapped, dropped = read_released_expert(ckpt, heads=8, embodiment="aloha")
    assert (config.depth, config.width, config.heads) == (2, 32, 8)
    assert (config.cond_dim, config.chunk_size, config.time_freq_dim) == (24, 10, 256)
    assert config.embodiments == {"aloha": (14, 14)} and config.state_embed_dim == 14
    assert (config.layout, config.combine_dim, config.mlp_ratio) == ("released", 1024, 4.0)
    # Only ['nets']['nets'] is read: the EMA copy beside it is not, backbone tensors are dropped.
    assert sorted(dropped) == ["policy.backbones.0.bn1.running_mean",
                               "policy.backbones.0.conv1.weight"]  # fmt: skip
    assert not any(k.startswith("state_in.") for k in mapped)  # the aloha state enters raw


def test_names_map_explicitly(weights, safetensors_file):
    expert = load_released_expert(safetensors_file, heads=4)
    state = expert.state_dict()
    renamed = {
        "x_embedder.weight": "action_in.aloha.weight",
        "final_layer.linear.bias": "action_out.aloha.bias",
        "combine.4.weight": "combine.4.weight",
        "cond_obs_emb.weight": "cond_obs_emb.weight",
        "blocks.1.attn.qkv.bias": "blocks.1.attn.qkv.bias",
        "blocks.0.mlp.fc2.weight": "blocks.0.mlp.fc2.weight",
        "t_embedder.mlp.2.weight": "t_embedder.mlp.2.weight",
        "final_layer.adaLN_modulation.1.weight": "final_layer.adaLN_modulation.1.weight",
    }
    for released, mine in renamed.items():
        assert torch.equal(state[mine], weights[released]), released
    assert len(state) == len(weights)


def test_a_bf16_file_loads_as_fp32(tmp_path, weights):
    path = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in as_file_dict(weights).items()}, str(path))
    expert = load_released_expert(path, heads=4)
    assert expert.pos_embed.dtype == torch.float32
    assert torch.equal(expert.pos_embed, weights["pos_embed"].to(torch.bfloat16).float())


# ------------------------------------------------------------------------------- refusals
def _save(tmp_path, nets: dict) -> str:
    path = tmp_path / "bad.safetensors"
    save_file(nets, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("defect", "match"),
    [
        ("missing block tensor", r"missing keys \['noise_pred_net.blocks.1.mlp.fc2.bias'\]"),
        ("missing shape key", r"missing keys \['noise_pred_net.combine.4.weight'\]"),
        ("extra expert key", r"unexpected keys \['noise_pred_net.norm_after_pool.weight'\]"),
        ("wrong shape", r"wrong shape.*noise_pred_net.blocks.1.attn.qkv.weight"),
        ("other action size", r"wrong shape.*noise_pred_net.final_layer.linear.weight"),
        ("no expert", r"no expert tensors \(noise_pred_net.\*\)"),
    ],
)
def test_a_wrong_expert_is_refused_naming_the_keys(tmp_path, defect, match):
    w = released_weights()
    if defect == "missing block tensor":
        del w["blocks.1.mlp.fc2.bias"]
    elif defect == "missing shape key":
        del w["combine.4.weight"]
    elif defect == "extra expert key":
        w["norm_after_pool.weight"] = torch.ones(24)
    elif defect == "wrong shape":
        w["blocks.1.attn.qkv.weight"] = torch.zeros(96, 16)
    elif defect == "other action size":
        w["final_layer.linear.weight"] = torch.zeros(7, 32)
    nets = as_file_dict(w) if defect != "no expert" else {"policy.backbones.x": torch.zeros(2)}
    with pytest.raises(ValueError, match=match):
        load_released_expert(_save(tmp_path, nets), heads=4)


def test_heads_that_do_not_divide_the_width_are_refused(safetensors_file):
    with pytest.raises(ValueError, match="width 32 is not divisible by heads=5"):
        load_released_expert(safetensors_file, heads=5)


def test_a_pickle_that_needs_code_is_refused_without_running_it(tmp_path, weights):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for name, extra in [("code.ckpt", Payload()), ("namespace.ckpt", argparse.Namespace(lr=1))]:
        path = tmp_path / name
        torch.save({"nets": {"nets": as_file_dict(weights)}, "args": extra}, path)
        with pytest.raises(ValueError, match=r"refusing .*need code to unpickle.*weights_only"):
            load_released_expert(path, heads=4)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"state_dict": {"a": torch.zeros(1)}}, r"no \['nets'\]\['nets'\].*state_dict"),
        ({"nets": {"nets": {"policy.noise_pred_net.x": 3}}}, "non-tensor entries"),
    ],
)
def test_a_ckpt_without_the_released_dict_is_refused(tmp_path, content, match):
    path = tmp_path / "other.ckpt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        load_released_expert(path)


def test_unknown_suffix_missing_file_and_garbage_are_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"suffix '\.bin'"):
        load_released_expert(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_released_expert(tmp_path / "absent.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt"):
        load_released_expert(tmp_path / "junk.ckpt")


def test_the_timestep_table_and_features_are_rounded_to_bf16_as_released():
    import math

    from dexvla.policy.scaledp import TimestepEmbedder

    released = TimestepEmbedder(8, 256, bf16_table=True)
    freqs = released.frequencies(torch.device("cpu"))
    table = torch.exp(-math.log(10000) * torch.arange(0, 128, dtype=torch.bfloat16) / 128)
    assert freqs.dtype == torch.float32 and torch.equal(freqs, table.float())
    project = TimestepEmbedder(8, 256).frequencies(torch.device("cpu"))
    assert (freqs - project).abs().max() > 1e-3  # the rounding the released weights saw
    seen = []
    released.mlp[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    released(torch.tensor([3, 97]))
    assert torch.equal(seen[0], seen[0].to(torch.bfloat16).float())  # bf16 features, fp32 MLP
