"""FiLM fusion of prompt and reasoning states."""

import pytest
import torch

from dexvla.policy.fusion import ReasoningFusion


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
