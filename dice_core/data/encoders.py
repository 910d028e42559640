"""Encoders from uint8 images to diffusion latents, behind one interface.

``moments(images)`` takes uint8 (N, H, W, 3) and returns the posterior (mean, logvar) as float32
(N, C, h, w); a deterministic encoder returns logvar None. ``decode(latents)`` takes *scaled*
latents (what a model is trained on: sample times ``scale_factor``) back to uint8 images.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import DataError

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounding as ADM does when saving samples."""
    return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class PixelEncoder:
    """The identity 'VAE': pixels in [-1, 1] with zero variance (the embedded default)."""

    name = "pixels"
    scale_factor = 1.0
    stochastic = False

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (3, resolution, resolution)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return to_unit_range(images), None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(latents / self.scale_factor)


class VAEEncoder:
    """A ``diffusers.AutoencoderKL``: a hub id (cached or downloadable) or a local folder."""

    stochastic = True

    def __init__(self, source: str, device: str | torch.device = "cpu"):
        from diffusers import AutoencoderKL

        self.source = source
        self.device = torch.device(device)
        try:
            vae = AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False)
        except (OSError, ValueError) as error:
            local = "" if Path(source).exists() else " (no such local folder either)"
            raise DataError(
                f"cannot load the VAE {source!r}{local}: {str(error).splitlines()[0]}\n"
                "Offline, set `encode.vae` in params.yaml to a local folder holding the VAE's "
                "config.json and weights (as written by AutoencoderKL.save_pretrained), or "
                "put the model in the Hugging Face cache while online.") from None
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.scale_factor = float(self.vae.config.scaling_factor)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def name(self) -> str:
        return f"vae:{os.path.basename(os.path.normpath(self.source))}"

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.downsample:
            raise DataError(f"resolution {resolution} is not divisible by the VAE's "
                            f"downsampling factor {self.downsample}")
        size = resolution // self.downsample
        return (int(self.vae.config.latent_channels), size, size)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(to_unit_range(images.to(self.device))).latent_dist
        return posterior.mean.float(), posterior.logvar.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(latents.to(self.device) / self.scale_factor).sample
        return to_uint8(pixels)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_encoder(name: str, vae: str = DEFAULT_VAE, device: str = "auto"):
    """``pixels`` or ``vae`` (then ``vae`` is a hub id or a local folder)."""
    if name == "pixels":
        return PixelEncoder(pick_device(device))
    if name == "vae":
        return VAEEncoder(vae, pick_device(device))
    raise DataError(f"unknown encoder {name!r}: use 'pixels' or 'vae'")


def decoder_for(manifest: dict, device: str = "auto"):
    """The encoder that wrote a latent shard set, to decode samples back to images."""
    if manifest["encoder"] == "pixels":
        return PixelEncoder(pick_device(device))
    return VAEEncoder(manifest["encoder_source"], pick_device(device))
