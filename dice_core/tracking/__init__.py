"""Experiment tracking: MLflow runs that survive an unreachable server, and emissions."""
from .emissions import (
    METRIC_NAMES as EMISSIONS_METRIC_NAMES,
)
from .emissions import (
    EmissionsMeter,
    paper_estimate_kg,
    total_emissions,
)
from .mlflow_tracker import RunTracker, flatten_params, open_parent_run
from .pipeline_run import PIPELINE, open_pipeline_run, pipeline_run_id

__all__ = [
    "EMISSIONS_METRIC_NAMES",
    "EmissionsMeter",
    "PIPELINE",
    "RunTracker",
    "flatten_params",
    "open_parent_run",
    "open_pipeline_run",
    "paper_estimate_kg",
    "pipeline_run_id",
    "total_emissions",
]
