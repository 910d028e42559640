"""Why a training run stops on purpose."""


class NonFiniteLoss(RuntimeError):
    """Too many optimiser steps in a row were skipped for a non-finite loss or gradient."""
