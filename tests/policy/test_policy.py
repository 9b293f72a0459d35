"""DexVLAPolicy: losses, inference API, checkpoints, bad input."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, VisionAttention

from dexvla.policy.configuration import PolicyConfig
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.schema import Reasoning, image_key

from .conftest import ALOHA, make_batch, make_observation, make_policy


def test_forward_losses_and_gradients_reach_every_part(policy):
    loss, metrics = policy(make_batch())
    assert torch.isfinite(loss)
    metrics = {name: float(value) for name, value in metrics.items()}
    assert metrics["loss"] == pytest.approx(
        metrics["action_loss"] + policy.config.llm_loss_weight * metrics["language_loss"], rel=1e-5
    )
    loss.backward()
    # adaLN-Zero: at init the expert ignores its condition (zero final layer and gates); the
    # action loss reaches the fusion once a few updates have made them non-zero.
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.step()
        policy.zero_grad()
        policy(make_batch())[0].backward()
    for part in (policy.vlm.model.visual, policy.vlm.model.language_model, policy.fusion):
        grads = [p.grad for p in part.parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), type(part).__name__
    assert policy.expert.final_layer.adaLN_modulation[-1].weight.grad.abs().sum() > 0


def test_padded_action_steps_do_not_change_the_loss(policy):
    batch = make_batch()
    batch["action_is_pad"][:, 30:] = True
    torch.manual_seed(7)
    _, before = policy(batch)
    batch["action"][:, 30:] = 123.0
    torch.manual_seed(7)
    _, after = policy(batch)
    assert float(after["action_loss"]) == pytest.approx(float(before["action_loss"]), rel=1e-6)


def test_language_loss_weight_is_applied(policy):
    policy.config = policy.config.replace(llm_loss_weight=0.0)
    loss, metrics = policy(make_batch())
    assert loss.item() == pytest.approx(float(metrics["action_loss"]), rel=1e-6)


def test_noise_samples_run_the_expert_on_every_draw_and_keep_padding_masked(policy):
    policy.config = policy.config.replace(noise_samples=3)
    seen = []
    hook = policy.expert.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    batch = make_batch(batch_size=2)
    batch["action_is_pad"][:, 30:] = True
    torch.manual_seed(7)
    _, before = policy(batch)
    hook.remove()
    assert seen == [6]  # one expert pass on the 2 observations x 3 draws
    batch["action"][:, 30:] = 123.0
    torch.manual_seed(7)
    _, after = policy(batch)
    assert float(after["action_loss"]) == pytest.approx(float(before["action_loss"]), rel=1e-6)
    with pytest.raises(ValueError, match="noise_samples"):
        policy.config.replace(noise_samples=0)


def test_predict_action_chunk_single_and_batched(policy):
    policy.eval()
    obs = make_observation()
    actions, reasoning = policy.predict_action_chunk(obs)
    assert actions.shape == (50, 14) and actions.dtype == np.float32
    assert isinstance(reasoning, Reasoning) and isinstance(reasoning.text, str)
    assert reasoning.states.shape == (1, policy.fusion.vlm_dim)
    batched, reasoning_b = policy.predict_action_chunk([obs, make_observation(1)])
    assert batched.shape == (2, 50, 14)
    assert len(reasoning_b.text) == 2
    # un-normalised into the data's range: min-max of the stats, [-2, 3]
    low = policy.processor.stats.stats["aloha"]["action"]["min"]
    high = policy.processor.stats.stats["aloha"]["action"]["max"]
    assert (actions >= low - 1e-4).all() and (actions <= high + 1e-4).all()


def test_select_action_runs_one_chunk_per_n_action_steps(policy, monkeypatch):
    policy.eval()
    calls = []
    chunk = np.arange(50 * 14, dtype=np.float32).reshape(50, 14)

    def fake_chunk(observation, reasoning=None):
        calls.append(1)
        return chunk, None

    monkeypatch.setattr(policy, "predict_action_chunk", fake_chunk)
    obs = make_observation()
    steps = policy.config.n_action_steps
    actions = [policy.select_action(obs) for _ in range(steps + 1)]
    assert len(calls) == 2
    np.testing.assert_array_equal(actions[0], chunk[0])
    np.testing.assert_array_equal(actions[steps - 1], chunk[steps - 1])
    np.testing.assert_array_equal(actions[steps], chunk[0])
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 3


def test_save_and_load_give_identical_outputs(policy, tmp_path):
    policy.eval()
    obs = make_observation()
    torch.manual_seed(3)
    before, reasoning = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    path = policy.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "stats.json"}
    loaded = DexVLAPolicy.from_pretrained(path)
    after, reasoning_after = loaded.predict_action_chunk(
        obs, generator=torch.Generator().manual_seed(1)
    )
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert reasoning_after.text == reasoning.text
    assert loaded.config == policy.config
    # saving again over the directory replaces it and leaves no temporary directory behind
    policy.save_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_strict_loading_lists_missing_and_unexpected_keys(policy, tmp_path):
    path = policy.save_pretrained(tmp_path / "ckpt")
    weights = load_file(str(path / "model.safetensors"))
    dropped = sorted(k for k in weights if k.startswith("expert."))[0]
    weights.pop(dropped)
    weights["expert.not_a_layer"] = torch.zeros(1)
    save_file(weights, str(path / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        DexVLAPolicy.from_pretrained(path)
    assert dropped in str(error.value) and "expert.not_a_layer" in str(error.value)


def test_loading_corrupt_or_incomplete_checkpoints(policy, tmp_path):
    path = policy.save_pretrained(tmp_path / "ckpt")
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read weights"):
        DexVLAPolicy.from_pretrained(path)
    (path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        DexVLAPolicy.from_pretrained(path)
    (path / "stats.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"stats\.json"):
        DexVLAPolicy.from_pretrained(path)


def test_policy_config_round_trips_through_json():
    config = make_policy().config
    assert PolicyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_policy_config_rejects_heads_that_disagree_with_the_registry():
    config = make_policy().config
    with pytest.raises(ValueError, match="embodiment registry"):
        config.replace(
            expert=config.expert.__class__(
                depth=1, width=32, heads=2, embodiments={"aloha": (7, 14)}
            )
        )
    with pytest.raises(ValueError, match="n_action_steps"):
        config.replace(n_action_steps=0)


def test_without_reasoning_the_fusion_sees_no_substep():
    policy = make_policy(use_reasoning=False).eval()
    reasoning = policy.generate_reasoning(make_observation())
    assert reasoning.text == ""
    assert torch.count_nonzero(reasoning.states) == 0
    loss, _ = policy(make_batch())
    assert torch.isfinite(loss)


def test_bf16_sampling_gives_finite_actions(policy):
    policy = policy.to(torch.bfloat16).eval()
    actions, _ = policy.predict_action_chunk(make_observation())
    assert np.isfinite(actions).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.pop("observation.images.cam_left_wrist"), "missing camera"),
        (
            lambda o: o.update({"observation.images.cam_high": np.zeros((4, 4), np.uint8)}),
            "uint8 \\(H, W, 3\\)",
        ),
        (
            lambda o: o.update({"observation.images.cam_high": np.zeros((4, 4, 3), np.float32)}),
            "uint8",
        ),
        (lambda o: o.update({"observation.state": np.full(14, np.nan, np.float32)}), "NaN"),
        (lambda o: o.update({"observation.state": np.zeros(7, np.float32)}), "expected shape"),
        (lambda o: o.pop("observation.state"), "missing 'observation.state'"),
        (lambda o: o.update({"embodiment": "rover"}), "unknown embodiment 'rover'"),
        (lambda o: o.update({"task": ""}), "instruction"),
    ],
)
def test_bad_observations_are_named(policy, change, message):
    obs = make_observation()
    change(obs)
    with pytest.raises(ValueError, match=message):
        policy.predict_action_chunk(obs)


def test_training_batch_must_hold_one_embodiment(policy):
    batch = make_batch()
    batch["embodiment"] = ["aloha", "sawyer"]
    with pytest.raises(ValueError, match="one embodiment"):
        policy(batch)


def test_policy_without_stats_says_so():
    from dexvla.policy.modeling import DexVLAPolicy as Policy

    from .conftest import tiny_config

    with pytest.raises(ValueError, match="no normalisation statistics"):
        Policy(tiny_config()).predict_action_chunk(make_observation())


def test_encode_pools_prompt_and_substep_states_of_one_pass(policy):
    policy.eval()
    batch = make_batch()
    with torch.no_grad():
        encoding = policy.encode(batch, "aloha", ["grasp the cube", ""])
        empty = policy.encode(batch, "aloha", ["", ""])
    dim = policy.fusion.vlm_dim
    assert encoding.prompt.shape == encoding.reasoning.shape == (2, dim)
    assert encoding.hidden.shape[::2] == (2, dim)
    assert encoding.labels.shape == encoding.hidden.shape[:2]
    # causal attention: the prompt's states do not depend on the answer after it
    torch.testing.assert_close(encoding.prompt, empty.prompt, rtol=1e-4, atol=1e-5)
    assert encoding.reasoning[0].abs().sum() > 0
    assert torch.count_nonzero(encoding.reasoning[1]) == 0  # no sub-step tokens to pool


def test_cached_reasoning_must_fit_the_batch(policy):
    policy.eval()
    obs = make_observation()
    reasoning = policy.generate_reasoning(obs)
    with pytest.raises(ValueError, match="reasoning holds 1 sub-steps for 2 observations"):
        policy.predict_action_chunk([obs, make_observation(1)], reasoning=reasoning)
    with pytest.raises(ValueError, match="carries no pooled states"):
        policy.predict_action_chunk(obs, reasoning=Reasoning(text="grasp the cube"))


def test_language_loss_equals_the_answer_tokens_cross_entropy(policy):
    batch = make_batch(batch_size=3)
    batch["task"] = ["transfer the cube", "pick", "insert the peg into the socket"]
    batch["substep"] = ["grasp the cube with the right arm", "", "lift"]
    _, metrics = policy(batch)
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad
    # reference: the LM head on exactly the positions whose next token is an answer token
    encoding = policy.encode(batch, "aloha", batch["substep"])
    labels = encoding.labels[:, 1:]
    answer = labels != -100
    logits = policy.vlm.lm_head(encoding.hidden[:, :-1][answer])
    expected = torch.nn.functional.cross_entropy(logits, labels[answer])
    torch.testing.assert_close(metrics["language_loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    assert encoding.answer_start == int(answer.float().argmax(1).min()) + 1


def test_uint8_cameras_give_the_float_cameras_encoding(policy):
    policy.eval()
    size = policy.config.vlm.image_size
    gen = torch.Generator().manual_seed(3)
    as_uint8 = make_batch()
    as_float = make_batch()
    for key in [k for k in as_uint8 if k.startswith("observation.images.")]:
        as_uint8[key] = torch.randint(0, 256, (2, 3, *size), generator=gen, dtype=torch.uint8)
        as_float[key] = as_uint8[key].float() / 255
    with torch.no_grad():
        encodings = [policy.encode(b, "aloha", ["grasp", ""]) for b in (as_uint8, as_float)]
    torch.testing.assert_close(encodings[0].hidden, encodings[1].hidden)


def test_encode_equals_the_upstream_qwen2vl_pass(policy):
    """Device patchify, vectorised M-RoPE, cached vision layout and batched vision attention
    give what upstream's image processor, get_rope_index and per-image attention give."""
    policy.eval()
    batch = make_batch(batch_size=3)
    batch["task"] = ["transfer the cube", "pick", "insert the peg into the socket"]
    substeps = ["grasp the cube with the right arm", "", "lift"]
    upstream = copy.deepcopy(policy.vlm)
    upstream.model.visual.patch_embed.__class__ = PatchEmbed
    for block in upstream.model.visual.blocks:
        block.attn.__class__ = VisionAttention
    cams = [policy.processor.resize(batch[image_key(c)]) for c in ALOHA.cameras]
    images = torch.stack(cams, 1).flatten(0, 1).permute(0, 2, 3, 1).numpy()
    pil = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)
    vision = pil(images=list(images), return_tensors="pt")
    tokens = policy.prompts.encode(policy._image_tokens("aloha"), batch["task"], substeps)
    with torch.no_grad():
        expected = upstream.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            mm_token_type_ids=policy.prompts.mm_token_type_ids(tokens.input_ids),
            pixel_values=vision["pixel_values"],
            image_grid_thw=vision["image_grid_thw"],
            use_cache=False,
        ).last_hidden_state
        hidden = policy.encode(batch, "aloha", substeps).hidden
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_blocks_train_as_eager(policy):
    """`compile_blocks` compiles the vision blocks, the decoder layers and the expert's trunk
    in place: same loss, same gradients, same state-dict keys."""
    batch = make_batch(batch_size=2)
    keys = set(policy.state_dict())

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)  # the same noise draws and timesteps
        policy.zero_grad(set_to_none=True)
        loss, _ = policy(batch)
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None
        }

    eager_loss, eager_grads = step()
    policy.compile_blocks()
    blocks = [*policy.vlm.model.visual.blocks, *policy.vlm.model.language_model.layers]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert policy.expert.compile_training
    loss, grads = step()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert set(policy.state_dict()) == keys
