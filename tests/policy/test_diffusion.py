"""ActionDiffusion: masked loss, samplers, fp32 scheduler arithmetic, and a tiny overfit."""

import threading

import pytest
import torch

from dexvla.policy.diffusion import SCHEDULERS, ActionDiffusion, DiffusionConfig
from dexvla.policy.scaledp import ScaleDP, ScaleDPConfig


def oracle(diffusion: ActionDiffusion, x0: torch.Tensor):
    """A denoiser that knows the clean actions: returns the exact noise for any (x_t, t)."""
    alphas = diffusion.noise_scheduler.alphas_cumprod

    def denoise(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t.round().long()].view(-1, 1, 1).to(noisy.device)
        eps = (noisy.float() - a.sqrt() * x0) / (1 - a).sqrt()
        return eps.to(noisy.dtype)

    return denoise


def tiny_expert() -> tuple[ScaleDP, torch.Tensor, torch.Tensor]:
    config = ScaleDPConfig(
        depth=2, width=64, heads=4, cond_dim=16, chunk_size=8, embodiments={"arm": (3, 2)}
    )
    return ScaleDP(config), torch.randn(4, 16), torch.randn(4, 2)


def test_config_validates_and_roundtrips():
    config = DiffusionConfig(scheduler="dpm-solver++", num_inference_steps=5)
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown scheduler"):
        DiffusionConfig(scheduler="heun-9000")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig(prediction_type="noise")
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionConfig(num_inference_steps=101)
    with pytest.raises(ValueError, match="unknown DiffusionConfig keys"):
        DiffusionConfig.from_dict({"steps": 3})


def test_masked_loss_equals_hand_computed_mean_over_valid_steps():
    diffusion = ActionDiffusion()
    actions = torch.rand(3, 6, 4) * 2 - 1
    is_pad = torch.zeros(3, 6, dtype=torch.bool)
    is_pad[0, 4:] = True
    is_pad[2, 1:] = True
    seen = {}

    def denoise(noisy, t):
        seen["noisy"], seen["t"] = noisy, t
        return torch.sin(3 * noisy)  # any deterministic prediction

    loss = diffusion.loss(denoise, actions, is_pad, generator=torch.Generator().manual_seed(1))
    a = diffusion.noise_scheduler.alphas_cumprod[seen["t"]].view(-1, 1, 1)
    noise = (seen["noisy"] - a.sqrt() * actions) / (1 - a).sqrt()
    err = (torch.sin(3 * seen["noisy"]) - noise).square().mean(-1)  # (B, Hc)
    expected = err[~is_pad].mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, err.mean())  # padded steps would change the value


def test_padded_steps_do_not_change_the_loss_or_get_gradient():
    diffusion = ActionDiffusion()
    actions = torch.rand(2, 5, 3) * 2 - 1
    is_pad = torch.tensor([[False, False, True, True, True], [False] * 4 + [True]])
    weight = torch.ones(1, requires_grad=True)

    def make(garbage: float):
        def denoise(noisy, t):
            out = noisy * weight
            return torch.where(is_pad[..., None], torch.full_like(out, garbage) * weight, out)

        return denoise

    losses = []
    for garbage in (0.0, 1e3):
        g = torch.Generator().manual_seed(7)
        losses.append(diffusion.loss(make(garbage), actions, is_pad, generator=g))
    torch.testing.assert_close(losses[0], losses[1])
    losses[1].backward()
    assert weight.grad.abs() < 1e2  # a 1e3 error on padded steps would dominate the gradient


