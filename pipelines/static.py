"""Static analysis stage: parameters, multiply-adds, FLOPs and samples/s per model.

Reads the ``static`` section of params.yaml; command-line flags override it.
    python -m pipelines.static [--models dice-xl dit-xl-2 dimr-xl-2r] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dice_core.analysis.static import StaticReport, analyze
from dice_core.config import StaticParams
from dice_core.durable import write_json_atomic
from dice_core.text_table import format_table

from .stage_params import add_params_argument, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "static")
    parser.add_argument("--models", nargs="+", help="model presets (default: from params)")
    parser.add_argument("--json", dest="output", help="write the reports to this JSON file")
    parser.add_argument("--device", help="device for the samples/s measurement")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--ddpm-steps", type=int, help="N in 'samples/s at N DDPM steps'")
    parser.add_argument("--timed-steps", type=int,
                        help="time only this many steps and scale to --ddpm-steps")
    parser.add_argument("--no-throughput", action="store_true",
                        help="count parameters and multiply-adds only")


def settings(args: argparse.Namespace) -> StaticParams:
    """The params.yaml section, with the flags given on the command line laid over it."""
    return stage_params(args, "static", ("models", "output", "device", "dtype", "batch_size",
                                         "ddpm_steps", "timed_steps"))[1]


def report_table(reports: list[StaticReport]) -> str:
    header = ["model", "trainable", "total", "GMACs", "GMACs w/o attn", "GFLOPs", "samples/s"]
    cells = [[r.model, f"{r.trainable_params:,}", f"{r.total_params:,}",
              f"{r.macs / 1e9:.2f}", f"{r.macs_without_attention / 1e9:.2f}",
              f"{r.flops / 1e9:.2f}",
              f"{r.throughput.samples_per_s:.4f}" if r.throughput else "-"]
             for r in reports]
    return format_table(header, cells)


def run(args: argparse.Namespace) -> list[StaticReport]:
    config = settings(args)
    reports = []
    for name in tqdm(config.models, desc="static analysis", unit="model"):
        reports.append(analyze(name, config.model_overrides, config.device,
                               getattr(torch, config.dtype), config.batch_size,
                               config.ddpm_steps, config.timed_steps,
                               measure_throughput=not args.no_throughput))
    print(report_table(reports))
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config.output, [r.as_dict() for r in reports])
        print(f"wrote {config.output}")
    return reports


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("static"))
