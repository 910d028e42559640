"""Report stage: Table 1 (sample quality), Table 2 (cost), the paper's claims with paired
intervals, Figures 11-13 and emissions for the runs of train.runs (every model of train.models
with every training seed of train.seeds), as markdown, PNG, DVC metrics and plots, and on the
parent MLflow run.

    python -m pipelines.report [--output DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dice_core.analysis.static import analyze
from dice_core.config import Params, run_name
from dice_core.data import prepared_images, read_latent_manifest
from dice_core.data.autoencoder import read_metadata
from dice_core.data.encoders import decoder_for
from dice_core.durable import write_text_atomic
from dice_core.evaluation.classifier import holdout_split, load_classifier, reconstruction_accuracy
from dice_core.evaluation.reference import reference_identity
from dice_core.metrics import load_reference, metric_names
from dice_core.reporting.collect import collect
from dice_core.reporting.figures import bubbles, curve
from dice_core.reporting.intervals import percentile_interval, sample_draws
from dice_core.reporting.paired import difference, paper_claims
from dice_core.reporting.sections import (
    autoencoder_section,
    claims_section,
    protocol_notes,
    ranking_section,
    read_stage_times,
    stage_times_section,
)
from dice_core.reporting.tables import emissions_table, table1, table2
from dice_core.tracking import open_pipeline_run, total_emissions

from .settings import layered_params, validate
from .stage_params import add_params_argument, stage_params
from .stage_times import STAGE_TIMES

PAPER_PROFILE = "imagenet"
RANKED = {"fd": "FD", "is": "IS", "precision": "precision", "recall": "recall",
          "class_accuracy": "class accuracy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_argument(parser, "report")
    parser.add_argument("--output", help="folder for report.md, figures, metrics and plots")


def paper_params(params_file: str) -> Params:
    """The paper's setting: the ImageNet profile laid over this params.yaml."""
    return validate(layered_params(Path(params_file), PAPER_PROFILE), f"profile {PAPER_PROFILE}")


def report_markdown(network: str, config, sections: dict, results, figures) -> str:
    return (
        f"# DICE vs baselines ({network} features)\n\n"
        "## Table 1: sample quality at the final evaluation\n\n"
        "cfg: the classifier-free guidance scale (DiT's s; 1 = none); each model's first row "
        f"is its headline, which the ranking uses.\n\n{sections['table1']}\n\n"
        f"## Table 2: cost (samples/s at {config.ddpm_steps} DDPM steps, batch 1, "
        f"{config.device})\n\n{sections['table2']}\n\n"
        f"## The paper's claims, paired (final evaluation)\n\n{sections['claims']}\n\n"
        f"## Ranking with 95% intervals (final evaluation, training seed {sections['seed']})"
        f"\n\n{sections['ranking']}\n\n"
        f"## Where this run departs from the paper's protocol\n\n{sections['protocol']}\n\n"
        f"## Autoencoder\n\n{sections['autoencoder']}\n\n"
        f"## Emissions\n\n{sections['emissions']}\n\n"
        f"## Stage wall times\n\n{sections['stage_times']}\n\n"
        "Final sample grids: "
        + ", ".join(f"[{r.run}](../eval/{r.run}/grid.png)" for r in results) + "\n\n"
        + "".join(f"![{f.stem}]({f.name})\n\n" for f in figures))


def write_data_files(out: Path, results, names: dict) -> None:
    """Tables 1 and 2 as JSON (DVC metrics) and the curves as CSV (DVC plots)."""
    write_text_atomic(out / "table1.json",
                      json.dumps({r.run: r.final for r in results}, indent=2))
    write_text_atomic(out / "table2.json",
                      json.dumps({r.model: r.static for r in results if r.static}, indent=2))
    curves = io.StringIO(newline="")
    writer = csv.writer(curves)
    writer.writerow(["run", "model", "seed", "step", names["fd"], names["is"]])
    for r in results:
        for step, metrics in r.history:
            writer.writerow([r.run, r.model, r.seed, step, metrics.get(names["fd"]),
                             metrics.get(names["is"])])
    write_text_atomic(out / "curves.csv", curves.getvalue())


