"""Reasoning fusion: pooled VLM states -> one global condition vector for ScaleDP.

cond = P(prompt) * (1 + scale(R(reasoning))) + shift(R(reasoning)) + skip(prompt)

P and R are the paper's projectors (Linear-LayerNorm-GELU-Linear). FiLM's scale and shift are
zero-initialised, so at initialisation the sub-step does not change the condition and training
starts from the prompt path alone. The skip is the identity when the VLM width equals the
condition width (Qwen2-VL-2B: 1536 = ScaleDP's cond_dim), else a linear map.

`PromptPooling` turns the prompt's hidden states into the vector `prompt`: the paper's mean, or
(`"attention"`, this project's option) the mean plus a learned query's attention read-out, so a
few tokens that see the object can dominate instead of being averaged with every other one.
"""

from __future__ import annotations

import torch
from torch import nn

from dexvla.model.vlm import masked_mean

POOLINGS = ("mean", "attention")


class PromptPooling(nn.Module):
    """Prompt hidden states (B, L, D) and mask (B, L) -> (B, D).

    `"mean"`: the masked mean (the paper's, no parameters). `"attention"`: the masked mean plus
    multi-head attention from one learned query; its output projection starts at zero, so a
    fresh pooling equals the mean and training adds the tokens worth reading.
    """

    def __init__(self, dim: int, kind: str = "mean", heads: int = 4) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"prompt pooling must be one of {POOLINGS}, got {kind!r}")
        if dim % heads:
            raise ValueError(f"prompt pooling: width {dim} is not divisible by {heads} heads")
        self.kind = kind
        if kind == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            nn.init.zeros_(self.attention.out_proj.weight)
            nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = masked_mean(hidden, mask)  # (B, D)
        if self.kind == "mean":
            return pooled
        query = self.query.to(hidden.dtype).expand(hidden.shape[0], -1, -1)  # (B, 1, D)
        ignore = ~mask.bool()
        ignore[:, 0] &= mask.bool().any(1)  # a row without prompt tokens attends to position 0
        read, _ = self.attention(query, hidden, hidden, key_padding_mask=ignore, need_weights=False)
        return pooled + read[:, 0]


def projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-LayerNorm-GELU-Linear, as the paper describes the projector."""
    return nn.Sequential(
        nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
    )


class ReasoningFusion(nn.Module):
    """FiLM fusion of pooled prompt states (action tokens) with pooled reasoning-token states."""

    def __init__(self, vlm_dim: int, cond_dim: int) -> None:
        super().__init__()
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
