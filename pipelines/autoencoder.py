"""Autoencoder stage: a small diffusers.AutoencoderKL trained on the prepared images, saved as
the local folder that ``encode.vae`` points at (the embedded experiment's latent space).

Reads the ``autoencoder`` section of params.yaml and the prepare stage's output.
    python -m pipelines.autoencoder [--pretrained DIR | --steps N] [--output DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dice_core.data import prepared_images, read_manifest
from dice_core.data.autoencoder import data_identity, save_autoencoder, train_autoencoder
from dice_core.devices import pick_device
from dice_core.errors import InputError

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "autoencoder")
    parser.add_argument("--pretrained", help="a saved diffusers autoencoder to adopt instead "
                                             "of training one (the SD-VAE, say)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output", help="the folder to write (diffusers layout)")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "autoencoder", ("pretrained", "steps", "output"))
    if config.pretrained:
        return adopt_pretrained(config.pretrained, config.output)
    manifest = read_manifest(params.prepare.output)
    images, _ = prepared_images(params.prepare.output, config.split)
    vae, stats = train_autoencoder(images, config, params.seed, pick_device(config.device))
    identity = data_identity(manifest, config.image_channels)
    meta = save_autoencoder(vae, config.output, identity, stats)
    print(f"autoencoder: {stats['parameters']:,} parameters, held-out reconstruction MSE "
          f"{stats['reconstruction_mse']:.4f}, scale factor {stats['scale_factor']:.4f}, "
          f"{stats['train_seconds']:.0f} s -> {config.output}")
    return meta


def adopt_pretrained(source: str, output: str) -> dict:
    """The pretrained autoencoder at ``source``, loaded (so a broken folder fails here, not in
    encode) and saved to ``output`` in the diffusers layout."""
    from diffusers import AutoencoderKL
    if not Path(source).is_dir():
        raise InputError(f"autoencoder.pretrained: no folder {source}; save one with "
                         "AutoencoderKL.from_pretrained(...).save_pretrained(FOLDER) on a "
                         "machine that has the weights, or set autoencoder.pretrained: null")
    vae = AutoencoderKL.from_pretrained(source)
    vae.save_pretrained(output)
    print(f"autoencoder: pretrained {source} ({sum(p.numel() for p in vae.parameters()):,} "
          f"parameters, scaling factor {vae.config.scaling_factor}) -> {output}")
    return {"pretrained": source, "scaling_factor": vae.config.scaling_factor}


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("autoencoder"))
