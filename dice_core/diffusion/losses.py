"""Likelihood terms of the variational bound, and the multi-scale noise target."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    Arguments broadcast; scalars are allowed as long as one argument is a tensor."""
    reference = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (torch.as_tensor(v).to(reference) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Phi(x) that IDDPM's decoder likelihood uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-probability (nats, elementwise) that N(means, exp(log_scales)^2) falls into the
    8-bit bin of ``x``, for data that was uint8 rescaled to [-1, 1]: bins of width 2/255, the
    first and last extended to -inf and +inf so the 256 bins sum to one."""
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
                         f"log_scales {tuple(log_scales.shape)}")
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (x - means + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inv_std * (x - means - 1.0 / 255.0))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_in_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_below_upper,
                       torch.where(x > 0.999, log_above_lower, log_in_bin))


def multiscale_noise_target(noise: torch.Tensor, size: int) -> torch.Tensor:
    """The noise seen at resolution ``size``: area-averaged over f x f blocks, then multiplied
    by f so that i.i.d. unit-variance noise stays unit-variance (DiMR's scale correction)."""
    factor = noise.shape[-1] // size
    if factor < 1 or noise.shape[-1] != factor * size or noise.shape[-2] % factor:
        raise ValueError(f"a stage of size {size} does not divide the input of shape "
                         f"{tuple(noise.shape)}")
    return F.avg_pool2d(noise, kernel_size=factor) * factor
