"""Classifier stage: a small CNN trained on the real (prepared) images, to score whether a
generated sample shows the class it was asked for.

Reads the ``classifier`` section of params.yaml.
    python -m pipelines.classifier [--epochs N] [--output FILE]
"""
from __future__ import annotations

import argparse
import sys

from dice_core.data import prepared_images, read_manifest
from dice_core.devices import pick_device
from dice_core.evaluation.classifier import save_classifier, train_classifier

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "classifier")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--output", help="the .safetensors to write (a .json beside it)")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "classifier", ("epochs", "output"))
    manifest = read_manifest(params.prepare.output)
    images, labels = prepared_images(params.prepare.output, config.split)
    model, accuracy = train_classifier(
        images, labels, manifest["num_classes"], epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, input_size=config.input_size,
        holdout_fraction=config.holdout_fraction, seed=params.seed,
        device=pick_device(config.device))
    meta = {"heldout_accuracy": accuracy, "images": len(images),
            "resolution": manifest["resolution"], "source": manifest["source"]}
    save_classifier(model, config.output, meta)
    print(f"classifier: held-out accuracy {accuracy:.3f} on real images -> {config.output}")
    return meta


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("classifier"))
