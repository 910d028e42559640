"""Samples for evaluation: from the EMA weights, one fixed seed and the same class labels for
every model, decoded to uint8 images by the encoder that wrote the training data."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dice_core.diffusion import create_diffusion, guided, sample_with_scheduler, standard_normal
from dice_core.durable import replace_atomically
from dice_core.samplers import SAMPLERS
from dice_core.seeding import EVAL_SAMPLES, seeded_generator


def fixed_labels(count: int, num_classes: int) -> torch.Tensor:
    """Classes in turn, so any count is as balanced as it can be."""
    return torch.arange(count) % num_classes


def sample_images(model, decoder, *, count: int, num_classes: int, **options) -> np.ndarray:
    """``count`` uint8 NHWC images of ``fixed_labels``' classes, all at once: see
    ``sample_batches`` for ``options``."""
    return np.concatenate(list(sample_batches(
        model, decoder, labels=fixed_labels(count, num_classes), **options)))


@torch.no_grad()
def sample_batches(model, decoder, *, labels: torch.Tensor, seed: int,
                   latent_shape: tuple[int, int, int], sampler: str = "ddpm", steps: int = 250,
                   batch_size: int = 64, progress: bool = False, cfg_scale: float = 1.0,
                   guidance_channels: int | None = None) -> Iterator[np.ndarray]:
    """uint8 NHWC images of the classes ``labels``, ``batch_size`` at a time, each batch drawn
    when the one before has been taken. Every random draw is keyed by the sample's index: its
    starting noise comes from (seed, 0, index) and its chain's noise from (seed, 1, index),
    so the set is the same for every model and whatever ``batch_size``.

    ``cfg_scale`` is classifier-free guidance in DiT's convention (1 = none; see
    ``dice_core.diffusion.guidance``) on the first ``guidance_channels`` latent channels (None:
    all of them). Guidance draws no noise, so every scale samples from the same noise.
    DDPM clips x0 to [-1, 1] where the decoder's space is bounded (pixels), as ADM does, and
    not in a latent space, as DiT; the diffusers samplers never clip."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {list(SAMPLERS)}")
    guided_model = guided(model, cfg_scale, guidance_channels)
    device = next(model.parameters()).device
    chain = sampling_chain(sampler, steps, clip_denoised=decoder.bounded)
    count = len(labels)
    for start in tqdm(range(0, count, batch_size), unit="batch", disable=not progress,
                      desc=f"sampling ({sampler}, {steps} steps, cfg {cfg_scale:g})"):
        indices = range(start, min(start + batch_size, count))
        noise = standard_normal((len(indices), *latent_shape),
                                sample_generators(seed, 0, indices), device)
        latents = chain(guided_model, noise, {"y": labels[start:indices.stop].to(device)},
                        sample_generators(seed, 1, indices))
        yield decoder.decode(latents).cpu().numpy()


def sample_generators(seed: int, stream: int, indices: range) -> list[torch.Generator]:
    """One generator per sample, keyed by (seed, the stream, the sample's index)."""
    return [seeded_generator(seed, EVAL_SAMPLES, stream, index) for index in indices]


def sampling_chain(sampler: str, steps: int, clip_denoised: bool):
    """``chain(model, noise, model_kwargs, generators)`` -> x_0 for ``sampler``."""
    if sampler == "ddpm":
        respaced = create_diffusion(timestep_respacing=str(steps))
        return lambda model, noise, kwargs, generators: respaced.p_sample_loop(
            model, noise.shape, noise=noise, model_kwargs=kwargs, generator=generators,
            clip_denoised=clip_denoised)
    training = create_diffusion(timestep_respacing="")
    return lambda model, noise, kwargs, generators: sample_with_scheduler(
        model, training, sampler, steps, noise.shape, noise=noise, model_kwargs=kwargs,
        generator=generators)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """NHWC uint8 -> one HWC image (HW for grey), row by row in ``columns`` columns (None: as
    square as the count allows), 2 px gaps."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + 2) + 2, columns * (width + 2) + 2, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = 2 + row * (height + 2), 2 + column * (width + 2)
        grid[top:top + height, left:left + width] = image
    return grid[..., 0] if channels == 1 else grid


def save_grid(path, images: np.ndarray, columns: int | None = None) -> None:
    """``image_grid(images, columns)`` as a PNG at ``path``, written atomically."""
    grid = image_grid(images, columns)
    replace_atomically(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
