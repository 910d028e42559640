"""How a global batch splits into workers, micro-batches and gradient accumulation."""
from __future__ import annotations

from dataclasses import dataclass

from dice_core.errors import InputError


@dataclass(frozen=True)
class BatchLayout:
    global_batch: int
    micro_batch: int        # per worker and forward pass
    accumulation: int       # forward passes per optimiser step
    world_size: int


def batch_layout(global_batch: int, micro_batch: int | None, world_size: int) -> BatchLayout:
    """Checks the combination before any work starts; ``micro_batch`` None = no accumulation."""
    if global_batch % world_size:
        raise InputError(f"train.global_batch = {global_batch} does not split over "
                         f"{world_size} workers; choose a multiple of train.workers")
    per_worker = global_batch // world_size
    micro = per_worker if micro_batch is None else micro_batch
    if per_worker % micro:
        raise InputError(f"train.micro_batch = {micro} does not divide the {per_worker} samples "
                         f"each of {world_size} workers gets per step (train.global_batch = "
                         f"{global_batch}); choose a divisor of {per_worker}")
    return BatchLayout(global_batch, micro, per_worker // micro, world_size)
