"""Qwen2-VL's vision tower at hardware speed: the same weights and results, fewer kernels.

Upstream's vision attention (outside flash attention) runs one SDPA call per image per layer,
and its patch embedding is a Conv3d whose kernel equals its stride. `batch_vision_tower` swaps
in thin subclasses that compute the same thing as one batched SDPA call and one GEMM; every
image the policy feeds the tower has one size (`dexvla.policy.vlm.ImageEncoder`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    PatchEmbed,
    VisionAttention,
    apply_rotary_pos_emb_vision,
)


class BatchedVisionAttention(VisionAttention):
    """Qwen2-VL's vision attention in one SDPA call over all images, which are one size.

    Upstream (non-flash) splits the packed sequence at `cu_seqlens` and calls SDPA once per image
    per layer; here the images are one batch (N_img, heads, S, head_dim). Other attention
    implementations (flash varlen, eager) and packs whose length does not divide evenly run
    upstream's code. The equal lengths are checked on the device (no host synchronisation).
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_seqlen: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        tokens, n_images = hidden_states.shape[0], cu_seqlens.numel() - 1
        if self.config._attn_implementation != "sdpa" or tokens % n_images:
            return super().forward(
                hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
            )
        length = tokens // n_images
        torch._assert_async(
            (cu_seqlens.diff() == length).all(), "BatchedVisionAttention: images of one size only"
        )
        qkv = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3)
        query, key, value = qkv.unbind(0)  # (tokens, heads, head_dim) each
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        query, key, value = (
            x.view(n_images, length, self.num_heads, -1).transpose(1, 2)
            for x in (query, key, value)
        )  # (N_img, heads, S, head_dim)
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(tokens, -1))  # (tokens, dim)


class LinearPatchEmbed(PatchEmbed):
    """Qwen2-VL's patch embedding as the matrix product it is: its Conv3d's kernel equals its
    stride, so one GEMM gives the same result (a 3-D convolution is slow, backward especially).

    It takes upstream's patches (3 * T * 14 * 14 values, T = 2 identical frames) or one frame
    per patch (3 * 14 * 14, `ImageEncoder`'s default): every temporal tap of the kernel then
    sees that frame, so the kernel summed over time gives the same product at half the work.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight  # (D, C, T, P, P)
        if hidden_states.shape[-1] * self.temporal_patch_size == weight[0].numel():
            weight = weight.sum(2)  # (D, C, P, P): one frame per patch
        flat = hidden_states.to(weight.dtype).view(-1, weight[0].numel())  # (patches, C*[T]*P*P)
        return F.linear(flat, weight.flatten(1))  # (patches, D)


def batch_vision_tower(model: Qwen2VL) -> Qwen2VL:
    """Give `model`'s vision tower `BatchedVisionAttention` and `LinearPatchEmbed` in place.

    Only the classes change (no parameter or state-dict key does), so checkpoints are unchanged.
    """
    visual = model.model.visual
    visual.patch_embed.__class__ = LinearPatchEmbed
    for block in visual.blocks:
        block.attn.__class__ = BatchedVisionAttention
    return model
