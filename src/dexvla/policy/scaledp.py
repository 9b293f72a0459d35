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


def adaln_parts(
    modulation: torch.Tensor, count: int, scales: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """adaLN output (N, count * D) -> `count` tensors (N, 1, D) that broadcast over the token
    axis, with 1 added to the `scales` entries, so x * (1 + scale) + shift is one addcmul."""
    parts = modulation.unsqueeze(1).chunk(count, dim=-1)
    return tuple(1 + part if i in scales else part for i, part in enumerate(parts))


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
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))
        return F.dropout(h, self.dropout, self.training) if self.dropout else h


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
        """x (B, L, D), condition c (B, D) -> (B, L, D)."""
        return self.modulated(x, self.parts(self.adaLN_modulation(c)))

    @staticmethod
    def parts(modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """adaLN output (N, 6D) -> shift, 1 + scale, gate of attention and MLP, each (N, 1, D)."""
        return adaln_parts(modulation, 6, scales=(1, 4))

    def modulated(self, x: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x (B, L, D) with this block's adaLN `parts` already computed."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = parts  # (B, 1, D) each
        # Modulation and gated residual x + gate * f(...), each one fused addcmul.
        h = self.attn(torch.addcmul(shift_a, self.norm1(x), scale_a))  # (B, L, D)
        x = torch.addcmul(x, gate_a, h)
        h = self.mlp(torch.addcmul(shift_m, self.norm2(x), scale_m))  # (B, L, D)
        return torch.addcmul(x, gate_m, h)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm; the per-embodiment heads read its output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.parts(self.adaLN_modulation(c)))

    @staticmethod
    def parts(modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """adaLN output (N, 2D) -> shift, 1 + scale, each (N, 1, D)."""
        return adaln_parts(modulation, 2, scales=(1,))

    def modulated(self, x: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x (B, L, D) with the adaLN `parts` already computed."""
        shift, scale = parts
        return torch.addcmul(shift, self.norm(x), scale)


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


@dataclass
class StepModulation:
    """Every adaLN input of one denoising step, split into (B, 1, D) parts: six per block
    (`ScaleDPBlock.parts`), two for the final layer.

    They depend on the condition and the timestep alone, so a sampler that knows its schedule
    computes all its steps' at once (`Denoiser.steps`): one matmul per block reads its weights
    once per chunk, not once per step.
    """

    blocks: list[tuple[torch.Tensor, ...]]
    final: tuple[torch.Tensor, ...]


class ScaleDP(nn.Module):
    """The action expert: predicts the noise in a noisy action chunk.

    Set `gradient_checkpointing = True` to recompute each block in the backward pass (saves
    activation memory in training; no effect in eval or under `torch.no_grad`). Call
    `compile_steps()` to run inference denoising steps through `torch.compile` (off by default).
    `denoiser` gives the per-condition function the diffusion loss and the samplers call.
    """

    def __init__(self, config: ScaleDPConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.compiled_trunk: Callable[..., torch.Tensor] | None = None
        self.compile_training = False
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

    def prepare(
        self, cond: torch.Tensor, state: torch.Tensor, embodiment: str
    ) -> PreparedCondition:
        """Check (cond, state) and compute the timestep-free part of the adaLN condition once:
        cond (B, C), state (B, S_e) -> MLP(cond ++ projected state) (B, D), plus constants
        (released layout: cond_obs_emb(combine(cond ++ state)))."""
        self.config.check_condition(tuple(cond.shape), tuple(state.shape), embodiment)
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

    def modulations(self, c: torch.Tensor) -> StepModulation:
        """Condition + timestep embedding c (N, D) -> every block's and the final layer's adaLN
        parts for those N rows."""
        blocks = [block.parts(block.adaLN_modulation(c)) for block in self.blocks]
        return StepModulation(blocks, self.final_layer.parts(self.final_layer.adaLN_modulation(c)))

    def schedule_modulations(
        self, prepared: PreparedCondition, timesteps: torch.Tensor
    ) -> list[StepModulation]:
        """A whole sampling schedule's adaLN parts at once: timesteps (T, B) -> T steps'."""
        T, B = timesteps.shape
        t_emb = self.t_embedder(timesteps.flatten(), prepared.freqs).view(T, B, -1)  # (T, B, D)
        every = self.modulations((prepared.embedding + t_emb).flatten(0, 1))  # rows T * B

        def per_step(parts: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
            # each part (T * B, 1, D) -> T steps of (B, 1, D)
            return list(zip(*(part.view(T, B, 1, -1).unbind(0) for part in parts), strict=True))

        blocks = [per_step(parts) for parts in every.blocks]
        final = per_step(every.final)
        return [StepModulation([b[k] for b in blocks], final[k]) for k in range(T)]

    def trunk(
        self,
        noisy_actions: torch.Tensor,
        modulation: StepModulation,
        embodiment: str,
        pos_embed: torch.Tensor,
    ) -> torch.Tensor:
        """One denoising pass on checked inputs with its adaLN outputs: (B, Hc, A_e), the step's
        `StepModulation`, pos_embed (1, Hc, D) -> the prediction (B, Hc, A_e)."""
        x = self.action_in[embodiment](noisy_actions.to(pos_embed.dtype))  # (B, Hc, D)
        x = x + pos_embed  # (B, Hc, D)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block, mod in zip(self.blocks, modulation.blocks, strict=True):
            if recompute:
                x = checkpoint(block.modulated, x, mod, use_reentrant=False)
            else:
                x = block.modulated(x, mod)
        x = self.final_layer.modulated(x, modulation.final)  # (B, Hc, D)
        return self.action_out[embodiment](x)  # (B, Hc, A_e)

    def compile_steps(self, enabled: bool = True, training: bool = False) -> None:
        """Run the denoising trunk through `torch.compile` when sampling (eval mode, no
        autograd), and with `training` in training steps too (forward and backward).

        The first step of each new shape compiles (tens of seconds); later steps reuse it. On a
        2-core CPU the tiny expert's sampling steps take ~0.8x the eager time; a tiny stage-2
        training step ran 1.08x faster at 1 thread and within noise of eager at 2. Outputs
        match eager to float rounding (~1e-6).
        """
        self.compiled_trunk = torch.compile(self.trunk, dynamic=False) if enabled else None
        self.compile_training = enabled and training

    def denoiser(self, cond: torch.Tensor, state: torch.Tensor, embodiment: str) -> Denoiser:
        """`denoise(noisy, timesteps)` for one condition, as the diffusion loss and sampler use.

        The chunk's constants (state projection, condition MLP, sinusoid frequencies, the
        positional slice) and the input checks run once, not per step. Each step is still a
        call of this module, so its hooks see every pass.
        """
        return Denoiser(self, cond, state, embodiment)

    def forward(
        self,
        noisy_actions: torch.Tensor,
        timesteps: torch.Tensor,
        cond: torch.Tensor,
        state: torch.Tensor,
        embodiment: str,
        prepared: PreparedCondition | None = None,
        modulation: StepModulation | None = None,
    ) -> torch.Tensor:
        """(B, Hc, A_e), (B,), (B, C), (B, S_e), name -> predicted noise (B, Hc, A_e).

        `prepared` (from `prepare` on the same cond, state and embodiment) skips recomputing it;
        `modulation` (from `schedule_modulations` for these timesteps) skips the timestep
        embedding and the adaLN projections.
        """
        if prepared is None:
            prepared = self.prepare(cond, state, embodiment)
        shapes = (noisy_actions.shape, timesteps.shape)
        if shapes != prepared.checked:
            self.config.check_step(
                tuple(noisy_actions.shape), tuple(timesteps.shape), cond.shape[0], embodiment
            )
            prepared.checked = shapes
            prepared.pos_embed = self.pos_embed[:, : noisy_actions.shape[1]]  # (1, Hc, D)
        if modulation is None:
            c = prepared.embedding + self.t_embedder(timesteps, prepared.freqs)  # (B, D)
            modulation = self.modulations(c)
        sampling = not (self.training or torch.is_grad_enabled())
        use_compiled = self.compiled_trunk is not None and (sampling or self.compile_training)
        trunk = self.compiled_trunk if use_compiled else self.trunk
        return trunk(noisy_actions, modulation, embodiment, prepared.pos_embed)


class Denoiser:
    """One condition's denoising function: `denoise(noisy (B, Hc, A_e), timesteps (B,))`.

    `steps(timesteps)` serves a sampler that knows its whole schedule: the T steps' adaLN
    outputs come from one batched pass (`ScaleDP.schedule_modulations`) and each returned
    function runs only the trunk. Every step is a call of the module, as with `__call__`.
    """

    def __init__(
        self, model: ScaleDP, cond: torch.Tensor, state: torch.Tensor, embodiment: str
    ) -> None:
        self.model = model
        self.inputs = (cond, state, embodiment)
        self.prepared = model.prepare(cond, state, embodiment)

    def __call__(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.model(noisy_actions, timesteps, *self.inputs, prepared=self.prepared)

    def steps(self, timesteps: torch.Tensor) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """timesteps (T, B), the schedule in sampling order -> T functions noisy -> prediction."""
        modulations = self.model.schedule_modulations(self.prepared, timesteps)

        def step(t: torch.Tensor, modulation: StepModulation) -> Callable:
            return lambda noisy: self.model(
                noisy, t, *self.inputs, prepared=self.prepared, modulation=modulation
            )

        return [step(t, m) for t, m in zip(timesteps, modulations, strict=True)]
