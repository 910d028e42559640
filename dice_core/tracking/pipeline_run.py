"""The pipeline's own MLflow run, one per ``train.output`` folder: the parent under which the
MLflow UI nests every model's run."""
from __future__ import annotations

from pathlib import Path

from dice_core.config import TrackingParams
from dice_core.durable import read_json

from .mlflow_tracker import RUN_FILE, RunTracker, open_parent_run

PIPELINE = "pipeline"   # its folder under train.output, and its run's name


def pipeline_state_dir(runs_root: str | Path) -> Path:
    return Path(runs_root) / PIPELINE / "tracking"


def open_pipeline_run(tracking: TrackingParams, runs_root: str | Path) -> RunTracker:
    return open_parent_run(tracking.uri, tracking.experiment, pipeline_state_dir(runs_root),
                           run_name=PIPELINE, tags={"kind": PIPELINE},
                           retry_seconds=tracking.retry_seconds)


def pipeline_run_id(runs_root: str | Path) -> str | None:
    return (read_json(pipeline_state_dir(runs_root) / RUN_FILE) or {}).get("run_id")
