"""Samplers the tests use as oracles only: DDIM (Song et al., eq. 12) through every step of a
respaced process, and diffusers' DDPM scheduler with the learned-range variance over IDDPM's
respaced steps, both against the project's own samplers."""
import numpy as np
import torch

from dice_core.diffusion.gaussian_diffusion import standard_normal
from dice_core.diffusion.schedule import space_timesteps


def ddim_sample(diffusion, model, shape, noise=None, model_kwargs=None, generator=None,
                eta=0.0):
    """Deterministic at ``eta=0``: respace ``diffusion`` ("ddimN") to take fewer steps."""
    def step(x, t, i, output):
        _, _, pred_x0 = diffusion.p_mean_variance(output, x, t, False)
        alpha_bar = diffusion._at(diffusion.alphas_cumprod, t, x)
        alpha_bar_prev = diffusion._at(diffusion.alphas_cumprod_prev, t, x)
        eps = (torch.sqrt(1 / alpha_bar) * x - pred_x0) / torch.sqrt(1 / alpha_bar - 1)
        sigma = (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                 * torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        x_prev = (torch.sqrt(alpha_bar_prev) * pred_x0
                  + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps)
        if i == 0 or eta == 0:
            return x_prev
        return x_prev + sigma * standard_normal(x.shape, generator, x.device, x.dtype)

    return diffusion._sample_loop(step, model, shape, noise, model_kwargs, False, generator)


def diffusers_ddpm(model, betas, num_steps, shape, generator=None, model_kwargs=None):
    """Ancestral sampling by diffusers' DDPMScheduler on IDDPM's respaced steps, the learned
    variance taken from the model's second half of channels."""
    from diffusers import DDPMScheduler
    scheduler = DDPMScheduler(num_train_timesteps=len(betas),
                              trained_betas=np.asarray(betas, dtype=np.float64),
                              prediction_type="epsilon", variance_type="learned_range",
                              clip_sample=False)
    scheduler.set_timesteps(timesteps=space_timesteps(len(betas), num_steps)[::-1])
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        t_batch = torch.full((shape[0],), int(t), dtype=torch.long)
        output = model(x, t_batch, **(model_kwargs or {}))
        x = scheduler.step(output, int(t), x, generator=generator).prev_sample
    return x
