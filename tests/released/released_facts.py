"""A released-layout stage-1 checkpoint built from the facts of the authors' ScaleDP.

Key layout and shapes as released (`noise_pred_net.` under `policy.`, beside image-backbone
keys), random weights, and an independent functional forward written from the same facts
(combine MLP with ReLU -> cond_obs_emb, a bfloat16 frequency table, tanh-GELU blocks), so the
project's loader and layout are checked against the facts, not against themselves.
"""

import math

import torch
import torch.nn.functional as F

SIZES = dict(depth=2, width=32, action=14, state=14, cond=24, horizon=10, freq=256, hidden=1024)


def released_weights(
    depth: int = 2,
    width: int = 32,
    action: int = 14,
    state: int = 14,
    cond: int = 24,
    horizon: int = 10,
    freq: int = 256,
    hidden: int = 1024,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Expert tensors under their released names (no prefix), random and non-zero."""
    g = torch.Generator().manual_seed(seed)

    def linear(name: str, fan_out: int, fan_in: int) -> dict[str, torch.Tensor]:
        scale = 1 / math.sqrt(fan_in)
        return {
            f"{name}.weight": torch.randn(fan_out, fan_in, generator=g) * scale,
            f"{name}.bias": torch.randn(fan_out, generator=g) * 0.1,
        }

    w: dict[str, torch.Tensor] = {"pos_embed": torch.randn(1, horizon, width, generator=g) * 0.1}
    w |= linear("combine.0", hidden, cond + state)
    w |= linear("combine.2", hidden, hidden)
    w |= linear("combine.4", cond, hidden)
    w |= linear("x_embedder", width, action)
    w |= linear("t_embedder.mlp.0", width, freq)
    w |= linear("t_embedder.mlp.2", width, width)
    w |= linear("cond_obs_emb", width, cond)
    for i in range(depth):
        w |= linear(f"blocks.{i}.attn.qkv", 3 * width, width)
        w |= linear(f"blocks.{i}.attn.proj", width, width)
        w |= linear(f"blocks.{i}.mlp.fc1", 4 * width, width)
        w |= linear(f"blocks.{i}.mlp.fc2", width, 4 * width)
        w |= linear(f"blocks.{i}.adaLN_modulation.1", 6 * width, width)
    w |= linear("final_layer.linear", action, width)
    w |= linear("final_layer.adaLN_modulation.1", 2 * width, width)
    return w


def released_forward(
    w: dict[str, torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    state: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """The released model_forward, written functionally from the facts (fp32 weights)."""

    def lin(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, w[f"{name}.weight"], w[f"{name}.bias"])

    def modulate(h, shift, scale):
        return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    g = torch.cat([cond, state], dim=-1)
    g = lin("combine.4", F.relu(lin("combine.2", F.relu(lin("combine.0", g)))))
    half = w["t_embedder.mlp.0.weight"].shape[1] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.bfloat16) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], -1).to(torch.bfloat16).float()
    temb = lin("t_embedder.mlp.2", F.silu(lin("t_embedder.mlp.0", t_freq)))
    c = temb + lin("cond_obs_emb", g)
    h = lin("x_embedder", x) + w["pos_embed"]
    B, N, D = h.shape
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    for i in range(depth):
        mods = lin(f"blocks.{i}.adaLN_modulation.1", F.silu(c)).chunk(6, dim=1)
        y = modulate(F.layer_norm(h, (D,), eps=1e-6), mods[0], mods[1])
        q, k, v = lin(f"blocks.{i}.attn.qkv", y).reshape(B, N, 3, heads, D // heads).unbind(2)
        att = torch.softmax(
            q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / math.sqrt(D // heads), -1
        )
        y = (att @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, D)
        h = h + mods[2].unsqueeze(1) * lin(f"blocks.{i}.attn.proj", y)
        y = modulate(F.layer_norm(h, (D,), eps=1e-6), mods[3], mods[4])
        y = lin(f"blocks.{i}.mlp.fc2", F.gelu(lin(f"blocks.{i}.mlp.fc1", y), approximate="tanh"))
        h = h + mods[5].unsqueeze(1) * y
    shift, scale = lin("final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
    return lin("final_layer.linear", modulate(F.layer_norm(h, (D,), eps=1e-6), shift, scale))


def as_file_dict(weights: dict[str, torch.Tensor], backbone: bool = True) -> dict:
    """The `['nets']['nets']` dict: `policy.noise_pred_net.*` plus backbone tensors."""
    nets = {f"policy.noise_pred_net.{k}": v for k, v in weights.items()}
    if backbone:
        nets["policy.backbones.0.conv1.weight"] = torch.randn(8, 3, 3, 3)
        nets["policy.backbones.0.bn1.running_mean"] = torch.zeros(8)
    return nets
