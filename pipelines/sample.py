"""`dice sample`: images of chosen classes from a model's weights, decoded by the autoencoder that
wrote its training data: ``grid.png`` (one row per class) and ``samples.npz`` (ADM's format:
``arr_0`` uint8 NHWC, ``arr_1`` the classes). The same seed gives the same files whatever the
batch size.

Reads params.yaml for the data (train.data), the runs (train.output), the seed and, from the
evaluate section, the defaults of the sampler, steps, batch size, guided channels and device.
    dice sample --model dit-t --classes 0 Trouser --per-class 4 --cfg 3 --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dice_core.config import FIRST_TRAINING_SEED
from dice_core.data.class_names import class_ids, find_class_index, read_class_index
from dice_core.data.encoders import decoder_for
from dice_core.diffusion.guidance import check_scale
from dice_core.errors import InputError
from dice_core.evaluation.sample_file import write_adm_samples
from dice_core.evaluation.sampling import sample_batches, save_grid
from dice_core.samplers import SAMPLERS

from .stage_params import add_params_argument, stage_params
from .weights import checked_weights, load_sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "evaluate")
    parser.add_argument("--model", required=True, help="the preset; its run's latest EMA "
                                                       "weights unless --checkpoint")
    parser.add_argument("--training-seed", type=int, default=FIRST_TRAINING_SEED,
                        help="the run's training seed (its folder runs/<model>-s<seed>)")
    parser.add_argument("--checkpoint", help="weights (.safetensors): a run's EMA weights or a "
                                             "`dice import`ed file")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="class ids or names (default: every class)")
    parser.add_argument("--class-index", help="ImageNet's readable class names "
                                              "(LOC_synset_mapping.txt or imagenet_class_index"
                                              ".json); default: one in the ImageNet root")
    parser.add_argument("--per-class", type=int, default=4, help="images of each class")
    parser.add_argument("--cfg", type=float, default=1.0,
                        help="classifier-free guidance scale, DiT's convention (1: none)")
    parser.add_argument("--guidance-channels", type=int,
                        help="guide the first N latent channels (DiT's sampler: 3)")
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, help="the sampling seed; default: params.yaml's")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda")
    parser.add_argument("--out", help="the folder to write (default: <evaluate.output>/"
                                      "samples/<model>)")


def run(args: argparse.Namespace) -> Path:
    params, config = stage_params(args, "evaluate", ("sampler", "steps", "batch_size", "device",
                                                     "guidance_channels"))
    check_scale(args.cfg)
    if args.per_class < 1:
        raise InputError(f"--per-class {args.per_class}: draw at least one image of a class")
    weights, manifest = checked_weights(args.checkpoint, args.model, params, args.training_seed)
    classes = chosen_classes(args.classes, args.class_index, manifest)
    model = load_sampler(weights, config.device)
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    out = Path(args.out or Path(config.output) / "samples" / args.model)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    batches = sample_batches(
        model, decoder_for(manifest, config.device), labels=labels,
        seed=params.seed if args.seed is None else args.seed,
        latent_shape=tuple(manifest["latent_shape"]), sampler=config.sampler,
        steps=config.steps, batch_size=config.batch_size, progress=True, cfg_scale=args.cfg,
        guidance_channels=config.guidance_channels)
    write_adm_samples(out / "samples.npz", labels.numpy(), kept(batches, images))
    save_grid(out / "grid.png", np.concatenate(images), columns=args.per_class)
    names = [manifest["class_names"][index] for index in classes]
    print(f"{len(labels)} samples of {', '.join(names)} (cfg {args.cfg:g}, {config.sampler} "
          f"{config.steps} steps) -> {out / 'grid.png'}, {out / 'samples.npz'}")
    return out


def kept(batches, images: list):
    """``batches``, each also appended to ``images``."""
    for batch in batches:
        images.append(batch)
        yield batch


def chosen_classes(requested: list[str] | None, class_index: str | None,
                   manifest: dict) -> list[int]:
    names = manifest["class_names"]
    if not requested:
        return list(range(len(names)))
    index = class_index or find_class_index(manifest)
    return class_ids(requested, names, read_class_index(index) if index else None)


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("sample"))
