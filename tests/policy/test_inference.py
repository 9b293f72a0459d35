"""Inference passes: one vision pass and one prefill per chunk, pooled states equal to the
teacher-forced pass, DDIM in torch maths equal to the diffusers sampler, and no state shared
between a reasoning thread and the fast action path."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from dexvla.policy import inference
from dexvla.policy.diffusion import ActionDiffusion, DiffusionConfig
from dexvla.schema import STATE, TASK

from .conftest import ALOHA, make_observation, make_policy


class ScriptedHead(torch.nn.Module):
    """An LM head that writes `scripts[row]` token by token, as a trained model would answer."""

    def __init__(self, vocab: int, scripts: list[list[int]]) -> None:
        super().__init__()
        self.vocab, self.scripts, self.calls = vocab, scripts, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, V)
        logits = hidden.new_full((*hidden.shape[:-1], self.vocab), -1e4)
        for row, script in enumerate(self.scripts):
            logits[row, script[min(self.calls, len(script) - 1)]] = 0.0
        self.calls += 1
        return logits


def two_observations() -> list[dict]:
    """Two prompts of different lengths, so generation left-pads and training right-pads."""
    first, second = make_observation(0), make_observation(1)
    second[TASK] = "transfer the red cube from the right arm to the left arm"
    return [first, second]


def long_answers(policy):
    policy.config = policy.config.replace(
        vlm=dataclasses.replace(policy.config.vlm, max_new_tokens=64)
    )
    return policy


def generation_and_reference(policy, observations):
    """The one-prefill generation and the teacher-forced encode of its sub-steps."""
    batch, embodiment = policy.processor.prepare(observations)
    tokens = [policy.config.vlm.tokens_per_image] * len(ALOHA.cameras)
    with torch.inference_mode():
        vision = policy.vision_inputs(batch, embodiment)
        generation = inference.generate(
            policy.vlm,
            policy.prompts,
            tokens,
            batch[TASK],
            vision,
            policy.config.vlm.max_new_tokens,
        )
        reference = policy.encode(batch, embodiment, generation.texts, vision)
    return generation, reference


@pytest.fixture
def continued(monkeypatch):
    """Records each time the sub-step is re-run on the cached prompt (decoded states not used)."""
    calls = []
    original = inference._continue_with

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "_continue_with", spy)
    return calls


def assert_same_states(generation, reference):
    torch.testing.assert_close(generation.prompt, reference.prompt, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(generation.reasoning, reference.reasoning, rtol=1e-4, atol=1e-5)


def test_decoded_states_pool_what_the_teacher_forced_pass_computes(policy, continued):
    policy = long_answers(policy).eval()
    substeps = ["grasp the cube with the right arm", "lift"]
    scripts = [policy.prompts.answer_ids(text)[0] for text in substeps]
    policy.vlm.lm_head = ScriptedHead(len(policy.tokenizer), scripts)
    generation, reference = generation_and_reference(policy, two_observations())
    assert generation.texts == substeps
    assert not continued  # the decoded tokens' own states were pooled
    assert_same_states(generation, reference)
    assert generation.reasoning.abs().sum() > 0


def test_unpadded_decoding_through_the_layers_equals_the_model_forward(policy, monkeypatch):
    """One observation (no padding) decodes through the decoder layers directly, and writes
    the same tokens with the same states as the model-level forward (the padded path)."""
    policy = long_answers(policy).eval()
    script = policy.prompts.answer_ids("grasp the cube with the right arm")[0]
    policy.vlm.lm_head = ScriptedHead(len(policy.tokenizer), [script])
    used = []
    original = inference._decode_step
    monkeypatch.setattr(inference, "_decode_step", lambda *a: used.append(1) or original(*a))
    direct, reference = generation_and_reference(policy, [make_observation(0)])
    assert used and direct.texts == ["grasp the cube with the right arm"]
    assert_same_states(direct, reference)
    policy.vlm.lm_head.calls = 0
    monkeypatch.setattr(inference, "_decode_step", lambda *a: None)
    through_model, _ = generation_and_reference(policy, [make_observation(0)])
    assert through_model.texts == direct.texts
    torch.testing.assert_close(direct.reasoning, through_model.reasoning, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_new_tokens", [3, 12])
def test_cut_or_untrained_answers_pool_the_training_span_too(policy, continued, max_new_tokens):
    policy.config = policy.config.replace(
        vlm=dataclasses.replace(policy.config.vlm, max_new_tokens=max_new_tokens)
    )
    policy.eval()
    if max_new_tokens == 3:  # the sub-step is cut: its last token was never fed back
        script = policy.prompts.answer_ids("grasp the cube with the right arm")[0]
        policy.vlm.lm_head = ScriptedHead(len(policy.tokenizer), [script, script])
    generation, reference = generation_and_reference(policy, two_observations())
    assert_same_states(generation, reference)
    if max_new_tokens == 3:
        assert continued and all(generation.texts)


def count_passes(policy):
    """Vision-tower passes and text passes over more than one token (prefills)."""
    counts = {"vision": 0, "prefill": 0}

    def on_text(_, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        tokens = embeds.shape[1] if embeds is not None else kwargs["input_ids"].shape[1]
        counts["prefill"] += tokens > 1

    policy.vlm.model.visual.register_forward_hook(
        lambda *_: counts.__setitem__("vision", counts["vision"] + 1)
    )
    policy.vlm.model.language_model.register_forward_pre_hook(on_text, with_kwargs=True)
    return counts


def test_a_chunk_runs_one_vision_pass_and_one_prefill(policy):
    policy = long_answers(policy).eval()
    script = policy.prompts.answer_ids("grasp the cube")[0]
    policy.vlm.lm_head = ScriptedHead(len(policy.tokenizer), [script])
    counts = count_passes(policy)
    _, reasoning = policy.predict_action_chunk(make_observation())
    assert reasoning.text == "grasp the cube"
    assert counts == {"vision": 1, "prefill": 1}
    policy.predict_action_chunk(make_observation(1), reasoning)
    assert counts == {"vision": 2, "prefill": 2}


def test_cached_reasoning_skips_generation(policy, monkeypatch):
    policy.eval()
    obs = make_observation()
    reasoning = policy.generate_reasoning(obs)

    def refuse(*args, **kwargs):
        raise AssertionError("decoding must not run when reasoning is given")

    monkeypatch.setattr(inference, "greedy_decode", refuse)
    actions, used = policy.predict_action_chunk(obs, reasoning=reasoning)
    assert used is reasoning and actions.shape == (50, 14)
    with pytest.raises(AssertionError, match="decoding must not run"):
        policy.predict_action_chunk(obs)


def test_cached_chunk_equals_the_old_sequence_of_passes(policy):
    """prompt pass + torch DDIM == teacher-forced encode with an empty answer + diffusers DDIM."""
    policy.eval()
    obs = make_observation()
    reasoning = policy.generate_reasoning(obs)
    new, _ = policy.predict_action_chunk(obs, reasoning, generator=torch.Generator().manual_seed(4))
    batch, embodiment = policy.processor.prepare(obs)
    with torch.no_grad():
        prompt = policy.encode(batch, embodiment, [""]).prompt
        cond = policy.fusion(prompt, reasoning.states)
        normalised = policy.diffusion.sample(
            policy.expert.denoiser(cond, batch[STATE], embodiment),
            (1, 50, 14),
            device="cpu",
            generator=torch.Generator().manual_seed(4),
        )
    old = policy.processor.unnormalize_actions(normalised.numpy(), embodiment)[0]
    np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-4)


def test_the_model_cached_rope_deltas_are_never_read(policy):
    policy.eval()
    obs = make_observation()
    reasoning = policy.generate_reasoning(obs)
    before, _ = policy.predict_action_chunk(
        obs, reasoning, generator=torch.Generator().manual_seed(0)
    )
    policy.vlm.model.rope_deltas = torch.full((5, 1), 999)  # what another call could leave there
    after, _ = policy.predict_action_chunk(
        obs, reasoning, generator=torch.Generator().manual_seed(0)
    )
    np.testing.assert_array_equal(after, before)
    assert policy.generate_reasoning(obs).text == reasoning.text


def test_async_reasoning_and_the_fast_path_share_no_state(policy):
    policy.eval()
    slow_obs, fast_obs = two_observations(), make_observation(2)
    cached = policy.generate_reasoning(fast_obs)
    slow_alone = policy.generate_reasoning(slow_obs)

    def fast():
        return policy.predict_action_chunk(fast_obs, cached, torch.Generator().manual_seed(5))[0]

    fast_alone = fast()
    slow_results, errors = [], []
    stop = threading.Event()

    def reason():
        try:
            while not stop.is_set():
                slow_results.append(policy.generate_reasoning(slow_obs))
        except Exception as error:  # surfaced below: the thread must not die silently
            errors.append(error)

    thread = threading.Thread(target=reason)
    thread.start()
    try:
        fast_results = [fast() for _ in range(12)]
    finally:
        stop.set()
        thread.join()
    assert not errors and slow_results
    for chunk in fast_results:
        np.testing.assert_array_equal(chunk, fast_alone)
    for reasoning in slow_results:
        assert reasoning.text == slow_alone.text
        torch.testing.assert_close(reasoning.states, slow_alone.states)


def denoise(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the expert: depends on the input and the timestep."""
    return torch.tanh(noisy) * 0.7 + timesteps.float()[:, None, None] / 150


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"clip_sample": False},
        {"prediction_type": "sample"},
        {"prediction_type": "v_prediction", "num_inference_steps": 7},
        {"scheduler": "dpm-solver++"},
    ],
)
def test_torch_ddim_equals_the_diffusers_sampler(changes):
    diffusion = ActionDiffusion(DiffusionConfig(**changes))
    shape = (2, 50, 14)
    expected = diffusion.sample(denoise, shape, "cpu", generator=torch.Generator().manual_seed(1))
    got = inference.sample_actions(
        diffusion,
        denoise,
        shape,
        torch.device("cpu"),
        torch.float32,
        torch.Generator().manual_seed(1),
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_torch_ddim_makes_no_host_sync(monkeypatch):
    diffusion = ActionDiffusion(DiffusionConfig())

    def refuse(*args, **kwargs):
        raise AssertionError("a host sync in the sampling loop")

    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)

    def counted(noisy, timesteps):
        calls.append(1)
        return denoise(noisy, timesteps)

    x = inference.sample_actions(
        diffusion, counted, (1, 50, 14), torch.device("cpu"), torch.float32
    )
    assert len(calls) == 10 and x.shape == (1, 50, 14)


def test_the_processor_resizes_uint8_as_uint8_and_float_as_float(policy):
    processor = policy.processor
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    resized = processor.resize(images)
    assert resized.dtype == torch.uint8 and resized.shape == (2, 3, 56, 56)
    as_float = processor.resize(images.float() / 255)
    assert as_float.dtype == torch.float32 and as_float.shape == (2, 3, 56, 56)
    # the uint8 result is the float one rounded to the nearest 1/255
    torch.testing.assert_close(resized.float() / 255, as_float, rtol=0, atol=0.5 / 255 + 1e-6)
    at_size = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    assert torch.equal(processor.resize(at_size, "cpu"), at_size)
    with pytest.raises(ValueError, match="uint8 or floating point"):
        processor.resize(at_size.to(torch.int32))


def test_batched_chunks_equal_single_ones():
    torch.manual_seed(0)
    policy = make_policy().eval()
    observations = two_observations()
    both, reasoning = policy.predict_action_chunk(observations)
    for row, obs in enumerate(observations):
        _, alone = policy.predict_action_chunk(obs)
        assert alone.text == reasoning.text[row]
        torch.testing.assert_close(alone.states[0], reasoning.states[row], rtol=1e-4, atol=1e-5)
    assert both.shape == (2, 50, 14)
