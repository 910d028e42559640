"""Evaluate stage: samples from a model's EMA weights and ADM's metrics against the reference.

Reads the ``evaluate`` section of params.yaml; flags override it.
    python -m pipelines.evaluate --model dice-t [--checkpoint EMA.safetensors] [--samples N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dice_core.data import read_latent_manifest
from dice_core.devices import pick_device
from dice_core.errors import InputError
from dice_core.evaluation.evaluate import evaluate_model
from dice_core.models.serialization import load_model
from dice_core.samplers import SAMPLERS
from dice_core.training import ema_weights_path

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "evaluate")
    parser.add_argument("--model", required=True, help="the model whose run to evaluate")
    parser.add_argument("--checkpoint", help="EMA weights (.safetensors); default: the "
                                             "latest checkpoint of the model's run")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--feature-network", choices=["inception", "effnet"])
    parser.add_argument("--output", help="folder for samples.npz, grid.png, metrics.json")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(
        args, "evaluate", ("samples", "sampler", "steps", "feature_network", "output"))
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise InputError(f"--checkpoint {args.checkpoint}: no such file")
    run_dir = Path(params.train.output) / args.model
    weights = args.checkpoint or ema_weights_path(run_dir)
    if weights is None or not Path(weights).is_file():
        raise InputError(f"no EMA weights for {args.model} in {run_dir}: train it first (dice "
                         f"train --model {args.model}) or pass --checkpoint FILE")
    model = load_model(weights, pick_device(config.device)).eval()
    out_dir = Path(config.output) / args.model
    manifest = read_latent_manifest(params.train.data)
    trained_on = [model.in_channels, model.input_size, model.input_size]
    if trained_on != list(manifest["latent_shape"]):
        raise InputError(f"{weights} was trained on latents of shape {tuple(trained_on)}, but "
                         f"{params.train.data} holds {tuple(manifest['latent_shape'])} "
                         f"({manifest['encoder']}): retrain on these latents (dvc repro train)")
    metrics = evaluate_model(model, manifest, config, params.seed, out_dir, progress=True)
    print(json.dumps(metrics, indent=2))
    print(f"wrote samples.npz, grid.png and metrics.json to {out_dir}")
    return metrics


if __name__ == "__main__":
    from pipelines.cli import run_as_module   # only as a script: `dice` imports this module
    sys.exit(run_as_module("evaluate"))
