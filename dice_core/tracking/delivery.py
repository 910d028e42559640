"""Sending what runs journalled while MLflow was down, after they ended: one tracker per run
folder opens its run again, sends the journal in order and ends the run as it ended."""
from __future__ import annotations

from pathlib import Path

from .journal import Journal
from .mlflow_tracker import RunTracker


def journals_with_records(runs_root: str | Path) -> list[Path]:
    """The tracking folders under ``runs_root`` (one per model run, and the pipeline's) whose
    journal still holds records."""
    return sorted(state for state in Path(runs_root).glob("*/tracking")
                  if Journal(state).records)


def deliver_journal(state_dir: Path, tracking_uri: str | None, experiment: str,
                    status: str = "FINISHED", parent_run_id: str | None = None
                    ) -> tuple[int, int]:
    """Send ``state_dir``'s journal and end its run with ``status``; returns (records sent,
    records still pending)."""
    before = len(Journal(state_dir).records)
    tracker = RunTracker(tracking_uri, experiment, state_dir, run_name=state_dir.parent.name,
                         parent_run_id=parent_run_id, retry_seconds=0.0)
    tracker.close(status)
    left = len(Journal(state_dir).records)
    return before - left, left
