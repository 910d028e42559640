"""Gaussian diffusion as in IDDPM/ADM/DiT, plus few-step samplers from diffusers."""
from __future__ import annotations

from .fast_samplers import make_scheduler, sample_with_scheduler
from .gaussian_diffusion import GaussianDiffusion, standard_normal
from .guidance import guided
from .losses import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    multiscale_noise_target,
    normal_kl,
)
from .schedule import named_betas, respace_betas, space_timesteps


def create_diffusion(timestep_respacing: str | int | None = None, diffusion_steps: int = 1000,
                     noise_schedule: str = "linear") -> GaussianDiffusion:
    """The process DiT trains and samples with.

    ``timestep_respacing`` None or "" keeps every step (training); a count such as "250" or
    250, comma-separated section counts, or "ddimN" keep the steps ``space_timesteps`` picks.
    """
    betas = named_betas(noise_schedule, diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        return GaussianDiffusion(betas)
    kept = space_timesteps(diffusion_steps, timestep_respacing)
    return GaussianDiffusion(respace_betas(betas, kept), timestep_map=kept, original_betas=betas)


__all__ = [
    "GaussianDiffusion", "create_diffusion",
    "discretized_gaussian_log_likelihood", "guided", "make_scheduler", "mean_flat",
    "multiscale_noise_target", "named_betas", "normal_kl", "respace_betas",
    "sample_with_scheduler", "space_timesteps", "standard_normal",
]
