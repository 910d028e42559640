"""``dice tracking flush`` (also the flow's last task, and the end of ``make repro``): MLflow
records that runs journalled while the server was down, sent now.

It runs outside the DVC stages, and the tracker's files it rewrites in the run folders are in
.dvcignore, so that DVC stays up to date; a server still down leaves the records where they
are, for the next delivery.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dice_core.config import load_params
from dice_core.durable import read_json
from dice_core.tracking import PIPELINE, pipeline_run_id
from dice_core.tracking.delivery import deliver_journal, journals_with_records

from .stage_params import through_running_ui

logger = logging.getLogger(__name__)


def deliver_pending(root: Path, log: logging.Logger | logging.LoggerAdapter = logger) -> int:
    """Send every journal under the project's ``train.output``; returns the records sent."""
    params = through_running_ui(load_params(root / "params.yaml"), root)
    runs_root = root / params.train.output
    sent = 0
    # the pipeline's own run first: children created now are nested under it, also when it
    # too was created while the server was down
    for state in sorted(journals_with_records(runs_root),
                        key=lambda state: state.parent.name != PIPELINE):
        summary = read_json(state.parent / "summary.json") or {}
        done, left = deliver_journal(state, params.tracking.uri, params.tracking.experiment,
                                     summary.get("status", "FINISHED"),
                                     None if state.parent.name == PIPELINE else
                                     pipeline_run_id(runs_root))
        sent += done
        log.info("%s: sent %d journalled MLflow records, %d still pending", state.parent.name,
                 done, left)
        if left:
            log.warning("MLflow at %s did not take them all; run `dice tracking flush` when it is "
                        "back", params.tracking.uri or "./mlflow.db")
    return sent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["flush"],
                        help="flush: send what the runs journalled while MLflow was down")
    parser.add_argument("--project", default=".", help="the project root (params.yaml)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sent = deliver_pending(Path(args.project))
    print(f"tracking flush: {sent} journalled MLflow records sent")
    return sent


if __name__ == "__main__":
    from pipelines.cli import run_as_module  # only as a script: `dice` imports this module
    sys.exit(run_as_module("tracking"))
