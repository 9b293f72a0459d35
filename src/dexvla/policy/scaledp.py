"""ScaleDP: the DiT-style diffusion transformer that denoises DexVLA's action chunks.

One token per action step, non-causal self-attention, and adaLN-Zero conditioning on
(diffusion timestep + VLM condition vector + robot state). Each embodiment has its own input
projection, state projection and output head on one shared trunk (the paper's multi-head
output), so one expert can be pre-trained across robots with different action sizes.

`ScaleDPConfig.layout="released"` is the authors' released ScaleDP-H / ScaleDP-L conditioning
(`combine` + `cond_obs_emb`, tanh GELU, bf16 timestep table), so their stage-1 weights load and
compute as they were trained (`dexvla.released`, docs/released.md).

Shapes: B batch, Hc action steps (<= chunk_size), A_e / S_e the embodiment's action / state
size, D width, C cond_dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dexvla.policy.scaledp_config import ScaleDPConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, in one pass: x (B, L, D), shift/scale (B, D)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> sinusoidal features -> MLP -> (B, D).

    `bf16_table` reproduces the released ScaleDP: its frequency table is computed in bfloat16
    (on the CPU, then moved) and its sinusoid features are rounded to bfloat16 before the MLP.
    """

    def __init__(self, width: int, freq_dim: int, bf16_table: bool = False) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.bf16_table = bf16_table
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def frequencies(self, device: torch.device) -> torch.Tensor:
        """(freq_dim / 2,) fp32 sinusoid frequencies: constants, so a sampler computes them once."""
        half = self.freq_dim // 2
        if self.bf16_table:  # every op rounds to bf16, as the released weights were trained
            table = torch.arange(half, dtype=torch.bfloat16) * -math.log(10000.0) / half
            return torch.exp(table).to(device, torch.float32)
        return torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=device) / half
        )

    def sinusoid(self, t: torch.Tensor, freqs: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) int or float timesteps -> (B, freq_dim) fp32 features (as in DiT / ADM)."""
        freqs = self.frequencies(t.device) if freqs is None else freqs
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor, freqs: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) timesteps -> (B, D); `freqs` from `frequencies` saves recomputing them."""
        features = self.sinusoid(t, freqs)  # (B, freq_dim) fp32
        if self.bf16_table:
            features = features.to(torch.bfloat16)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Non-causal multi-head self-attention with one fused QKV projection."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        # (B, L, 3D) -> (3, B, heads, L, D/heads)
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, L, D/heads)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. Exact erf GELU by default (on CPU ~3x cheaper than the tanh
    form); `approximate="tanh"` for the released layout, whose weights were trained with it."""

    def __init__(self, width: int, hidden: int, dropout: float, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate=self.approximate)))


class ScaleDPBlock(nn.Module):
    """adaLN-Zero transformer block: the condition sets shift, scale and gate of both halves."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, dropout: float, approximate: str = "none"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_dim, dropout, approximate)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x (B, L, D), c (B, D) -> six (B, D) modulations
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, -1)
        # Gated residuals x + gate * f(modulated norm(x)), each one fused addcmul.
        h = self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, L, D)
        x = torch.addcmul(x, gate_a.unsqueeze(1), h)
        h = self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, L, D)
        return torch.addcmul(x, gate_m.unsqueeze(1), h)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm; the per-embodiment heads read its output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)


@dataclass
class PreparedCondition:
    """One chunk's constants, shared by all its denoising steps (made by `ScaleDP.prepare`).

    `embedding` is MLP(cond ++ projected state) (B, D) and `freqs` the sinusoid frequencies;
    `checked` holds the last (noisy, timesteps) shapes that passed the input checks, and
    `pos_embed` the positional slice (1, Hc, D) for them, so a step re-checks only new shapes.
    """

    embedding: torch.Tensor
    freqs: torch.Tensor
    checked: tuple[torch.Size, ...] = ()
    pos_embed: torch.Tensor | None = None


