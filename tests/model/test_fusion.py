"""FiLM fusion of prompt and reasoning states."""

import pytest
import torch

from dexvla.model.fusion import PromptPooling, ReasoningFusion
from dexvla.model.vlm import masked_mean


def test_fusion_shapes_and_film_starts_neutral():
    fusion = ReasoningFusion(vlm_dim=32, cond_dim=32)
    prompt, reasoning = torch.randn(3, 32), torch.randn(3, 32)
    out = fusion(prompt, reasoning)
    assert out.shape == (3, 32)
    # zero-initialised scale and shift: the sub-step does not change the condition at init
    torch.testing.assert_close(out, fusion(prompt, torch.randn(3, 32)))
    # identity skip when widths match
    torch.testing.assert_close(out - fusion.prompt_proj(prompt), prompt)


def test_fusion_uses_reasoning_once_trained():
    fusion = ReasoningFusion(vlm_dim=16, cond_dim=8)
    torch.nn.init.normal_(fusion.film_scale.weight)
    prompt = torch.randn(2, 16)
    a = fusion(prompt, torch.randn(2, 16))
    b = fusion(prompt, torch.randn(2, 16))
    assert a.shape == (2, 8)
    assert not torch.allclose(a, b)


def test_fusion_rejects_mismatched_inputs():
    fusion = ReasoningFusion(vlm_dim=16, cond_dim=8)
    with pytest.raises(ValueError, match="same shape"):
        fusion(torch.randn(2, 16), torch.randn(3, 16))


def test_mean_pooling_is_the_masked_mean_and_has_no_parameters():
    pool = PromptPooling(16, "mean")
    hidden, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask), masked_mean(hidden, mask))
    assert not list(pool.parameters())


def test_attention_pooling_starts_at_the_mean_then_reads_selected_prompt_tokens():
    torch.manual_seed(0)
    pool = PromptPooling(16, "attention", heads=4)
    hidden, mask = torch.randn(2, 6, 16), torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask), masked_mean(hidden, mask))
    pool(hidden, mask).square().sum().backward()
    assert pool.attention.out_proj.weight.grad.abs().sum() > 0  # it can learn from the start
    torch.nn.init.normal_(pool.attention.out_proj.weight)
    out = pool(hidden, mask)
    assert not torch.allclose(out, masked_mean(hidden, mask))
    changed = hidden.clone()
    changed[0, 3:], changed[1, 5] = 100.0, -100.0  # positions outside the prompt
    torch.testing.assert_close(pool(changed, mask), out)
    empty = pool(hidden, torch.zeros(2, 6, dtype=torch.long))
    assert torch.isfinite(empty).all()


def test_unknown_pooling_and_indivisible_width_are_refused():
    with pytest.raises(ValueError, match="one of"):
        PromptPooling(16, "max")
    with pytest.raises(ValueError, match="divisible"):
        PromptPooling(18, "attention", heads=4)
