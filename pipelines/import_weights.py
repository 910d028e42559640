"""`dice import`: one of DiT's released checkpoints as this project's weights file (the preset,
its config and the data it was trained on: ImageNet at its resolution, SD-VAE latents), which
`dice sample`, `dice evaluate --checkpoint` and training (train.per_model.<model>.init_weights)
take. Nothing is downloaded: the checkpoint is a local file.
    dice import DiT-XL-2-256x256.pt [--model dit-xl-2] [--out FILE.safetensors]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dice_core.errors import InputError
from dice_core.models.dit_import import import_dit
from dice_core.models.serialization import save_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="DiT's .pt (DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt) "
                                           "or a checkpoint of DiT's train.py (its ema is taken)")
    parser.add_argument("--model", default="dit-xl-2", help="the DiT preset it holds")
    parser.add_argument("--out", help="the .safetensors to write (default: beside the "
                                      "checkpoint, under its name)")


def run(args: argparse.Namespace) -> Path:
    source = Path(args.checkpoint)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    out = Path(args.out) if args.out else source.with_suffix(".safetensors")
    if out.resolve() == source.resolve():
        raise InputError(f"--out {out} is the checkpoint itself: name another file")
    model = import_dit(source, args.model)
    save_model(model, out)
    data = model.trained_on
    print(f"{source} -> {out}: {args.model}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, trained on {data['source']} at {data['resolution']}x"
          f"{data['resolution']} (latents {tuple(data['latent_shape'])}, autoencoder "
          f"{data['autoencoder']})")
    return out


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("import"))