def run(args: argparse.Namespace) -> dict:
    params, config = stage_params(args, "report", ("output",))
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    network = params.evaluate.feature_network
    names = metric_names(network)
    manifest = read_latent_manifest(params.train.data)
    channels, size, _ = manifest["latent_shape"]
    shape = {"in_channels": channels, "input_size": size, "num_classes": manifest["num_classes"]}

    results = collect(params.train.runs, params.train.output, params.evaluate.output)
    first_seed = params.train.seeds[0]
    firsts = [r for r in results if r.seed == first_seed]   # one run of each model
    for r in firsts:   # Table 2: one device, the trained models' own shapes
        overrides = {**shape, **params.train.for_model(r.model).model_overrides}
        r.static = analyze(r.model, overrides, config.device, torch.float32, 1,
                           config.ddpm_steps, config.timed_steps).as_dict()
    totals = total_emissions([r.emissions for r in results])
    points = final_points(results, names)
    # resampling is for the one-seed claims and the ranking, both of the first seed's runs
    draws = final_draws(params, manifest, firsts, points, config.bootstrap)
    intervals = {run: {metric: percentile_interval(points[run][metric], values)
                       for metric, values in per_metric.items()}
                 for run, per_metric in draws.items()}
    claims = paper_claims(params.train.models)
    autoencoder = autoencoder_check(params, manifest)
    times = read_stage_times(STAGE_TIMES)

    figures = [curve(results, names["fd"], names["fd"], out / "fig11_fd_vs_step.png"),
               curve(results, names["is"], names["is"], out / "fig12_is_vs_step.png"),
               bubbles(firsts, names["fd"], out / "fig13_throughput_vs_fd.png")]
    differences = paired_differences(claims, params.train.seeds, points, draws)
    sections = {"table1": table1(results, network), "table2": table2(firsts),
                "claims": claims_section(claims, differences, RANKED, params.train.seeds),
                "seed": first_seed, "ranking": ranking_section(intervals, RANKED),
                "protocol": protocol_notes(params.train, params.evaluate,
                                           paper_params(args.params), manifest),
                "autoencoder": autoencoder_section(*autoencoder),
                "emissions": emissions_table(results, totals),
                "stage_times": stage_times_section(times)}
    write_text_atomic(out / "report.md", report_markdown(network, config, sections, results,
                                                         figures))
    write_data_files(out, results, names)
    parent = open_pipeline_run(params.tracking, params.train.output)
    parent.log_metrics({f"{r.run}/{key}": value for r in results
                        for key, value in r.final.items() if isinstance(value, (int, float))}
                       | {f"total/{key}": value for key, value in totals.items()}
                       | interval_metrics(intervals) | autoencoder_metrics(*autoencoder)
                       | {f"stage_seconds/{stage.replace('@', '/')}": record["seconds"]
                          for stage, record in times.items()}, step=0)
    for path in sorted(out.iterdir()):
        parent.log_artifact(path, "report")
    parent.close()
    print(f"wrote {out / 'report.md'} with {len(figures)} figures")
    return {"results": [r.model for r in results], "output": str(out)}


def final_points(results, names: dict) -> dict:
    """{run: {metric: value}}: the headline of each run's final evaluation, by RANKED's keys."""
    points = {}
    for r in results:
        points[r.run] = {key: r.final[names.get(key, key)] for key in RANKED
                         if names.get(key, key) in r.final}
    return points


def final_draws(params: Params, manifest: dict, results, points: dict,
                resamples: int) -> dict:
    """{run: {metric: resampled values}} for the runs whose final evaluation kept its
    per-sample features (see intervals.sample_draws: the draws of runs with as many samples
    are paired)."""
    network = params.evaluate.feature_network
    reference, _ = load_reference(params.evaluate.reference,
                                  reference_identity(manifest, network))
    draws = {}
    for r in results:
        features = Path(params.evaluate.output) / r.run / "features.npz"
        if not features.is_file():
            continue
        with np.load(features) as data:
            per_sample = {key: data[key] for key in data.files}
        # evaluations from before the distances were recorded took float32
        draws[r.run] = sample_draws(
            per_sample, *reference.pool_statistics(), reference.pool, points[r.run],
            resamples, params.seed, pr_distances=r.final.get("pr_distances", "float32"))
    return draws


def paired_differences(claims, seeds: list[int], points: dict, draws: dict) -> dict:
    """{(claim, metric): Difference}: over the training seeds whose runs of both models were
    evaluated, a t interval; with one such seed, the paired bootstrap over samples."""
    found = {}
    for claim in claims:
        pairs = [(run_name(claim.claimed, seed), run_name(claim.baseline, seed))
                 for seed in seeds]
        pairs = [(a, b) for a, b in pairs if a in points and b in points]
        if not pairs:
            continue
        for metric in RANKED:
            if not all(metric in points[a] and metric in points[b] for a, b in pairs):
                continue
            values = [(points[a][metric], points[b][metric]) for a, b in pairs]
            if len(pairs) > 1:
                found[claim.text, metric] = difference(values)
                continue
            (a, b), = pairs
            if a in draws and b in draws and metric in draws[a] and metric in draws[b]:
                found[claim.text, metric] = difference(values, (draws[a][metric],
                                                                draws[b][metric]))
    return found


def autoencoder_check(params: Params, manifest: dict):
    """(the autoencoder's metadata, the classifier's accuracy on reconstructions of its
    held-out real images, its accuracy on those images), None where not applicable."""
    if manifest["encoder"] == "pixels":
        return None, None, None
    meta = read_metadata(manifest["encoder_source"])
    if not (params.evaluate.classifier and Path(params.evaluate.classifier).is_file()):
        return meta, None, None
    classifier, classifier_meta = load_classifier(params.evaluate.classifier,
                                                  torch.device("cpu"))
    images, labels = prepared_images(params.prepare.output, params.classifier.split)
    _, held = holdout_split(len(images), params.classifier.holdout_fraction, params.seed)
    accuracy = reconstruction_accuracy(classifier, decoder_for(manifest, "cpu"), images[held],
                                       labels[held])
    return meta, accuracy, classifier_meta["heldout_accuracy"]


def interval_metrics(intervals: dict) -> dict:
    return {f"{model}/{metric}_ci95_{side}": getattr(interval, side)
            for model, per_metric in intervals.items()
            for metric, interval in per_metric.items() for side in ("low", "high")}


def autoencoder_metrics(meta, reconstruction, real) -> dict:
    metrics = {} if meta is None else {
        "autoencoder/reconstruction_mse": meta["reconstruction_mse"],
        "autoencoder/scale_factor": meta["scale_factor"]}
    if reconstruction is not None:
        metrics |= {"autoencoder/classifier_accuracy_reconstructed": reconstruction,
                    "autoencoder/classifier_accuracy_real": real}
    return metrics


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("report"))
