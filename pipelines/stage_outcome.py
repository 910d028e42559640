"""A stage's own outcome, for the flow, which sees only DVC's exit status.

The flow names a file outside the project in ``DICE_STAGE_OUTCOME`` for each stage it runs
through DVC; a command that stops with an error the user must fix writes its exit status and
message there, so that the flow does not retry what would fail the same way."""
from __future__ import annotations

import os

from dice_core.durable import write_json_atomic

OUTCOME_VARIABLE = "DICE_STAGE_OUTCOME"


def record_outcome(exit_status: int, message: str) -> None:
    """Write the outcome where the flow asked for it; nothing when no flow asked."""
    path = os.environ.get(OUTCOME_VARIABLE)
    if path:
        write_json_atomic(path, {"exit_status": exit_status, "message": message})
