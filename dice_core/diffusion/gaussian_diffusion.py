"""The Gaussian diffusion of IDDPM/ADM as DiT uses it: epsilon prediction, a learned-range
variance, the hybrid loss, and ancestral DDPM and DDIM sampling.

Schedule arrays are float64 numpy; a coefficient is looked up at the batch's timesteps and
only then cast to the data's dtype. The process may be a respaced one: its timesteps index
the kept steps, and the model always sees the ORIGINAL timesteps through ``timestep_map``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .losses import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    multiscale_noise_target,
    normal_kl,
)

# One generator for the whole batch, one per sample (a list, diffusers' convention: then each
# sample's draws depend on its own generator alone, whatever batch it is in), or None (global).
Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal(shape: Sequence[int], generator: Generators,
                    device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise drawn from ``generator`` (global RNG when None) on the generator's own
    device, then moved, so a CPU generator gives the same numbers whatever the data device.
    A list of generators draws sample i of the batch from generator i."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([standard_normal(shape[1:], one, one.device, dtype)
                            for one in generator]).to(device)
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device,
                       dtype=dtype).to(device)


def initial_noise(shape: Sequence[int], noise: torch.Tensor | None,
                  generator: Generators, model) -> torch.Tensor:
    """x_T for a sampling loop: ``noise`` when given (checked against ``shape``), else a draw."""
    shape = tuple(shape)
    if noise is None:
        return standard_normal(shape, generator, model_device(model))
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    return noise


def model_device(model) -> torch.device:
    parameters = model.parameters() if hasattr(model, "parameters") else iter(())
    first = next(iter(parameters), None)
    return first.device if first is not None else torch.device("cpu")


def check_model_output(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if tuple(output.shape) != expected:
        raise ValueError(f"the model must return (B, 2C, H, W) = {expected} (noise and "
                         f"variance channels), got {tuple(output.shape)}")
    return output.to(x.dtype)


class GaussianDiffusion:
    """A discrete Gaussian diffusion with betas ``betas``.

    ``timestep_map[i]`` is the original timestep of this process's step ``i`` and
    ``original_betas`` the betas of the process it was respaced from (both default to this
    process itself).
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None,
                 original_betas: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a 1-D array of at least 2 values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(self.num_timesteps) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        self.original_betas = (betas if original_betas is None
                               else np.asarray(original_betas, dtype=np.float64))
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map needs one original timestep per step")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.log_betas = np.log(betas)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = (betas * (1.0 - self.alphas_cumprod_prev)
                                   / (1.0 - self.alphas_cumprod))
        # The posterior variance is 0 at t = 0; its log takes the t = 1 value there instead.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef_x0 = (betas * np.sqrt(self.alphas_cumprod_prev)
                                       / (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef_xt = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas)
                                       / (1.0 - self.alphas_cumprod))

    # -- helpers ---------------------------------------------------------------------------

    def _at(self, values: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``values[t]``, shaped (B, 1, ..., 1) to broadcast against ``x``, in ``x``'s dtype."""
        picked = torch.from_numpy(values)[t.cpu()]
        return picked.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.timestep_map)[t.cpu()].to(t.device)

    def model_output(self, model, x_t: torch.Tensor, t: torch.Tensor,
                     model_kwargs: dict | None = None) -> torch.Tensor:
        output = model(x_t, self.original_timesteps(t), **(model_kwargs or {}))
        return check_model_output(output, x_t)

    # -- the forward process and its posterior --------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (self._at(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        return (self._at(self.posterior_mean_coef_x0, t, x_t) * x0
                + self._at(self.posterior_mean_coef_xt, t, x_t) * x_t)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor,
                            eps: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    # -- the reverse process ---------------------------------------------------------------

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False):
        """Mean, log-variance and x_0 prediction of p(x_{t-1} | x_t) from a model output
        [eps, v]: log var = frac log beta_t + (1 - frac) log posterior_var, frac = (v + 1) / 2."""
        eps, v = output.chunk(2, dim=1)
        frac = (v + 1) / 2
        log_variance = (frac * self._at(self.log_betas, t, x_t)
                        + (1 - frac) * self._at(self.posterior_log_variance_clipped, t, x_t))
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        return self.q_posterior_mean(pred_x0, x_t, t), log_variance, pred_x0

    def vb_bits(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """The step-t term of the variational bound, per example, in bits per dimension:
        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), or the decoder NLL -log p(x_0 | x_1)
        at t = 0."""
        true_mean = self.q_posterior_mean(x0, x_t, t)
        true_log_variance = self._at(self.posterior_log_variance_clipped, t, x_t)
        mean, log_variance, _ = self.p_mean_variance(output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance))
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x0, means=mean, log_scales=0.5 * log_variance))
        return torch.where(t == 0, decoder_nll, kl) / math.log(2.0)

    # -- training --------------------------------------------------------------------------

    def training_losses(self, model, x0: torch.Tensor, t: torch.Tensor,
                        model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """IDDPM's hybrid loss per example: eps MSE plus the bound's term, the latter computed
        on a detached eps so that it trains only the variance.

        A model whose ``stage_loss_weights`` has k > 1 entries is called through
        ``forward_stages``: the full-resolution output (entry 0) gives "mse" and "vb" and its
        MSE is weighted by weights[0]; each coarser stage adds weights[k] times the MSE to the
        scale-corrected area-averaged noise, reported (summed, weighted) as "stage_mse".
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        weights = tuple(getattr(model, "stage_loss_weights", (1.0,)))
        original_t = self.original_timesteps(t)
        if len(weights) > 1:
            stages = model.forward_stages(x_t, original_t, **model_kwargs)
            if len(stages) != len(weights):
                raise ValueError(f"the model gave {len(stages)} stage outputs for "
                                 f"{len(weights)} stage_loss_weights")
        else:
            stages = [model(x_t, original_t, **model_kwargs)]
        output = check_model_output(stages[0], x_t)

        eps, v = output.chunk(2, dim=1)
        mse = mean_flat((noise - eps) ** 2)
        vb = self.vb_bits(torch.cat([eps.detach(), v], dim=1), x0, x_t, t)
        terms = {"mse": mse, "vb": vb, "loss": weights[0] * mse + vb}
        if len(weights) > 1:
            channels = x0.shape[1]
            stage_mse = sum(
                weight * mean_flat((stage[:, :channels].to(x0.dtype)
                                    - multiscale_noise_target(noise, stage.shape[-1])) ** 2)
                for weight, stage in zip(weights[1:], stages[1:]))
            terms["stage_mse"] = stage_mse
            terms["loss"] = terms["loss"] + stage_mse
        return terms

    # -- sampling --------------------------------------------------------------------------

    @torch.no_grad()
    def p_sample_loop(self, model, shape: Sequence[int], noise: torch.Tensor | None = None,
                      model_kwargs: dict | None = None, progress: bool = False,
                      generator: Generators = None,
                      clip_denoised: bool = False) -> torch.Tensor:
        """Ancestral sampling through every step of this process (DiT: no clipping).
        ``generator`` may be one per sample (see ``standard_normal``)."""
        def step(x, t, i, output):
            mean, log_variance, _ = self.p_mean_variance(output, x, t, clip_denoised)
            if i == 0:
                return mean
            return mean + torch.exp(0.5 * log_variance) * standard_normal(
                x.shape, generator, x.device, x.dtype)

        return self._sample_loop(step, model, shape, noise, model_kwargs, progress, generator)

    @torch.no_grad()
    def _sample_loop(self, step: Callable, model, shape, noise, model_kwargs, progress,
                     generator) -> torch.Tensor:
        shape = tuple(shape)
        x = initial_noise(shape, noise, generator, model)
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i in indices:
            t = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
            x = step(x, t, i, self.model_output(model, x, t, model_kwargs))
        return x
