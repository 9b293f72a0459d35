"""Reasoning fusion: pooled VLM states -> one global condition vector for ScaleDP.

cond = P(prompt) * (1 + scale(R(reasoning))) + shift(R(reasoning)) + skip(prompt)

P and R are the paper's projectors (Linear-LayerNorm-GELU-Linear). FiLM's scale and shift are
zero-initialised, so at initialisation the sub-step does not change the condition and training
starts from the prompt path alone. The skip is the identity when the VLM width equals the
condition width (Qwen2-VL-2B: 1536 = ScaleDP's cond_dim), else a linear map.
"""

from __future__ import annotations

import torch
from torch import nn


def projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-LayerNorm-GELU-Linear, as the paper describes the projector."""
    return nn.Sequential(
        nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
    )


class ReasoningFusion(nn.Module):
    """FiLM fusion of pooled prompt states (action tokens) with pooled reasoning-token states.

    `vlm_dim` is the width of the pooled states it takes, `cond_dim` that of the condition.
    """

    def __init__(self, vlm_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.vlm_dim = vlm_dim
        self.cond_dim = cond_dim
        self.prompt_proj = projector(vlm_dim, cond_dim)
        self.reasoning_proj = projector(vlm_dim, cond_dim)
        self.film_scale = nn.Linear(cond_dim, cond_dim)
        self.film_shift = nn.Linear(cond_dim, cond_dim)
        for layer in (self.film_scale, self.film_shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.skip = nn.Identity() if vlm_dim == cond_dim else nn.Linear(vlm_dim, cond_dim)

    def forward(self, prompt: torch.Tensor, reasoning: torch.Tensor) -> torch.Tensor:
        """prompt, reasoning: (B, vlm_dim) pooled states -> condition (B, cond_dim)."""
        if prompt.shape != reasoning.shape:
            raise ValueError(
                f"pooled prompt {tuple(prompt.shape)} and reasoning {tuple(reasoning.shape)} "
                "states must have the same shape"
            )
        x = self.prompt_proj(prompt)  # (B, C)
        r = self.reasoning_proj(reasoning)  # (B, C)
        return x * (1 + self.film_scale(r)) + self.film_shift(r) + self.skip(prompt)
