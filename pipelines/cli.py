"""The ``dice`` command: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys
import time

from dice_core.config import ParamsError
from dice_core.training.errors import NonFiniteLoss
from dice_core.models import get_preset, list_models

from . import (autoencoder, classifier, encode, evaluate, flow, prepare, reference, report,
               static, tracking_delivery, train)
from .dvc_stages import StageFailed
from .settings import update_params
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
COMMANDS = [(flow, "flow", "every stage as a Prefect flow run, or its scheduled deployment"),
            (tracking_delivery, "tracking", "flush: send MLflow records journalled while it "
                                                 "was down")]


def list_command(args: argparse.Namespace) -> None:
    for name in list_models(args.family):
        preset = get_preset(name)
        print(f"{name:<18}{preset.family:<6}{preset.note}")


def profile_command(args: argparse.Namespace) -> None:
    changed = update_params(args.params, args.name, args.overrides or [])
    print(f"{args.params}: profile {args.name} " + ("written" if changed else "already in place")
          + "; `dvc repro` (or `dice flow`) runs it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dice", description="DICE / DiT / DiMR pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    for stage, summary in STAGES:
        stage_parser = commands.add_parser(stage.__name__.rsplit(".", 1)[1], help=summary)
        stage.add_arguments(stage_parser)
        stage_parser.set_defaults(handler=stage.run, timed=True)

    for module, name, summary in COMMANDS:
        command_parser = commands.add_parser(name, help=summary)
        module.add_arguments(command_parser)
        command_parser.set_defaults(handler=module.run)

    profile_parser = commands.add_parser("profile", help="lay a profile (imagenet) over "
                                                         "params.yaml, which DVC reads")
    profile_parser.add_argument("name", help="a profile of profiles/ or a .yaml file")
    profile_parser.add_argument("-S", "--set", action="append", dest="overrides",
                                metavar="KEY=VALUE", help="an override on top (repeatable)")
    profile_parser.add_argument("--params", default="params.yaml")
    profile_parser.set_defaults(handler=profile_command)

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
    except (ParamsError, ValueError, NonFiniteLoss, StageFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
