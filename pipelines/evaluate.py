"""Evaluate stage: samples from a run's EMA weights and ADM's metrics against the reference.

Reads the ``evaluate`` section of params.yaml; flags override it.
    python -m pipelines.evaluate --model dice-t [--training-seed 1] [--checkpoint F] [--samples N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dice_core.config import FIRST_TRAINING_SEED, run_name
from dice_core.evaluation.evaluate import evaluate_model
from dice_core.models import get_preset
from dice_core.samplers import SAMPLERS

from .stage_params import add_params_argument, stage_params
from .weights import checked_weights, load_sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "evaluate")
    parser.add_argument("--model", required=True, help="the model whose run to evaluate")
    parser.add_argument("--training-seed", type=int, default=FIRST_TRAINING_SEED,
                        help=f"the run's training seed (default {FIRST_TRAINING_SEED}: "
                             "runs/<model>; others: runs/<model>-s<seed>)")
    parser.add_argument("--checkpoint", help="EMA weights (.safetensors); default: the "
                                             "latest checkpoint of the model's run")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--feature-network", choices=["inception", "effnet"])
    parser.add_argument("--output", help="folder for samples.npz, grid.png, metrics.json")


def run(args: argparse.Namespace) -> dict:
    get_preset(args.model)      # an unknown name is refused naming the valid ones
    params, config = stage_params(
        args, "evaluate", ("samples", "sampler", "steps", "feature_network", "output"))
    weights, manifest = checked_weights(args.checkpoint, args.model, params, args.training_seed)
    model = load_sampler(weights, config.device)
    out_dir = Path(config.output) / run_name(args.model, args.training_seed)
    metrics = evaluate_model(model, manifest, config, params.seed, out_dir, progress=True)
    print(json.dumps(metrics, indent=2))
    print(f"wrote samples.npz, grid.png and metrics.json to {out_dir}")
    return metrics


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("evaluate"))
