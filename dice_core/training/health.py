"""What the loop watches in the loss: the window between two logs, and divergence.

A checkpoint is *healthy* when its step was applied (it is not inside a streak of skipped
steps), the mean loss of the steps applied since the previous checkpoint and the last step's
loss are at most ``factor`` times the run's reference loss, and every weight is finite. The
reference is the lowest mean loss of a healthy interval so far, or the first step's loss before
there is one. Skipped steps do not change the weights (and fp16's loss scaler skips a few by
design), so they count only through the streak. A divergence need not be non-finite at first:
with lr 1e6 the weights stayed finite (up to 1.7e6) for several steps while the loss reached
1e28, so the loss rule, not finiteness alone, marks such checkpoints unhealthy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch


@dataclass
class LossWindow:
    """The steps since the last log: mean loss, skipped steps and throughput. The throughput
    is the steps' alone: the time of the evaluations and checkpoints in the window is left
    out (``exclude``)."""
    loss_sum: float = 0.0
    count: int = 0
    skipped: int = 0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0

    def add(self, loss: float | None) -> None:
        """``loss`` None: the optimiser skipped the step."""
        self.steps += 1
        if loss is None:
            self.skipped += 1
        else:
            self.loss_sum += loss
            self.count += 1

    def metrics(self, global_batch: int) -> dict[str, float]:
        seconds = time.perf_counter() - self.started - self.excluded
        metrics = {"train/steps_per_s": self.steps / seconds,
                   "train/images_per_s": self.steps * global_batch / seconds,
                   "train/skipped_steps": self.skipped}
        if self.count:
            metrics["train/loss"] = self.loss_sum / self.count
        return metrics

    def restart_clock(self) -> None:
        self.started, self.excluded = time.perf_counter(), 0.0

    def exclude(self, seconds: float) -> None:
        """Seconds inside the window that were not spent on its steps."""
        self.excluded += seconds

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed run logs the same window (not the clock)."""
        return {"loss_sum": self.loss_sum, "count": self.count, "skipped": self.skipped}

    @classmethod
    def from_state(cls, state: dict | None) -> LossWindow:
        return cls(**(state or {}))


@dataclass
class DivergenceGuard:
    """Counts skipped steps in a row and judges every checkpoint healthy or not."""
    max_streak: int
    factor: float
    streak: int = 0
    reference: float | None = None
    interval_sum: float = 0.0
    interval_count: int = 0
    last_loss: float | None = None

    def observe(self, loss: float | None) -> bool:
        """Records one step (``loss`` None: skipped); True when the streak of skipped steps
        has reached ``max_streak``."""
        if loss is None:
            self.streak += 1
            return self.streak >= self.max_streak
        self.streak = 0
        if self.reference is None:
            self.reference = loss
        self.interval_sum += loss
        self.interval_count += 1
        self.last_loss = loss
        return False

    def judge_checkpoint(self, model: torch.nn.Module) -> bool:
        """Whether the checkpoint being written now is healthy; starts the next interval."""
        healthy = self._loss_in_range() and weights_are_finite(model)
        if healthy:
            self.reference = min(self.reference, self.interval_sum / self.interval_count)
        self.interval_sum, self.interval_count = 0.0, 0
        return healthy

    def _loss_in_range(self) -> bool:
        if self.streak or not self.interval_count:
            return False
        limit = self.factor * self.reference
        mean = self.interval_sum / self.interval_count
        return math.isfinite(mean) and mean <= limit and self.last_loss <= limit

    def state(self) -> dict:
        """Saved with a checkpoint, where the interval has just started."""
        return {"consecutive_skips": self.streak, "loss_reference": self.reference}

    @classmethod
    def from_state(cls, state: dict, max_streak: int, factor: float) -> DivergenceGuard:
        return cls(max_streak, factor, streak=state.get("consecutive_skips", 0),
                   reference=state.get("loss_reference"))


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())

