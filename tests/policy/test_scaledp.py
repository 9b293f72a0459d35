"""ScaleDP: shapes, adaLN-Zero initialisation, multi-head output, input checks."""

import json

import pytest
import torch

from dexvla.policy.scaledp import (
    Attention,
    ScaleDP,
    ScaleDPBlock,
    ScaleDPConfig,
    TimestepEmbedder,
)

TWO_ROBOTS = {"aloha": (14, 14), "hand": (4, 7)}


def tiny_config(**overrides) -> ScaleDPConfig:
    kwargs = dict(depth=2, width=32, heads=4, cond_dim=24, chunk_size=10, embodiments=TWO_ROBOTS)
    kwargs.update(overrides)
    return ScaleDPConfig(**kwargs)


def inputs(config: ScaleDPConfig, embodiment: str, batch: int = 3, steps: int | None = None):
    action_dim, state_dim = config.embodiments[embodiment]
    steps = config.chunk_size if steps is None else steps
    return (
        torch.randn(batch, steps, action_dim),
        torch.randint(0, 100, (batch,)),
        torch.randn(batch, config.cond_dim),
        torch.randn(batch, state_dim),
        embodiment,
    )


def randomise_zero_inits(model: ScaleDP) -> None:
    """Give the zero-initialised adaLN and output layers random weights (a 'trained' model)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "action_out" in name:
                p.normal_(std=0.1)


def test_config_roundtrips_through_json():
    config = tiny_config(dropout=0.1)
    restored = ScaleDPConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.embodiments["hand"] == (4, 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 30}, "divisible by heads"),
        ({"depth": 0}, "depth"),
        ({"embodiments": {}}, "at least one"),
        ({"embodiments": {"a.b": (1, 1)}}, "without '.'"),
        ({"embodiments": {"arm": (0, 3)}}, "positive"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown ScaleDPConfig keys"):
        ScaleDPConfig.from_dict({**tiny_config().to_dict(), "n_layers": 3})


def test_config_copies_embodiments():
    robots = {"aloha": (14, 14)}
    config = tiny_config(embodiments=robots)
    robots["other"] = (2, 2)
    assert list(config.embodiments) == ["aloha"]


def test_submodule_shapes():
    t = torch.tensor([0, 5, 99])
    assert TimestepEmbedder(32, 16)(t).shape == (3, 32)
    assert TimestepEmbedder(32, 16)(t.float() + 0.5).shape == (3, 32)
    assert Attention(32, 4, 0.0)(torch.randn(3, 7, 32)).shape == (3, 7, 32)
    assert ScaleDPBlock(32, 4, 128, 0.0)(torch.randn(3, 7, 32), torch.randn(3, 32)).shape == (
        3,
        7,
        32,
    )


@pytest.mark.parametrize("steps", [10, 4, 1])
def test_forward_shapes_for_each_embodiment(steps):
    config = tiny_config()
    model = ScaleDP(config)
    randomise_zero_inits(model)
    for name, (action_dim, _) in config.embodiments.items():
        out = model(*inputs(config, name, batch=3, steps=steps))
        assert out.shape == (3, steps, action_dim)
        assert out.isfinite().all()


def test_float_timesteps_are_accepted_and_matter():
    config = tiny_config()
    model = ScaleDP(config)
    randomise_zero_inits(model)
    x, _, cond, state, name = inputs(config, "aloha")
    a = model(x, torch.full((3,), 10.0), cond, state, name)
    b = model(x, torch.full((3,), 10), cond, state, name)
    c = model(x, torch.full((3,), 60.5), cond, state, name)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_blocks_are_identity_and_output_is_zero_at_init():
    config = tiny_config()
    model = ScaleDP(config)
    x = torch.randn(3, 10, config.width)
    c = torch.randn(3, config.width)
    for block in model.blocks:
        torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)
    out = model(*inputs(config, "hand"))
    assert torch.equal(out, torch.zeros_like(out))


def test_block_is_not_identity_once_gates_are_nonzero():
    model = ScaleDP(tiny_config())
    randomise_zero_inits(model)
    x, c = torch.randn(3, 10, 32), torch.randn(3, 32)
    assert not torch.allclose(model.blocks[0](x, c), x)


def test_output_depends_on_condition_state_and_every_step():
    config = tiny_config()
    model = ScaleDP(config).eval()
    randomise_zero_inits(model)
    x, t, cond, state, name = inputs(config, "aloha")
    base = model(x, t, cond, state, name)
    assert not torch.allclose(base, model(x, t, cond + 1, state, name))
    assert not torch.allclose(base, model(x, t, cond, state + 1, name))
    # Non-causal: the last action step changes the prediction for the first.
    x2 = x.clone()
    x2[:, -1] += 1
    assert not torch.allclose(base[:, 0], model(x2, t, cond, state, name)[:, 0])


def test_multi_head_shares_trunk_but_not_heads():
    config = tiny_config()
    model = ScaleDP(config)
    randomise_zero_inits(model)
    model(*inputs(config, "hand")).square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["action_out.hand.weight"].abs().sum() > 0
    assert grads["action_in.hand.weight"].abs().sum() > 0
    assert grads["action_out.aloha.weight"] is None
    assert grads["state_in.aloha.weight"] is None


@pytest.mark.parametrize(
    ("position", "bad", "message"),
    [
        (0, torch.randn(3, 10, 13), r"noisy_actions: expected \(B, Hc, 14\).*got \(3, 10, 13\)"),
        (0, torch.randn(3, 11, 14), "Hc <= 10"),
        (1, torch.zeros(2), r"timesteps: expected \(3,\)"),
        (2, torch.randn(3, 23), r"cond: expected \(3, 24\), got \(3, 23\)"),
        (3, torch.randn(3, 7), r"state: expected \(3, 14\).*got \(3, 7\)"),
        (4, "ur5", "unknown embodiment 'ur5'"),
    ],
)
def test_bad_inputs_raise_clear_errors(position, bad, message):
    config = tiny_config()
    args = list(inputs(config, "aloha"))
    args[position] = bad
    with pytest.raises(ValueError, match=message):
        ScaleDP(config)(*args)


def test_gradient_checkpointing_gives_same_outputs_and_grads():
    config = tiny_config()
    model = ScaleDP(config).train()
    randomise_zero_inits(model)
    args = inputs(config, "aloha")
    model(*args).square().sum().backward()
    reference = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    model(*args).square().sum().backward()
    checkpointed = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(reference, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_runs_with_bf16_weights():
    config = tiny_config()
    model = ScaleDP(config).to(torch.bfloat16)
    randomise_zero_inits(model)
    out = model(*inputs(config, "aloha"))
    assert out.dtype == torch.bfloat16
    assert out.isfinite().all()


def reference_forward(model: ScaleDP, noisy, timesteps, cond, state, embodiment):
    """The whole pass written out from the submodules, every term recomputed (the pre-issue-13
    forward), to check the denoiser's hoisted constants against."""
    x = model.action_in[embodiment](noisy) + model.pos_embed[:, : noisy.shape[1]]
    s = model.state_in[embodiment](state)
    c = model.cond_embedder(torch.cat([cond, s], dim=-1)) + model.t_embedder(timesteps)
    for block in model.blocks:
        x = block(x, c)
    return model.action_out[embodiment](model.final_layer(x, c))


