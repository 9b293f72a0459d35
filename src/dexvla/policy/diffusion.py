"""The diffusion process around the action expert: a masked training loss and a sampler.

Schedulers come from `diffusers`, configured by name. All of them share one forward (noising)
process, set by the betas, so training adds noise with `DDPMScheduler.add_noise` whatever
sampler is picked; the sampler only changes inference. The scheduler arithmetic always runs
in fp32 (the model may run in bf16): keeping alphas and betas in bf16 is what gives NaN actions
at the last DDIM step in the released code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from dexvla.schema import check_known_fields

# name -> (scheduler class, extra constructor arguments)
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# denoise_fn(noisy (B, Hc, A), timesteps (B,)) -> model output (B, Hc, A)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DiffusionConfig:
    """The paper's defaults: DDIM, 100 training steps, squaredcos betas, 10 sampling steps."""

    scheduler: str = "ddim"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    num_inference_steps: int = 10

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; known: {sorted(SCHEDULERS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown beta_schedule {self.beta_schedule!r}; known: {list(BETA_SCHEDULES)}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {self.prediction_type!r}; known: {list(PREDICTION_TYPES)}"
            )
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], "
                f"got {self.num_inference_steps}"
            )
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {self.clip_sample_range}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        check_known_fields(cls, data)
        return cls(**data)


def make_scheduler(config: DiffusionConfig) -> SchedulerMixin:
    """A new sampling scheduler for `config`; each `ActionDiffusion.sample` call uses its own,
    so calls never share state."""
    cls, extra = SCHEDULERS[config.scheduler]
    kwargs: dict[str, Any] = {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction_type,
        **extra,
    }
    accepted = inspect.signature(cls.__init__).parameters
    if "clip_sample" in accepted:
        kwargs["clip_sample"] = config.clip_sample
        kwargs["clip_sample_range"] = config.clip_sample_range
    return cls(**kwargs)


class ActionDiffusion:
    """Masked denoising loss for training and a fresh-scheduler-per-call sampler."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        cfg = self.config
        # Used only for its stateless noising (`add_noise`, `get_velocity`).
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
            prediction_type=cfg.prediction_type,
        )

    def loss(
        self,
        denoise_fn: DenoiseFn,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """MSE of the model output against its target, averaged over valid action steps only.

        actions (B, Hc, A) in [-1, 1]; action_is_pad (B, Hc) bool, True where a step is
        padding (None: no padding). Padded steps contribute neither to the sum nor to the count.
        A batch with every step padded carries no action to learn from and means the data
        pipeline is broken: a mask on the CPU raises ValueError; on an accelerator, where the
        check would wait for the device, the loss is NaN (0 / 0) for the trainer's finite-loss
        check to stop on. Nothing here reads a device value back to the host.
        """
        if actions.ndim != 3:
            raise ValueError(f"actions: expected (B, Hc, A), got {tuple(actions.shape)}")
        B, Hc, _ = actions.shape
        if action_is_pad is None:
            action_is_pad = torch.zeros(B, Hc, dtype=torch.bool, device=actions.device)
        if action_is_pad.shape != (B, Hc):
            raise ValueError(
                f"action_is_pad: expected ({B}, {Hc}), got {tuple(action_is_pad.shape)}"
            )
        if action_is_pad.dtype != torch.bool:
            raise ValueError(f"action_is_pad: expected a bool tensor, got {action_is_pad.dtype}")
        valid = (~action_is_pad).float()  # (B, Hc)
        n_valid = valid.sum()
        if n_valid.device.type == "cpu" and not n_valid:
            raise ValueError("every action step in the batch is padding (action_is_pad all True)")

        rng_device = generator.device if generator is not None else actions.device
        x0 = actions.float()
        noise = torch.randn(x0.shape, generator=generator, device=rng_device).to(x0.device)
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (B,), generator=generator, device=rng_device
        ).to(x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)  # (B, Hc, A) fp32

        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = x0
        else:
            target = self.noise_scheduler.get_velocity(x0, noise, timesteps)
        pred = denoise_fn(noisy, timesteps).float()
        if pred.shape != target.shape:
            raise ValueError(f"denoise_fn: expected output {tuple(target.shape)}, got {pred.shape}")
        per_step = F.mse_loss(pred, target, reduction="none").mean(dim=-1)  # (B, Hc)
        return (per_step * valid).sum() / n_valid

    @torch.no_grad()
    def sample(
        self,
        denoise_fn: DenoiseFn,
        shape: tuple[int, ...],
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
    ) -> torch.Tensor:
        """Denoise pure noise of `shape` (B, Hc, A) into actions of `dtype`.

        The model sees its input in `dtype`; its output is cast to fp32 before the scheduler
        step, and the running sample stays fp32 until the return. With `clip_sample` the result
        is clamped to the clip range (schedulers without clipping are clamped here).
        """
        steps = num_inference_steps or self.config.num_inference_steps
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.config.num_train_timesteps}], "
                f"got {steps}"
            )
        if len(shape) != 3:
            raise ValueError(f"shape: expected (B, Hc, A), got {shape}")
        device = torch.device(device)
        scheduler = make_scheduler(self.config)
        scheduler.set_timesteps(steps, device=device)
        step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters

        rng_device = generator.device if generator is not None else device
        x = torch.randn(shape, generator=generator, device=rng_device, dtype=torch.float32)
        x = x.to(device) * scheduler.init_noise_sigma  # (B, Hc, A) fp32
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t).to(dtype)
            t_batch = t.expand(shape[0]).to(device)
            out = denoise_fn(model_in, t_batch).float()
            extra = {"generator": generator} if step_takes_generator else {}
            x = scheduler.step(out, t, x, **extra).prev_sample
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x = x.clamp(-r, r)
        return x.to(dtype)
