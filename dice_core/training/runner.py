"""Runs the training loop for a list of models, locally or on Ray Train, under one parent
MLflow run per pipeline (per ``train.output`` folder)."""
from __future__ import annotations

import json
from pathlib import Path

from dice_core.config import RunSpec, TrainingJob, TrainParams
from dice_core.data import check_lanes, read_latent_manifest
from dice_core.devices import pick_device
from dice_core.errors import InputError
from dice_core.tracking import open_pipeline_run, total_emissions

from .engine import resolve_precision
from .layout import batch_layout
from .loop import train_model
from .session import Placement


def preflight(train: TrainParams) -> None:
    """Everything that can be refused before any work starts."""
    batch_layout(train.global_batch, train.micro_batch, train.workers)
    resolve_precision(train.precision, pick_device(train.device))
    if train.backend == "local" and train.workers != 1:
        raise InputError("train.workers > 1 needs train.backend: ray")
    read_latent_manifest(train.data)
    check_lanes(train.data, train.workers, train.loader_workers)


def train_models(job: TrainingJob, runs: list[RunSpec]) -> list[dict]:
    """Trains each (model, training seed) run in turn, as a child of the pipeline's run."""
    train = job.train
    preflight(train)
    parent = open_pipeline_run(job.tracking, train.output)
    summaries = []
    status = "FAILED"       # a child that fails fails its parent; a later run that
    try:                    # finishes them all marks the parent finished again
        for run in runs:
            seeded = job.seeded(run.seed)
            if train.backend == "ray":
                from .ray_backend import train_with_ray
                summaries.append(train_with_ray(seeded, run.model, parent.run_id))
            else:
                summaries.append(train_model(seeded, run.model,
                                             Placement(parent_run_id=parent.run_id)))
        parent.log_metrics(pipeline_totals(train), step=0)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.close(status)
    return summaries


def pipeline_totals(train: TrainParams) -> dict:
    """Emissions summed over every run of train.runs that has finished so far."""
    runs = []
    for name in train.runs:
        path = Path(train.output) / name / "summary.json"
        if path.is_file():
            runs.append(json.loads(path.read_text()).get("emissions", {}))
    return {f"total/{key}": value for key, value in total_emissions(runs).items()}
