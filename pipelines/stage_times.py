"""Every stage's wall time, one JSON line per run, for the report."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dice_core.durable import append_line

# Not a DVC output: timing a stage must not make DVC think its results changed. The tests
# point DICE_STAGE_TIMES elsewhere so that they leave the project's record alone.
STAGE_TIMES = Path(os.environ.get("DICE_STAGE_TIMES", "results/stage_times.jsonl"))


def record_stage_time(args: argparse.Namespace, seconds: float) -> None:
    models = getattr(args, "model", None)
    model = models if isinstance(models, str) else ",".join(models or [])
    stage = args.command + (f"@{model}" if model else "")
    STAGE_TIMES.parent.mkdir(parents=True, exist_ok=True)
    append_line(STAGE_TIMES, json.dumps({"stage": stage, "seconds": round(seconds, 1),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))
