"""Sample grids from the EMA weights: the same seed and labels for every model."""
from __future__ import annotations

import math

import numpy as np
import torch

from dice_core.diffusion import create_diffusion
from dice_core.seeding import EVAL_SAMPLES, seeded_generator


def fixed_labels(count: int, num_classes: int) -> torch.Tensor:
    return torch.arange(count) % num_classes


@torch.no_grad()
def sample_images(model, decoder, *, count: int, num_classes: int, seed: int,
                  latent_shape: tuple[int, int, int], sampling_steps: int = 250) -> np.ndarray:
    """``count`` uint8 NHWC images by respaced DDPM from fixed noise and labels."""
    device = next(model.parameters()).device
    noise = torch.randn((count, *latent_shape), generator=seeded_generator(seed, EVAL_SAMPLES))
    labels = fixed_labels(count, num_classes).to(device)
    diffusion = create_diffusion(timestep_respacing=str(sampling_steps))
    latents = diffusion.p_sample_loop(model, noise.shape, noise=noise.to(device),
                                      model_kwargs={"y": labels},
                                      generator=seeded_generator(seed, EVAL_SAMPLES, 1))
    return decoder.decode(latents).cpu().numpy()


def image_grid(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> one HWC image, as square as the count allows, 2 px gaps."""
    count, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + 2) + 2, columns * (width + 2) + 2, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = 2 + row * (height + 2), 2 + column * (width + 2)
        grid[top:top + height, left:left + width] = image
    return grid
