"""dice-t learns a toy two-class dataset with the hybrid loss, and samples from it."""
import pytest
import torch

from dice_core.diffusion import create_diffusion, sample_with_scheduler
from dice_core.ema import create_ema
from dice_core.models import build_model

SIZE = 8


def toy_batch(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Class 0: bright left half, dark right half; class 1: the mirror image."""
    x = torch.full((len(labels), 1, SIZE, SIZE), -0.8)
    x[:, :, :, : SIZE // 2] = 0.8
    x[labels == 1] = x[labels == 1].flip(-1)
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def fixed_loss(model, diffusion, generator_seed: int = 123) -> float:
    generator = torch.Generator().manual_seed(generator_seed)
    y = torch.arange(64) % 2
    x0 = toy_batch(y, generator)
    t = torch.linspace(50, 950, 64).long()
    noise = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        return diffusion.training_losses(model, x0, t, {"y": y}, noise)["loss"].mean().item()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = build_model("dice-t", in_channels=1, input_size=SIZE, num_classes=2)
    diffusion = create_diffusion()
    ema = create_ema(model, decay=0.97, warmup=False)   # a horizon of ~30 of the 150 steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0)
    generator = torch.Generator().manual_seed(1)
    before = fixed_loss(model, diffusion)
    for _ in range(150):
        y = torch.randint(0, 2, (32,), generator=generator)
        x0 = toy_batch(y, generator)
        t = torch.randint(0, diffusion.num_timesteps, (32,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = diffusion.training_losses(model, x0, t, {"y": y}, noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
    return model, ema.module, diffusion, before


@pytest.mark.slow          # the module's 150 training steps
def test_training_lowers_the_loss_clearly(trained):
    model, _, diffusion, before = trained
    after = fixed_loss(model, diffusion)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("sampler", ["ddpm-50", "ddim-20", "dpm-solver-10"])
def test_samples_have_the_right_shape_no_nan_and_look_like_the_data(trained, sampler):
    _, ema_model, _, _ = trained
    generator = torch.Generator().manual_seed(7)
    y = torch.tensor([0] * 8 + [1] * 8)
    shape = (16, 1, SIZE, SIZE)
    kind, steps = sampler.rsplit("-", 1)
    with torch.no_grad():
        if kind == "ddpm":
            samples = create_diffusion(steps).p_sample_loop(
                ema_model, shape, model_kwargs={"y": y}, generator=generator)
        else:
            samples = sample_with_scheduler(ema_model, create_diffusion(), kind, int(steps),
                                            shape, model_kwargs={"y": y}, generator=generator)
    assert samples.shape == shape
    assert torch.isfinite(samples).all()
    left_minus_right = (samples[..., : SIZE // 2].mean((1, 2, 3))
                        - samples[..., SIZE // 2:].mean((1, 2, 3)))
    # Every toy image has halves 1.6 apart; noise, or a sampler that stops half-way, has ~0.
    # Class conditioning needs far more than 150 steps to be learnt, so it is not asserted, and
    # a deterministic sampler may leave a sample whose class is undecided between the modes.
    assert (left_minus_right.abs() > 1.0).float().mean() >= 0.75, left_minus_right
