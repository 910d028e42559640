"""Few-step samplers from ``diffusers``, built from the betas the model was trained with.

Every scheduler here counts in the original process's timesteps (integers in [0, T)), which
is what the models take, and none clips x_0 (latents are not confined to [-1, 1]).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dice_core.samplers import SAMPLERS

from .gaussian_diffusion import GaussianDiffusion, check_model_output, initial_noise
from .schedule import space_timesteps



def make_scheduler(kind: str, betas: np.ndarray, num_steps: int):
    """A diffusers scheduler of ``kind`` over ``betas``, with its timesteps set for
    ``num_steps`` sampling steps (kept on the CPU: they are looked up, not computed with).

    - "ddim": eta = 0, steps 0, T//N, 2T//N, ... ("leading" spacing: the only one whose steps
      match diffusers' fixed previous-step rule for every N; IDDPM's "ddimN" when N divides T).
    - "dpm-solver": DPM-Solver++ (2nd-order multistep) on the eps channels, "linspace"
      spacing from T-1, last step to sigma = 0.
    - "ddpm": ancestral sampling with the learned-range variance over IDDPM's respaced steps,
      the same chain as ``create_diffusion(str(N)).p_sample_loop``.
    """
    # diffusers takes over a second to import: only the code that samples pays for it.
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    betas = np.asarray(betas, dtype=np.float64)
    common = dict(num_train_timesteps=len(betas), trained_betas=betas,
                  prediction_type="epsilon")
    if kind == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="leading")
        scheduler.set_timesteps(num_steps)
    elif kind == "dpm-solver":
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++",
                                                solver_order=2, final_sigmas_type="zero",
                                                timestep_spacing="linspace")
        scheduler.set_timesteps(num_steps)
    elif kind == "ddpm":
        scheduler = DDPMScheduler(**common, variance_type="learned_range", clip_sample=False)
        kept = space_timesteps(len(betas), num_steps)
        scheduler.set_timesteps(timesteps=kept[::-1])
    else:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")
    return scheduler


@torch.no_grad()
def sample_with_scheduler(model, diffusion: GaussianDiffusion | np.ndarray, kind: str,
                          num_steps: int, shape: Sequence[int],
                          noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                          generator: torch.Generator | None = None,
                          progress: bool = False) -> torch.Tensor:
    """Samples x_0 with a diffusers scheduler (see ``make_scheduler``).

    ``diffusion`` is the training process (its ``original_betas`` are used, so a respaced
    process works too) or the original betas themselves.
    """
    betas = getattr(diffusion, "original_betas", diffusion)
    shape = tuple(shape)
    x = initial_noise(shape, noise, generator, model)
    scheduler = make_scheduler(kind, betas, num_steps)
    # DPM-Solver's learned-variance handling assumes 3 channels, so it gets eps alone.
    keep_variance = kind == "ddpm"
    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm
        timesteps = tqdm(timesteps)
    for t in timesteps:
        t = int(t)
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        output = check_model_output(model(x, t_batch, **(model_kwargs or {})), x)
        if not keep_variance:
            output = output[:, :shape[1]]
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x