class ScaleDP(nn.Module):
    """The action expert: predicts the noise in a noisy action chunk.

    Set `gradient_checkpointing = True` to recompute each block in the backward pass (saves
    activation memory in training; no effect in eval or under `torch.no_grad`). Call
    `compile_steps()` to run inference denoising steps through `torch.compile` (off by default).
    """

    def __init__(self, config: ScaleDPConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.compiled_step: Callable[..., torch.Tensor] | None = None
        D = config.width
        names = list(config.embodiments)
        # Per-embodiment projections in and out of the shared trunk (the released layout has
        # no state projection for an embodiment whose state is as wide as `combine` reads).
        self.action_in = nn.ModuleDict({e: nn.Linear(config.embodiments[e][0], D) for e in names})
        self.state_in = nn.ModuleDict(
            {
                e: nn.Linear(config.embodiments[e][1], config.state_embed_dim)
                for e in names
                if config.projects_state(e)
            }
        )
        self.action_out = nn.ModuleDict({e: nn.Linear(D, config.embodiments[e][0]) for e in names})
        self.pos_embed = nn.Parameter(torch.zeros(1, config.chunk_size, D))
        self.t_embedder = TimestepEmbedder(D, config.time_freq_dim, bf16_table=config.released)
        joined = config.cond_dim + config.state_embed_dim
        if config.released:
            hidden = config.combine_dim
            self.combine = nn.Sequential(
                nn.Linear(joined, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, config.cond_dim),
            )  # fmt: skip
            self.cond_obs_emb = nn.Linear(config.cond_dim, D)
        else:
            self.cond_embedder = nn.Sequential(nn.Linear(joined, D), nn.SiLU(), nn.Linear(D, D))
        gelu = "tanh" if config.released else "none"
        self.blocks = nn.ModuleList(
            ScaleDPBlock(D, config.heads, config.mlp_dim, config.dropout, gelu)
            for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: xavier linears, zero adaLN and output (every block = identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        fresh = [self.t_embedder.mlp[0], self.t_embedder.mlp[2]]
        if self.config.released:  # as the released DiT initialisation names it
            fresh.append(self.cond_obs_emb)
        for layer in fresh:
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        for head in self.action_out.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _check_condition(self, cond: torch.Tensor, state: torch.Tensor, embodiment: str) -> None:
        cfg = self.config
        if embodiment not in cfg.embodiments:
            raise ValueError(
                f"unknown embodiment {embodiment!r}; this ScaleDP has {sorted(cfg.embodiments)}"
            )
        state_dim = cfg.embodiments[embodiment][1]
        B = cond.shape[0] if cond.ndim else 0
        if cond.shape != (B, cfg.cond_dim):
            raise ValueError(f"cond: expected ({B}, {cfg.cond_dim}), got {tuple(cond.shape)}")
        if state.shape != (B, state_dim):
            raise ValueError(
                f"state: expected ({B}, {state_dim}) for {embodiment!r}, got {tuple(state.shape)}"
            )

    def _check_step(
        self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, batch: int, embodiment: str
    ) -> None:
        cfg = self.config
        action_dim = cfg.embodiments[embodiment][0]
        if noisy_actions.ndim != 3 or noisy_actions.shape[-1] != action_dim:
            raise ValueError(
                f"noisy_actions: expected (B, Hc, {action_dim}) for {embodiment!r}, "
                f"got {tuple(noisy_actions.shape)}"
            )
        B, Hc = noisy_actions.shape[:2]
        if not 1 <= Hc <= cfg.chunk_size:
            raise ValueError(f"noisy_actions: expected 1 <= Hc <= {cfg.chunk_size}, got Hc={Hc}")
        if timesteps.shape != (B,):
            raise ValueError(f"timesteps: expected ({B},), got {tuple(timesteps.shape)}")
        if batch != B:
            raise ValueError(f"noisy_actions: expected batch {batch} (the condition's), got {B}")

    def prepare(
        self, cond: torch.Tensor, state: torch.Tensor, embodiment: str
    ) -> PreparedCondition:
        """Check (cond, state) and compute the timestep-free part of the adaLN condition once:
        cond (B, C), state (B, S_e) -> MLP(cond ++ projected state) (B, D), plus constants
        (released layout: cond_obs_emb(combine(cond ++ state)))."""
        self._check_condition(cond, state, embodiment)
        dtype = self.pos_embed.dtype
        s = state.to(dtype)
        if embodiment in self.state_in:
            s = self.state_in[embodiment](s)  # (B, state_embed_dim)
        joined = torch.cat([cond.to(dtype), s], dim=-1)  # (B, C + state_embed_dim)
        if self.config.released:
            embedding = self.cond_obs_emb(self.combine(joined))  # (B, C) -> (B, D)
        else:
            embedding = self.cond_embedder(joined)  # (B, D)
        freqs = self.t_embedder.frequencies(embedding.device)  # (freq_dim / 2,)
        return PreparedCondition(embedding, freqs)

    def denoise_step(
        self,
        noisy_actions: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
        embodiment: str,
        pos_embed: torch.Tensor,
        freqs: torch.Tensor,
    ) -> torch.Tensor:
        """One denoising pass on checked inputs: (B, Hc, A_e), (B,), (B, D) from `condition`,
        pos_embed (1, Hc, D), freqs from `TimestepEmbedder.frequencies` -> noise (B, Hc, A_e)."""
        x = self.action_in[embodiment](noisy_actions.to(pos_embed.dtype))  # (B, Hc, D)
        x = x + pos_embed  # (B, Hc, D)
        c = condition + self.t_embedder(timesteps, freqs)  # (B, D)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, c, use_reentrant=False) if recompute else block(x, c)
        x = self.final_layer(x, c)  # (B, Hc, D)
        return self.action_out[embodiment](x)  # (B, Hc, A_e)

    def compile_steps(self, enabled: bool = True) -> None:
        """Run `denoise_step` through `torch.compile` in eval mode without autograd (sampling).

        The first step of each new shape compiles (tens of seconds); later chunks reuse it.
        Training and grad-enabled calls stay eager. On a 2-core CPU the tiny expert's steps take
        ~0.8x the eager time; outputs match eager to float rounding (~1e-6).
        """
        self.compiled_step = torch.compile(self.denoise_step, dynamic=False) if enabled else None

    def denoiser(
        self, cond: torch.Tensor, state: torch.Tensor, embodiment: str
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`denoise(noisy, timesteps)` for one condition, as the diffusion loss and sampler use.

        The chunk's constants (state projection, condition MLP, sinusoid frequencies, the
        positional slice) and the input checks run once, not per step. Each step is still a
        call of this module, so its hooks see every pass.
        """
        prepared = self.prepare(cond, state, embodiment)
        return lambda noisy, timesteps: self(
            noisy, timesteps, cond, state, embodiment, prepared=prepared
        )

    def forward(
        self,
        noisy_actions: torch.Tensor,
        timesteps: torch.Tensor,
        cond: torch.Tensor,
        state: torch.Tensor,
        embodiment: str,
        prepared: PreparedCondition | None = None,
    ) -> torch.Tensor:
        """(B, Hc, A_e), (B,), (B, C), (B, S_e), name -> predicted noise (B, Hc, A_e).

        `prepared` (from `prepare` on the same cond, state and embodiment) skips recomputing it.
        """
        if prepared is None:
            prepared = self.prepare(cond, state, embodiment)
        shapes = (noisy_actions.shape, timesteps.shape)
        if shapes != prepared.checked:
            self._check_step(noisy_actions, timesteps, cond.shape[0], embodiment)
            prepared.checked = shapes
            prepared.pos_embed = self.pos_embed[:, : noisy_actions.shape[1]]  # (1, Hc, D)
        sampling = not (self.training or torch.is_grad_enabled())
        step = self.compiled_step if sampling and self.compiled_step else self.denoise_step
        return step(
            noisy_actions,
            timesteps,
            prepared.embedding,
            embodiment,
            prepared.pos_embed,
            prepared.freqs,
        )
