"""Reference stage: feature statistics of the real images, once, for every evaluation.

Reads the ``evaluate`` section of params.yaml (network, split, output path) and the prepare
and encode outputs.
    python -m pipelines.reference [--feature-network inception --inception-weights FILE]
"""
from __future__ import annotations

import argparse
import sys

from dice_core.evaluation.evaluate import build_reference

from .stage_params import add_params_argument, stage_main, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "evaluate")
    parser.add_argument("--feature-network", choices=["inception", "effnet"])
    parser.add_argument("--inception-weights", help="a local pt_inception-2015-12-05 file")
    parser.add_argument("--output", dest="reference", help="the reference .npz to write")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "evaluate", {
        "feature_network": args.feature_network, "inception_weights": args.inception_weights,
        "reference": args.reference})
    summary = build_reference(config, params.prepare.output, params.encode.output)
    print(f"reference: {summary['count']} {config.reference_split} images, "
          f"{summary['network']} features -> {config.reference}")
    return summary


main = stage_main("reference")


if __name__ == "__main__":
    sys.exit(main())
