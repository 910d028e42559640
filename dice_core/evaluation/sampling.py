"""Samples for evaluation: from the EMA weights, one fixed seed and the same class labels for
every model, decoded to uint8 images by the encoder that wrote the training data."""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from dice_core.diffusion import create_diffusion, sample_with_scheduler
from dice_core.samplers import SAMPLERS
from dice_core.seeding import EVAL_SAMPLES, seeded_generator



def fixed_labels(count: int, num_classes: int) -> torch.Tensor:
    """Classes in turn, so any count is as balanced as it can be."""
    return torch.arange(count) % num_classes


@torch.no_grad()
def sample_images(model, decoder, *, count: int, num_classes: int, seed: int,
                  latent_shape: tuple[int, int, int], sampler: str = "ddpm", steps: int = 250,
                  batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """``count`` uint8 NHWC images. Each sample's starting noise comes from (seed, its index),
    so the set is the same for every model; the sampling chain's noise from (seed, batch).
    DDPM clips x0 to [-1, 1] where the decoder's space is bounded (pixels), as ADM does, and
    not in a latent space, as DiT; the diffusers samplers never clip."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {list(SAMPLERS)}")
    device = next(model.parameters()).device
    labels = fixed_labels(count, num_classes)
    respaced = create_diffusion(timestep_respacing=str(steps)) if sampler == "ddpm" else None
    training = create_diffusion(timestep_respacing="")
    images = []
    starts = range(0, count, batch_size)
    for start in tqdm(starts, desc=f"sampling ({sampler}, {steps} steps)", unit="batch",
                      disable=not progress):
        size = min(batch_size, count - start)
        noise = torch.stack([torch.randn(latent_shape,
                                         generator=seeded_generator(seed, EVAL_SAMPLES, 0, index))
                             for index in range(start, start + size)]).to(device)
        kwargs = {"y": labels[start:start + size].to(device)}
        generator = seeded_generator(seed, EVAL_SAMPLES, 1, start)   # the chain's own noise
        if respaced is not None:
            latents = respaced.p_sample_loop(model, noise.shape, noise=noise,
                                             model_kwargs=kwargs, generator=generator,
                                             clip_denoised=decoder.bounded)
        else:
            latents = sample_with_scheduler(model, training, sampler, steps, noise.shape,
                                            noise=noise, model_kwargs=kwargs,
                                            generator=generator)
        images.append(decoder.decode(latents).cpu().numpy())
    return np.concatenate(images)


def image_grid(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> one HWC image (HW for grey), as square as the count allows, 2 px gaps."""
    count, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + 2) + 2, columns * (width + 2) + 2, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = 2 + row * (height + 2), 2 + column * (width + 2)
        grid[top:top + height, left:left + width] = image
    return grid[..., 0] if channels == 1 else grid