@pytest.mark.parametrize("name", ["aloha", "hand"])
def test_denoiser_matches_the_full_pass_at_every_step(name):
    config = tiny_config()
    model = ScaleDP(config).eval()
    randomise_zero_inits(model)
    x, _, cond, state, _ = inputs(config, name, batch=3, steps=7)
    denoise = model.denoiser(cond, state, name)
    with torch.no_grad():
        for t in (99, 50, 3, 0):
            timesteps = torch.full((3,), t)
            noisy = torch.randn_like(x)
            expected = reference_forward(model, noisy, timesteps, cond, state, name)
            torch.testing.assert_close(denoise(noisy, timesteps), expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(
                model(noisy, timesteps, cond, state, name), expected, rtol=1e-6, atol=1e-6
            )


def test_denoiser_gradients_match_the_full_pass():
    config = tiny_config()
    model = ScaleDP(config).train()
    randomise_zero_inits(model)
    x, t, cond, state, name = inputs(config, "aloha")
    reference_forward(model, x, t, cond, state, name).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.denoiser(cond, state, name)(x, t).square().sum().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-6, atol=1e-6)


def test_denoiser_checks_the_condition_once_and_each_new_step_shape():
    config = tiny_config()
    model = ScaleDP(config)
    x, t, cond, state, name = inputs(config, "aloha", batch=3)
    with pytest.raises(ValueError, match=r"cond: expected \(3, 24\), got \(3, 23\)"):
        model.denoiser(cond[:, :-1], state, name)
    with pytest.raises(ValueError, match=r"state: expected \(3, 14\)"):
        model.denoiser(cond, state[:2], name)
    with pytest.raises(ValueError, match="unknown embodiment 'ur5'"):
        model.denoiser(cond, state, "ur5")
    denoise = model.denoiser(cond, state, name)
    assert denoise(x, t).shape == (3, 10, 14)
    # A new shape after a good one is checked again (the shape check is cached, not skipped).
    assert denoise(x[:, :4], t).shape == (3, 4, 14)
    with pytest.raises(ValueError, match=r"noisy_actions: expected batch 3 \(the condition's\)"):
        denoise(x[:2], t[:2])
    with pytest.raises(ValueError, match=r"timesteps: expected \(3,\)"):
        denoise(x, t[:2])
    with pytest.raises(ValueError, match="Hc <= 10"):
        denoise(torch.randn(3, 11, 14), t)


