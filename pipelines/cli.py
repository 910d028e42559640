"""The ``dice`` command: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from dice_core.config import load_params
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.errors import DiceError
from dice_core.models import get_preset, list_models

from .settings import update_params
from .stage_outcome import record_outcome
from .stage_times import record_stage_time

# a stage is the pipelines module of its name; its time goes into the report
STAGES = [("static", "parameters, multiply-adds, samples/s"),
          ("prepare", "decode, crop and shard the images"),
          ("autoencoder", "train the small autoencoder of the embedded data"),
          ("encode", "encode image shards to latent shards"),
          ("train", "train the models (DeepSpeed, Ray Train)"),
          ("reference", "feature statistics of the real images"),
          ("classifier", "a small classifier of the real images, to score samples' classes"),
          ("evaluate", "samples and ADM metrics of a trained model"),
          ("report", "the paper's tables and figures for the trained models")]
# (pipelines module, command, summary)
COMMANDS = [("flow", "flow", "every stage as a Prefect flow run, or its scheduled deployment"),
            ("tracking_delivery", "tracking",
             "flush: send MLflow records journalled while it was down"),
            ("sample", "sample", "images of chosen classes from a model: a grid and an ADM .npz"),
            ("import_weights", "import", "DiT's released checkpoints as this project's weights")]


def list_command(args: argparse.Namespace) -> None:
    for name in list_models(args.family):
        preset = get_preset(name)
        print(f"{name:<18}{preset.family:<6}{preset.note}")


def profile_command(args: argparse.Namespace) -> None:
    changed = update_params(args.params, args.name, args.overrides or [])
    print(f"{args.params}: profile {args.name} " + ("written" if changed else "already in place")
          + "; `dvc repro` (or `dice flow`) runs it")


def runs_command(args: argparse.Namespace) -> None:
    changed = update_params(args.params)
    train = load_params(args.params).train
    print(f"{args.params}: train.runs " + ("written" if changed else "up to date") + f", "
          f"{len(train.runs)} runs ({len(train.models)} models x {len(train.seeds)} seeds):")
    for name, run in train.runs.items():
        print(f"  {name:<24}{run.model:<18}seed {run.seed:<6}{train.output}/{name}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command with its summary. Only ``command``'s module is imported, for its arguments:
    a stage then does not pay for importing all the others (Prefect, matplotlib, ...)."""
    parser = argparse.ArgumentParser(prog="dice", description="DICE / DiT / DiMR pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    for module_name, name, summary, timed in ([(n, n, text, True) for n, text in STAGES]
                                              + [(*c, False) for c in COMMANDS]):
        command_parser = commands.add_parser(name, help=summary)
        if name == command:
            module = importlib.import_module(f"pipelines.{module_name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(handler=module.run, timed=timed)

    profile_parser = commands.add_parser("profile", help="lay a profile (imagenet) over "
                                                         "params.yaml, which DVC reads")
    profile_parser.add_argument("name", help="a profile of profiles/ or a .yaml file")
    profile_parser.add_argument("-S", "--set", action="append", dest="overrides",
                                metavar="KEY=VALUE", help="an override on top (repeatable)")
    profile_parser.add_argument("--params", default="params.yaml")
    profile_parser.set_defaults(handler=profile_command)

    runs_parser = commands.add_parser("runs", help="write train.runs (DVC's train and evaluate "
                                                   "stages) from train.models x train.seeds")
    runs_parser.add_argument("--params", default="params.yaml")
    runs_parser.set_defaults(handler=runs_command)

    models_parser = commands.add_parser("models", help="list the model presets")
    models_parser.add_argument("--family", choices=["dice", "dit", "dimr"])
    models_parser.set_defaults(handler=list_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    started = time.perf_counter()
    try:
        args.handler(args)
        if getattr(args, "timed", False):
            record_stage_time(args, time.perf_counter() - started)
    except KeyboardInterrupt as interrupt:      # Ctrl-C: one line, and the shell's status
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return 130
    except DiceError as error:     # the user can fix these; anything else is a bug
        print(f"error: {error}", file=sys.stderr)
        record_outcome(2, str(error))
        return 2
    return 0


def entry(argv: list[str] | None = None) -> int:
    """A process that runs a command (``dice``, ``python -m pipelines.<stage>``): the
    process-wide settings, then the command."""
    reuse_freed_cpu_memory()
    return main(argv)


def run_as_module(command: str) -> int:
    """``python -m pipelines.<module>`` runs exactly what ``dice <command>`` runs."""
    return entry([command, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(entry())
