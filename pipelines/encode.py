"""Encode stage: VAE moments (or pixels) of every prepared image and its mirror, as latent
WebDataset shards with a manifest.

Reads the ``encode`` section of params.yaml; flags override it.
    python -m pipelines.encode [--encoder vae --vae PATH_OR_HUB_ID] [--input DIR] [--output DIR]
"""
from __future__ import annotations

import argparse
import sys

from dice_core.data.encode import encode_dataset
from dice_core.data.encoders import load_encoder

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "encode")
    parser.add_argument("--encoder", choices=["pixels", "vae"])
    parser.add_argument("--vae", help="hub id or local folder of an AutoencoderKL")
    parser.add_argument("--input", help="the prepare stage's output")
    parser.add_argument("--output", help="folder for the latent shards and manifest")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int)


def run(args: argparse.Namespace) -> dict:
    _, config = stage_params(
        args, "encode", ("encoder", "vae", "input", "output", "device", "batch_size"))
    encoder = load_encoder(config.encoder, config.vae, config.device)
    manifest = encode_dataset(encoder, config.input, config.output,
                              batch_size=config.batch_size, storage_dtype=config.storage_dtype,
                              fingerprint={"encode": config.model_dump(exclude={"device"})})
    print(f"{encoder.name}: latents {tuple(manifest['latent_shape'])}, scale factor "
          f"{manifest['scale_factor']}, {len(manifest['shards'])} shards in {config.output}")
    return manifest


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("encode"))