@pytest.mark.slow
def test_compiled_steps_match_eager():
    config = tiny_config()
    model = ScaleDP(config).eval()
    randomise_zero_inits(model)
    x, t, cond, state, name = inputs(config, "aloha")
    with torch.inference_mode():
        eager = model.denoiser(cond, state, name)(x, t)
        model.compile_steps()
        compiled = model.denoiser(cond, state, name)
        for _ in range(2):  # the first call compiles, the second reuses it
            torch.testing.assert_close(compiled(x, t), eager, rtol=1e-5, atol=1e-5)
    model.compile_steps(enabled=False)
    assert model.compiled_trunk is None


def spy_compiled_trunk(model: ScaleDP) -> list[int]:
    """Install a stand-in compiled trunk that records each call's argument count."""
    calls: list[int] = []

    def fake_compiled(*args):
        calls.append(len(args))
        return model.trunk(*args)

    model.compiled_trunk = fake_compiled
    return calls


def test_compiled_trunk_is_used_only_for_sampling():
    config = tiny_config()
    model = ScaleDP(config)
    x, t, cond, state, name = inputs(config, "aloha")
    calls = spy_compiled_trunk(model)
    model.train()
    model.denoiser(cond, state, name)(x, t)
    with torch.no_grad():
        model.denoiser(cond, state, name)(x, t)
    model.eval()
    model.denoiser(cond, state, name)(x, t)  # autograd on: eager
    assert calls == []
    with torch.inference_mode():
        model.denoiser(cond, state, name)(x, t)
        model.denoiser(cond, state, name).steps(t[None])[0](x)
    assert calls == [4, 4]


def test_compiled_trunk_in_training_only_when_asked():
    config = tiny_config()
    model = ScaleDP(config).train()
    x, t, cond, state, name = inputs(config, "aloha")
    model.compile_steps(training=True)
    assert model.compile_training
    calls = spy_compiled_trunk(model)
    model.denoiser(cond, state, name)(x, t).sum().backward()
    assert calls == [4]
    model.compile_steps(enabled=False, training=True)
    assert model.compiled_trunk is None and not model.compile_training


