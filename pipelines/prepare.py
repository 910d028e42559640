"""Prepare stage: decode the source's images, ADM centre crop and resize, shard them.

Reads the ``prepare`` section of params.yaml; flags override it.
    python -m pipelines.prepare [--source shapes] [--root DIR] [--output DIR]
"""
from __future__ import annotations

import argparse
import sys

from dice_core.data import open_source
from dice_core.data.prepare import prepare_dataset

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "prepare")
    parser.add_argument("--source", choices=["fashion-mnist", "imagenet", "shapes"])
    parser.add_argument("--root", help="the source's folder (ImageNet root, Fashion-MNIST files)")
    parser.add_argument("--output", help="folder for the image shards and manifest")
    parser.add_argument("--workers", type=int, help="decode processes")


def source_options(config) -> dict:
    if config.source == "shapes":
        return config.shapes.model_dump()
    if config.source == "fashion-mnist" and config.download_url:
        return {"download_url": config.download_url}
    return {}


def run(args: argparse.Namespace) -> dict:
    _, config = stage_params(args, "prepare", ("source", "root", "output", "workers"))
    source = open_source(config.source, config.root, **source_options(config))
    manifest = prepare_dataset(
        source, config.output, splits=config.splits, resolution=config.resolution,
        shard_size=config.shard_size, workers=config.workers,
        max_corrupt_fraction=config.max_corrupt_fraction, limit=config.limit_per_class,
        fingerprint={"prepare": config.model_dump()})
    for split, summary in manifest["splits"].items():
        print(f"{split}: {summary['count']} images in {len(summary['classes'])} classes, "
              f"{summary['skipped']} skipped")
    print(f"wrote {len(manifest['shards'])} shards and the manifest to {config.output}")
    return manifest


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("prepare"))
