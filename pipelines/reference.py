"""Reference stage: feature statistics of the real images, once, for every evaluation.

Reads the ``evaluate`` section of params.yaml (network, split, output path) and the prepare
and encode outputs; or, given an OpenAI ADM reference batch (``evaluate.reference_batch``), keeps
its statistics and adds the Inception pool features of its ``arr_0`` images.
    python -m pipelines.reference [--feature-network inception --inception-weights FILE]
    python -m pipelines.reference --reference-batch VIRTUAL_imagenet256_labeled.npz \
        --feature-network inception
"""
from __future__ import annotations

import argparse
import sys

from dice_core.evaluation.reference import build_reference, reference_from_batch

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "evaluate")
    parser.add_argument("--feature-network", choices=["inception", "effnet"])
    parser.add_argument("--inception-weights", help="a local pt_inception-2015-12-05 file")
    parser.add_argument("--reference-batch", help="an OpenAI ADM reference batch (.npz) to "
                                                  "build the reference from")
    parser.add_argument("--output", dest="reference", help="the reference .npz to write")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "evaluate", (
        "feature_network", "inception_weights", "reference_batch", "reference"))
    if config.reference_batch:
        summary = reference_from_batch(config)
        made_from = f"the arr_0 images of {config.reference_batch}, with its statistics"
    else:
        summary = build_reference(config, params.prepare.output, params.encode.output)
        made_from = f"{config.reference_split} images"
    print(f"reference: {summary['count']} {made_from}, {summary['network']} features -> "
          f"{config.reference}")
    return summary


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("reference"))
