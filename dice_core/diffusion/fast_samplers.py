"""Few-step samplers from ``diffusers``, built from the betas the model was trained with.

Every scheduler here counts in the original process's timesteps (integers in [0, T)), which
is what the models take, and none clips x_0 (latents are not confined to [-1, 1]).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion, Generators, check_model_output, initial_noise

# the samplers of dice_core.samplers.SAMPLERS that diffusers runs; "ddpm" is
# GaussianDiffusion.p_sample_loop
SCHEDULERS = ("ddim", "dpm-solver")


def make_scheduler(kind: str, betas: np.ndarray, num_steps: int):
    """A diffusers scheduler of ``kind`` over ``betas``, with its timesteps set for
    ``num_steps`` sampling steps (kept on the CPU: they are looked up, not computed with).

    - "ddim": eta = 0, steps 0, T//N, 2T//N, ... ("leading" spacing: the only one whose steps
      match diffusers' fixed previous-step rule for every N; IDDPM's "ddimN" when N divides T).
    - "dpm-solver": DPM-Solver++ (2nd-order multistep) on the eps channels, "linspace"
      spacing from T-1, last step to sigma = 0.
    """
    # diffusers takes over a second to import: only the code that samples pays for it.
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

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
    else:
        raise ValueError(f"unknown scheduler {kind!r}; choose one of {SCHEDULERS}")
    return scheduler


@torch.no_grad()
def sample_with_scheduler(model, diffusion: GaussianDiffusion | np.ndarray, kind: str,
                          num_steps: int, shape: Sequence[int],
                          noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                          generator: Generators = None,
                          progress: bool = False) -> torch.Tensor:
    """Samples x_0 with a diffusers scheduler (see ``make_scheduler``). ``generator`` may be
    one per sample (see ``standard_normal``; diffusers takes such a list too).

    ``diffusion`` is the training process (its ``original_betas`` are used, so a respaced
    process works too) or the original betas themselves.
    """
    betas = getattr(diffusion, "original_betas", diffusion)
    shape = tuple(shape)
    x = initial_noise(shape, noise, generator, model)
    scheduler = make_scheduler(kind, betas, num_steps)
    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm
        timesteps = tqdm(timesteps)
    for t in timesteps:
        t = int(t)
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        output = check_model_output(model(x, t_batch, **(model_kwargs or {})), x)
        # the schedulers take eps alone (DPM-Solver's learned-variance handling assumes 3
        # channels)
        output = output[:, :shape[1]]
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x
