"""Noise schedules and the respacing rule of IDDPM/ADM (which DiT uses), in float64 numpy."""
from __future__ import annotations

import math

import numpy as np


def linear_betas(num_steps: int) -> np.ndarray:
    """Ho et al.'s linear schedule (1e-4 to 0.02 at 1000 steps), rescaled by 1000 / num_steps
    so that the process ends at the same noise level whatever the number of steps."""
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: betas that discretise
    alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2) on s in [0, 1]."""
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


NOISE_SCHEDULES = {"linear": linear_betas, "squaredcos_cap_v2": cosine_betas}


def named_betas(name: str, num_steps: int) -> np.ndarray:
    if name not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; "
                         f"choose one of {sorted(NOISE_SCHEDULES)}")
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be positive, got {num_steps}")
    return NOISE_SCHEDULES[name](num_steps)


def space_timesteps(num_steps: int, section_counts: str | int | list[int]) -> list[int]:
    """The timesteps (sorted, from 0) of the original process that a respaced process keeps.

    ``section_counts`` is a count ("250", 250), comma-separated counts for equal consecutive
    portions of the process ("10,15,20": 10 steps from the first third, ...), or "ddimN": the
    DDIM paper's fixed integer stride, the smallest one giving exactly N steps. Within a portion
    the steps are ``round(k * (size - 1) / (count - 1))``, rounded with Python's ``round`` on an
    accumulated float stride, exactly as IDDPM does, so the first and last step are always kept.
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ValueError(f"no integer stride gives exactly {desired} of {num_steps} steps")
    if isinstance(section_counts, int):
        counts = [section_counts]
    elif isinstance(section_counts, str):
        counts = [int(part) for part in section_counts.split(",")]
    else:
        counts = list(section_counts)

    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


def respace_betas(betas: np.ndarray, kept_timesteps: list[int]) -> np.ndarray:
    """Betas of the process that visits only ``kept_timesteps``, chosen so that its
    alpha_bar at each kept step equals the original one: beta = 1 - abar_t / abar_previous_kept."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    kept = alphas_cumprod[np.asarray(kept_timesteps)]
    previous = np.concatenate([[1.0], kept[:-1]])
    return 1.0 - kept / previous
