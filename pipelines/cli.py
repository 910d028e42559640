"""The ``dice`` command: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys

from dice_core.config import ParamsError
from dice_core.models import get_preset, list_models

from . import encode, prepare, static


def list_command(args: argparse.Namespace) -> None:
    for name in list_models(args.family):
        preset = get_preset(name)
        print(f"{name:<18}{preset.family:<6}{preset.note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dice", description="DICE / DiT / DiMR pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    static_parser = commands.add_parser("static", help="parameters, multiply-adds, samples/s")
    static.add_arguments(static_parser)
    static_parser.set_defaults(handler=static.run)

    prepare_parser = commands.add_parser("prepare", help="decode, crop and shard the images")
    prepare.add_arguments(prepare_parser)
    prepare_parser.set_defaults(handler=prepare.run)

    encode_parser = commands.add_parser("encode", help="encode image shards to latent shards")
    encode.add_arguments(encode_parser)
    encode_parser.set_defaults(handler=encode.run)

    models_parser = commands.add_parser("models", help="list the model presets")
    models_parser.add_argument("--family", choices=["dice", "dit", "dimr"])
    models_parser.set_defaults(handler=list_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ParamsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
