"""A small ``diffusers.AutoencoderKL`` trained on the embedded images, so that the embedded
experiment is latent diffusion like the paper's ImageNet one (DESIGN.md section 5).

The folder it is saved in is what ``encode.vae`` points at: ``save_pretrained``'s config and
weights (read by the same ``VAEEncoder`` that reads the SD-VAE), plus ``dice_autoencoder.json``
naming the data it was trained on, so that encode and evaluation can refuse it for other data.
The scale factor is fixed from the spread of its latents, as the SD-VAE's 0.18215 was.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from dice_core.durable import replace_atomically, reporting_full_disk, write_text_atomic
from dice_core.seeding import AUTOENCODER, seeded_generator

from .errors import DataError

if TYPE_CHECKING:   # the schema (pydantic) is not needed to load an autoencoder
    from dice_core.config import AutoencoderParams

METADATA = "dice_autoencoder.json"


def build_autoencoder(spec: AutoencoderParams, resolution: int):
    from diffusers import AutoencoderKL
    blocks = len(spec.block_out_channels)
    return AutoencoderKL(
        in_channels=spec.image_channels, out_channels=spec.image_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(spec.block_out_channels), layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=math.gcd(16, *spec.block_out_channels), sample_size=resolution,
        mid_block_add_attention=False)


def image_tensor(images: np.ndarray | torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 NHWC (grey stored as 3 equal channels, or 1) -> float32 NCHW in [-1, 1] with
    ``channels`` channels: grey data stays one channel where the autoencoder sees it."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == channels:
        return x
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise DataError(f"images have {x.shape[1]} channels; the autoencoder takes {channels}")


def holdout_split(count: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, AUTOENCODER]).permutation(count)
    held = min(holdout, count // 5)
    return order[held:], order[:held]


def train_autoencoder(images: np.ndarray, spec: AutoencoderParams, seed: int,
                      device: torch.device = torch.device("cpu"), progress: bool = True):
    """Trains on all but ``spec.holdout`` images (MSE plus a small KL term) and returns
    (the autoencoder in eval mode on the CPU, statistics measured on the held-out images)."""
    resolution = images.shape[1]
    torch.manual_seed(seed)
    vae = build_autoencoder(spec, resolution).to(device)
    train_idx, held_idx = holdout_split(len(images), spec.holdout, seed)
    data = image_tensor(images[train_idx], spec.image_channels).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.lr, total_steps=spec.steps,
                                                   pct_start=0.05)
    generator = seeded_generator(seed, AUTOENCODER, 0, 0)
    started = time.perf_counter()
    vae.train()
    bar = tqdm(range(spec.steps), desc="autoencoder", unit="step", disable=not progress)
    for step in bar:
        batch = data[torch.randint(0, len(data), (spec.batch_size,), generator=generator)
                     .to(device)]
        if torch.rand((), generator=generator) < 0.5:
            batch = batch.flip(-1)   # mirrored images are encoded too (the flip augmentation)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator).to(device)).sample
        mse = (recon - batch).square().mean()
        loss = mse + spec.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}")
    bar.close()
    vae = vae.cpu().eval().requires_grad_(False)
    stats = measure(vae, image_tensor(images[held_idx], spec.image_channels))
    stats.update(train_seconds=time.perf_counter() - started, train_images=len(train_idx),
                 heldout_images=len(held_idx),
                 parameters=sum(p.numel() for p in vae.parameters()))
    vae.register_to_config(scaling_factor=stats["scale_factor"])
    return vae, stats


@torch.no_grad()
def measure(vae, held_out: torch.Tensor, batch_size: int = 250) -> dict:
    """Reconstruction MSE (in [-1, 1] units) of the posterior means, and the scale factor
    1 / std of the latents' samples (so that scaled latents have unit variance)."""
    errors, latents = [], []
    for start in range(0, len(held_out), batch_size):
        batch = held_out[start:start + batch_size]
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(start))
        latents.append(posterior.mean + posterior.std * noise)
        errors.append((vae.decode(posterior.mean).sample.clamp(-1, 1) - batch).square()
                      .flatten(1).mean(1))
    return {"reconstruction_mse": float(torch.cat(errors).mean()),
            "scale_factor": float(1.0 / torch.cat(latents).std())}


def save_autoencoder(vae, folder: str | Path, identity: dict, stats: dict) -> dict:
    """The diffusers folder (config + safetensors) and its metadata, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".staging"
    try:
        with reporting_full_disk(staging):
            vae.save_pretrained(staging, safe_serialization=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)    # a full disk gets its room back
        raise
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        replace_atomically(folder / name, lambda f, n=name: f.write((staging / n).read_bytes()))
        (staging / name).unlink()
    staging.rmdir()
    weights = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    meta = {**identity, **stats, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    write_text_atomic(folder / METADATA, json.dumps(meta, indent=2))
    return meta


def read_metadata(folder: str | Path) -> dict | None:
    """The metadata of an autoencoder made here, or None for any other (the SD-VAE)."""
    path = Path(folder) / METADATA
    return json.loads(path.read_text()) if path.is_file() else None


def data_identity(manifest: dict, channels: int) -> dict:
    """What an autoencoder is made for: the data source, image size and channels."""
    return {"source": manifest["source"], "resolution": manifest["resolution"],
            "image_channels": channels}


def check_made_for(folder: str | Path, expected: dict) -> None:
    """Refuses an autoencoder of this project made for other data than ``expected``."""
    meta = read_metadata(folder)
    if meta is None:
        return
    found = {key: meta.get(key) for key in expected}
    if found != expected:
        raise DataError(f"the autoencoder in {folder} was made for {found}, but the data is "
                        f"{expected}; retrain it for this data: dvc repro autoencoder")
