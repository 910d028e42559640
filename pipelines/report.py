"""Report stage: Table 1 (sample quality), Table 2 (cost), Figures 11-13 and emissions for the
models of train.models, as markdown, PNG, DVC metrics and plots, and on the parent MLflow run.

    python -m pipelines.report [--output DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from dice_core.analysis.static import analyze
from dice_core.data import read_latent_manifest
from dice_core.metrics import metric_names
from dice_core.reporting.collect import collect
from dice_core.reporting.figures import bubbles, curve
from dice_core.reporting.tables import emissions_table, table1, table2
from dice_core.tracking import total_emissions
from dice_core.training.runner import parent_tracker

from .stage_params import add_params_argument, stage_main, stage_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "report")
    parser.add_argument("--output", help="folder for report.md, figures, metrics and plots")


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "report", {"output": args.output})
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    network = params.evaluate.feature_network
    names = metric_names(network)
    manifest = read_latent_manifest(params.train.data)
    channels, size, _ = manifest["latent_shape"]
    overrides = {"in_channels": channels, "input_size": size,
                 "num_classes": manifest["num_classes"], **params.train.model_overrides}

    results = collect(params.train.models, params.train.output, params.evaluate.output)
    for r in results:   # Table 2: one run, one device, the trained models' own shapes
        r.static = analyze(r.model, overrides, config.device, torch.float32, 1,
                           config.ddpm_steps, config.timed_steps).as_dict()
    totals = total_emissions([r.emissions for r in results])

    figures = [curve(results, names["fd"], names["fd"], out / "fig11_fd_vs_step.png"),
               curve(results, names["is"], names["is"], out / "fig12_is_vs_step.png"),
               bubbles(results, names["fd"], out / "fig13_throughput_vs_fd.png")]
    (out / "report.md").write_text(
        f"# DICE vs baselines ({network} features)\n\n"
        f"## Table 1: sample quality at the final evaluation\n\n{table1(results, network)}\n\n"
        f"## Table 2: cost (samples/s at {config.ddpm_steps} DDPM steps, batch 1, "
        f"{config.device})\n\n{table2(results)}\n\n"
        f"## Emissions\n\n{emissions_table(results, totals)}\n\n"
        + "".join(f"![{f.stem}]({f.name})\n\n" for f in figures))
    (out / "table1.json").write_text(json.dumps({r.model: r.final for r in results}, indent=2))
    (out / "table2.json").write_text(json.dumps({r.model: r.static for r in results}, indent=2))
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "step", names["fd"], names["is"]])
        for r in results:
            for step, metrics in r.history:
                writer.writerow([r.model, step, metrics.get(names["fd"]),
                                 metrics.get(names["is"])])

    parent = parent_tracker(params)
    parent.log_metrics({f"{r.model}/{key}": value for r in results
                        for key, value in r.final.items() if isinstance(value, (int, float))}
                       | {f"total/{key}": value for key, value in totals.items()}, step=0)
    for path in sorted(out.iterdir()):
        parent.log_artifact(path, "report")
    parent.close()
    print(f"wrote {out / 'report.md'} with {len(figures)} figures")
    return {"results": [r.model for r in results], "output": str(out)}


main = stage_main("report")


if __name__ == "__main__":
    sys.exit(main())
