"""Encoders from uint8 images to diffusion latents, behind one interface.

``moments(images)`` takes uint8 (N, H, W, 3) and returns the posterior (mean, logvar) as float32
(N, C, h, w); a deterministic encoder returns logvar None. ``decode(latents)`` takes *scaled*
latents (what a model is trained on: sample times ``scale_factor``) back to uint8 images.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dice_core.devices import pick_device

from .autoencoder import check_made_for, data_identity, image_tensor, read_metadata
from .errors import DataError



def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded to the nearest level as DiT's
    sample_ddp.py does (``clamp(127.5 x + 128)`` then truncation); ADM's image_sample.py
    truncates ``127.5 (x + 1)`` instead."""
    return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class PixelEncoder:
    """The identity 'VAE': pixels in [-1, 1] with zero variance (for tests and comparisons).
    Its space is bounded, so sampling clips x0 to [-1, 1] there, as ADM does."""

    name = "pixels"
    scale_factor = 1.0
    stochastic = False
    bounded = True
    identity = None

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (3, resolution, resolution)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return image_tensor(images, images.shape[-1]), None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(latents / self.scale_factor)


class VAEEncoder:
    """A ``diffusers.AutoencoderKL``: a hub id (cached or downloadable) or a local folder,
    such as the autoencoder stage's. Latent space is unbounded: sampling does not clip (DiT).
    Grey images enter a one-channel autoencoder as one channel; decoded images have the
    autoencoder's channels."""

    stochastic = True
    bounded = False

    def __init__(self, source: str, device: str | torch.device = "cpu"):
        from diffusers import AutoencoderKL

        self.source = source
        self.device = torch.device(device)
        if _looks_local(source) and not Path(source).exists():
            raise DataError(f"no autoencoder at {source}: train it first (dvc repro "
                            "autoencoder), or set encode.vae to a hub id or to a local folder "
                            "holding a VAE")
        self.metadata = read_metadata(source) if Path(source).is_dir() else None
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

    @property
    def identity(self) -> str | None:
        """The weights' sha256 for an autoencoder of this project: a retrained one is another
        encoder, whose latents must not be mixed with the old ones."""
        return self.metadata["weights_sha256"] if self.metadata else None

    def check_made_for(self, prepared_manifest: dict) -> None:
        check_made_for(self.source, data_identity(prepared_manifest, self.image_channels))

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.downsample:
            raise DataError(f"resolution {resolution} is not divisible by the VAE's "
                            f"downsampling factor {self.downsample}")
        size = resolution // self.downsample
        return (int(self.vae.config.latent_channels), size, size)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = image_tensor(images, self.image_channels).to(self.device)
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean.float(), posterior.logvar.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(latents.to(self.device) / self.scale_factor).sample
        return to_uint8(pixels)


def _looks_local(source: str) -> bool:
    """A path rather than a hub id ('owner/name'): absolute, relative or a single name."""
    return (source.startswith((".", "/", "~")) or source.count("/") != 1
            or Path(source).parent.is_dir() and Path(source).parent != Path("."))


def load_encoder(name: str, vae: str, device: str):
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
    decoder = VAEEncoder(manifest["encoder_source"], pick_device(device))
    if manifest.get("encoder_identity") != decoder.identity:
        raise DataError(f"the autoencoder in {manifest['encoder_source']} is not the one that "
                        "wrote these latents (it was retrained since): re-encode them with "
                        "`dvc repro encode`")
    return decoder
