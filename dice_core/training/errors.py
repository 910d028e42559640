"""Why a training run stops on purpose."""
from dice_core.errors import DiceError


class NonFiniteLoss(DiceError, RuntimeError):
    """Too many optimiser steps in a row were skipped for a non-finite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says at which step, from where it resumes, and how."""