@pytest.mark.slow
def test_compiled_training_matches_eager_gradients():
    config = tiny_config()
    model = ScaleDP(config).train()
    randomise_zero_inits(model)
    x, t, cond, state, name = inputs(config, "aloha")
    model.denoiser(cond, state, name)(x, t).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.compile_steps(training=True)
    model.denoiser(cond, state, name)(x, t).square().sum().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["aloha", "hand"])
def test_schedule_steps_match_step_by_step_calls(name):
    """`Denoiser.steps` (every step's adaLN outputs from one batched pass) == calling the
    denoiser with each timestep, for every step of a schedule."""
    config = tiny_config()
    model = ScaleDP(config).eval()
    randomise_zero_inits(model)
    x, _, cond, state, _ = inputs(config, name, batch=3, steps=7)
    schedule = torch.tensor([99, 60, 21, 0])[:, None].expand(-1, 3)  # (T, B)
    denoise = model.denoiser(cond, state, name)
    with torch.no_grad():
        steps = denoise.steps(schedule)
        assert len(steps) == 4
        for step, timesteps in zip(steps, schedule, strict=True):
            noisy = torch.randn_like(x)
            expected = reference_forward(model, noisy, timesteps, cond, state, name)
            torch.testing.assert_close(step(noisy), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(denoise(noisy, timesteps), expected, rtol=1e-6, atol=1e-6)


def test_every_denoising_step_is_a_module_call():
    config = tiny_config()
    model = ScaleDP(config)
    x, t, cond, state, name = inputs(config, "aloha")
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    denoise = model.denoiser(cond, state, name)
    for _ in range(3):
        denoise(x, t)
    for step in denoise.steps(torch.stack([t, t])):
        step(x)
    assert seen == [(3, 10, 14)] * 5


# ------------------------------------------------------------------ the released layout
def test_the_project_layout_is_the_default_and_old_configs_read_as_it():
    config = tiny_config()
    assert config.layout == "project" and not config.released
    saved = config.to_dict()
    del saved["layout"], saved["combine_dim"]  # a config.json written before the option
    assert ScaleDPConfig.from_dict(saved) == config
    model = ScaleDP(config)
    assert hasattr(model, "cond_embedder") and not hasattr(model, "combine")
    assert model.blocks[0].mlp.approximate == "none" and not model.t_embedder.bf16_table


def test_the_released_layout_conditions_through_combine_and_cond_obs_emb():
    config = tiny_config(layout="released", state_embed_dim=14, combine_dim=48)
    assert ScaleDPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = ScaleDP(config)
    names = {k.split(".")[0] for k in model.state_dict()}
    assert {"combine", "cond_obs_emb"} <= names and "cond_embedder" not in names
    assert tuple(model.combine[0].weight.shape) == (48, 24 + 14)
    assert tuple(model.combine[4].weight.shape) == (24, 48)
    assert tuple(model.cond_obs_emb.weight.shape) == (32, 24)
    # aloha's 14-D state enters combine raw; the 7-D hand state through its own projection.
    assert list(model.state_in) == ["hand"]
    assert tuple(model.state_in["hand"].weight.shape) == (14, 7)
    assert model.blocks[0].mlp.approximate == "tanh" and model.t_embedder.bf16_table
    randomise_zero_inits(model)
    *_, cond, state, _ = inputs(config, "aloha")
    with torch.no_grad():
        expected = model.cond_obs_emb(model.combine(torch.cat([cond, state], -1)))
    prepared = model.prepare(cond, state, "aloha")
    torch.testing.assert_close(prepared.embedding, expected)
    for name in ("aloha", "hand"):
        out = model(*inputs(config, name))
        assert out.shape[-1] == config.embodiments[name][0] and out.isfinite().all()


def test_bad_layout_values_are_refused():
    with pytest.raises(ValueError, match="layout must be one of"):
        tiny_config(layout="authors")
    with pytest.raises(ValueError, match="combine_dim"):
        tiny_config(layout="released", combine_dim=0)
