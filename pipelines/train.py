"""Train stage: one run per model and training seed, under one parent MLflow run for the
pipeline.

Reads the ``train``, ``tracking`` and ``emissions`` sections of params.yaml; flags override.
    python -m pipelines.train [--model dice] [--training-seed 1] [--steps N] [--backend ray]
"""
from __future__ import annotations

import argparse
import json
import sys

from dice_core.config import RunSpec, TrainingJob, TrainParams
from dice_core.errors import InputError
from dice_core.models import get_preset
from dice_core.training.runner import train_models

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "train")
    parser.add_argument("--model", action="append",
                        help="a preset (dice-t) or a family (dice) among train.models; "
                             "repeatable; default: every model in train.models")
    parser.add_argument("--training-seed", type=int, action="append", dest="training_seeds",
                        help="a seed of train.seeds; repeatable; default: every one")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output", help="folder of the runs (one sub-folder per run)")
    parser.add_argument("--backend", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, help="Ray Train workers")
    parser.add_argument("--ray-address", help="auto, ray://host:port; default: a local cluster")
    parser.add_argument("--device", help="auto, cpu, cuda")


def select_models(requested: list[str] | None, configured: list[str]) -> list[str]:
    """Presets as given; a family name picks that family's model from train.models."""
    if not requested:
        return list(configured)
    chosen = []
    for name in requested:
        matches = [m for m in configured if get_preset(m).family == name] or [
            get_preset(name).name]
        if len(matches) > 1:
            raise InputError(f"--model {name} matches {matches} in train.models; name one")
        chosen.extend(matches)
    return chosen


def select_runs(models: list[str], seeds: list[int] | None, train: TrainParams) -> list[RunSpec]:
    """The runs of train.runs of these models, with these seeds (all of train.seeds if None)."""
    unknown = sorted(set(seeds or ()) - set(train.seeds))
    if unknown:
        raise InputError(f"--training-seed {', '.join(map(str, unknown))} is not in train.seeds "
                         f"{train.seeds}: add it there (then `dice runs`) or name one of them")
    return [RunSpec(model=model, seed=seed) for seed in (seeds or train.seeds)
            for model in models]


def run(args: argparse.Namespace) -> list[dict]:
    params, train = stage_params(
        args, "train", ("steps", "output", "backend", "workers", "ray_address", "device"))
    job = TrainingJob.of(params.model_copy(update={"train": train}))
    runs = select_runs(select_models(args.model, train.models), args.training_seeds, train)
    summaries = train_models(job, runs)
    print(json.dumps(summaries, indent=2))
    return summaries


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("train"))