def test_all_padded_batch_and_bad_mask_raise():
    diffusion = ActionDiffusion()
    actions = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="every action step"):
        diffusion.loss(lambda x, t: x, actions, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"action_is_pad: expected \(2, 5\)"):
        diffusion.loss(lambda x, t: x, actions, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        diffusion.loss(lambda x, t: x, actions, torch.zeros(2, 5))


def test_loss_reads_no_value_back_from_the_device():
    # on `meta` tensors any read of a value (.item(), bool(), float()) raises: the loss, which
    # runs on the training step's critical path, must not wait for the device
    actions = torch.zeros(4, 6, 3, device="meta")
    is_pad = torch.zeros(4, 6, dtype=torch.bool, device="meta")
    loss = ActionDiffusion().loss(lambda x, t: 2 * x, actions, is_pad)
    assert loss.shape == () and loss.device.type == "meta"


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_targets(prediction_type):
    diffusion = ActionDiffusion(DiffusionConfig(prediction_type=prediction_type))
    actions = torch.rand(2, 5, 3) * 2 - 1
    loss = diffusion.loss(lambda x, t: torch.zeros_like(x), actions)
    assert loss.isfinite() and loss > 0
    if prediction_type == "sample":
        torch.testing.assert_close(loss, actions.square().mean())


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_sampler_recovers_actions_from_an_exact_denoiser(scheduler):
    diffusion = ActionDiffusion(DiffusionConfig(scheduler=scheduler))
    x0 = torch.rand(2, 6, 3) * 1.6 - 0.8
    out = diffusion.sample(
        oracle(diffusion, x0), (2, 6, 3), "cpu", generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (2, 6, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_sampling_untrained_model_is_finite_and_clipped(scheduler):
    model, cond, state = tiny_expert()
    diffusion = ActionDiffusion(DiffusionConfig(scheduler=scheduler, num_inference_steps=4))
    out = diffusion.sample(
        lambda x, t: model(x, t, cond, state, "arm"),
        (4, 8, 3),
        "cpu",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.isfinite().all()
    assert out.abs().max() <= 1.0


def test_sampling_is_reproducible_and_calls_do_not_share_scheduler_state():
    diffusion = ActionDiffusion(DiffusionConfig(scheduler="dpm-solver++"))
    x0 = torch.rand(1, 4, 2) * 2 - 1
    noisy_model = lambda x, t: oracle(diffusion, x0)(x, t) + 0.3 * torch.cos(x)  # noqa: E731

    def run(seed: int, steps: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return diffusion.sample(
            noisy_model, (1, 4, 2), "cpu", generator=g, num_inference_steps=steps
        )

    expected = {steps: run(0, steps) for steps in (3, 10)}
    assert not torch.allclose(expected[3], expected[10])
    torch.testing.assert_close(run(0, 10), expected[10])
    results: dict[int, torch.Tensor] = {}
    threads = [
        threading.Thread(target=lambda s=s: results.__setitem__(s, run(0, s))) for s in (3, 10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for steps in (3, 10):
        torch.testing.assert_close(results[steps], expected[steps])


def test_bf16_model_keeps_scheduler_in_fp32():
    diffusion = ActionDiffusion()
    x0 = torch.rand(2, 6, 3) * 1.6 - 0.8
    seen_dtypes = set()
    exact = oracle(diffusion, x0)

    def bf16_model(noisy, t):
        seen_dtypes.add(noisy.dtype)
        return exact(noisy, t).to(torch.bfloat16)

    out = diffusion.sample(bf16_model, (2, 6, 3), "cpu", dtype=torch.bfloat16)
    assert seen_dtypes == {torch.bfloat16}
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    torch.testing.assert_close(out.float(), x0, atol=0.05, rtol=0)


def test_tiny_scaledp_samples_under_bf16_autocast():
    model, cond, state = tiny_expert()
    diffusion = ActionDiffusion(DiffusionConfig(num_inference_steps=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = diffusion.sample(
            lambda x, t: model(x, t, cond[:1], state[:1], "arm"),
            (1, 8, 3),
            "cpu",
            dtype=torch.bfloat16,
        )
    assert out.dtype == torch.bfloat16 and out.isfinite().all() and out.abs().max() <= 1


def test_tiny_scaledp_overfits_one_batch():
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    torch.manual_seed(0)
    model, cond, state = tiny_expert()
    diffusion = ActionDiffusion()
    actions = torch.rand(4, 8, 3) * 2 - 1
    is_pad = torch.zeros(4, 8, dtype=torch.bool)
    is_pad[1, 6:] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(250):
        loss = diffusion.loss(lambda x, t: model(x, t, cond, state, "arm"), actions, is_pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.4 * first, f"loss {first:.3f} -> {last:.3f}"
