"""The ``dice`` command: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys
import time

from dice_core.config import ParamsError
from dice_core.training.errors import NonFiniteLoss
from dice_core.models import get_preset, list_models

from . import autoencoder, classifier, encode, evaluate, prepare, reference, report, static, train
from .stage_times import record_stage_time


STAGES = [(static, "parameters, multiply-adds, samples/s"),
          (prepare, "decode, crop and shard the images"),
          (autoencoder, "train the small autoencoder of the embedded data"),
          (encode, "encode image shards to latent shards"),
          (train, "train the models (DeepSpeed, Ray Train)"),
          (reference, "feature statistics of the real images"),
          (classifier, "a small classifier of the real images, to score samples' classes"),
          (evaluate, "samples and ADM metrics of a trained model"),
          (report, "the paper's tables and figures for the trained models")]


def list_command(args: argparse.Namespace) -> None:
    for name in list_models(args.family):
        preset = get_preset(name)
        print(f"{name:<18}{preset.family:<6}{preset.note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dice", description="DICE / DiT / DiMR pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    for stage, summary in STAGES:
        stage_parser = commands.add_parser(stage.__name__.rsplit(".", 1)[1], help=summary)
        stage.add_arguments(stage_parser)
        stage_parser.set_defaults(handler=stage.run, timed=True)

    models_parser = commands.add_parser("models", help="list the model presets")
    models_parser.add_argument("--family", choices=["dice", "dit", "dimr"])
    models_parser.set_defaults(handler=list_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        args.handler(args)
        if getattr(args, "timed", False):
            record_stage_time(args, time.perf_counter() - started)
    except (ParamsError, ValueError, NonFiniteLoss) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
