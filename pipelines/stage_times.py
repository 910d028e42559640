"""Every stage's wall time, one JSON line per run, for the report."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dice_core.config import run_name
from dice_core.durable import append_line

# Not a DVC output: timing a stage must not make DVC think its results changed. The tests
# point DICE_STAGE_TIMES elsewhere so that they leave the project's record alone.
STAGE_TIMES = Path(os.environ.get("DICE_STAGE_TIMES", "results/stage_times.jsonl"))


def stage_name(args: argparse.Namespace) -> str:
    """DVC's name of the stage a command ran: ``train@dice-t``, ``evaluate@dice-t-s1``."""
    models = getattr(args, "model", None)
    models = [models] if isinstance(models, str) else list(models or [])
    seeds = getattr(args, "training_seeds", None) or [getattr(args, "training_seed", None)]
    runs = [model if seed is None else run_name(model, seed) for seed in seeds for model in models]
    return args.command + (f"@{','.join(runs)}" if runs else "")


def record_stage_time(args: argparse.Namespace, seconds: float) -> None:
    stage = stage_name(args)
    STAGE_TIMES.parent.mkdir(parents=True, exist_ok=True)
    append_line(STAGE_TIMES, json.dumps({"stage": stage, "seconds": round(seconds, 1),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
