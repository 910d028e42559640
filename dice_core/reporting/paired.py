"""Paired answers to the paper's claims: the difference between two models on one metric,
its 95% interval and a verdict.

Every model samples the same labels and starting noise (the top-level sampling seed), so two
models' evaluations are paired sample by sample, and two runs with the same training seed
share their data order, noise and timesteps. With several training seeds the interval is over
seeds: mean +- t(0.975, S-1) sd / sqrt(S) of the per-seed paired differences, which already
carry each seed's sampling noise (a bootstrap over a handful of seeds undercovers). With one
seed it is a paired bootstrap over samples (both models' metrics recomputed on the same
resampled indices), which covers the sampling of the evaluation only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dice_core.models import get_preset

from .intervals import LOWER_IS_BETTER, Interval, percentile_interval

HOLDS, REVERSED, UNRESOLVED = "holds", "reversed", "cannot be told apart"


@dataclass(frozen=True)
class Claim:
    """The paper says ``claimed`` is better than ``baseline``."""
    text: str
    claimed: str
    baseline: str


def paper_claims(models: Sequence[str]) -> list[Claim]:
    """The claims ``models`` can test: the first DICE model with both of the paper's ideas
    against the first DiT, the first DiMR and the first ablation of each idea."""
    def first(test) -> str | None:
        return next((m for m in models if test(get_preset(m))), None)
    dice = first(lambda p: p.family == "dice" and not ablation(p))
    candidates = [("DICE beats DiT", first(lambda p: p.family == "dit")),
                  ("DICE beats DiMR", first(lambda p: p.family == "dimr")),
                  ("two hands beat one", first(lambda p: p.config.get("hands") == 1)),
                  ("the denoising cascade beats the residual one",
                   first(lambda p: p.config.get("cascade") == "residual"))]
    return [Claim(text, dice, baseline) for text, baseline in candidates
            if dice is not None and baseline is not None]


def ablation(preset) -> bool:
    return preset.config.get("hands") == 1 or preset.config.get("cascade") == "residual"


@dataclass(frozen=True)
class Difference:
    """``claimed`` minus ``baseline`` on one metric: the point value over all seeds, each
    seed's own value, and the 95% interval with how it was made."""
    interval: Interval
    per_seed: tuple[float, ...]
    method: str


def seed_interval(differences: Sequence[float]) -> Interval:
    """The t interval of the mean of per-seed differences (at least two seeds)."""
    values = np.asarray(differences, dtype=np.float64)
    if len(values) < 2:
        raise ValueError("an interval over seeds needs at least two seeds")
    mean = float(values.mean())
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def paired_bootstrap_interval(claimed_point: float, claimed_draws: Sequence[float],
                              baseline_point: float,
                              baseline_draws: Sequence[float]) -> Interval:
    """The interval of the difference from draws made on the same resampled indices for both
    models (draw i of one with draw i of the other), bias-shifted as ``percentile_interval``."""
    differences = np.asarray(claimed_draws) - np.asarray(baseline_draws)
    return percentile_interval(claimed_point - baseline_point, list(differences))


def difference(per_seed_points: Sequence[tuple[float, float]],
               draws: tuple[Sequence[float], Sequence[float]] | None = None) -> Difference:
    """``per_seed_points``: (claimed, baseline) for each training seed. With one seed,
    ``draws`` (the two models' paired bootstrap draws) make the interval."""
    per_seed = tuple(claimed - baseline for claimed, baseline in per_seed_points)
    if len(per_seed) > 1:
        return Difference(seed_interval(per_seed), per_seed,
                          f"t interval over {len(per_seed)} training seeds")
    if draws is None:
        raise ValueError("one training seed needs the paired bootstrap draws")
    (claimed, baseline), = per_seed_points
    interval = paired_bootstrap_interval(claimed, draws[0], baseline, draws[1])
    return Difference(interval, per_seed, "paired bootstrap over samples (sampling only)")


def claim_verdict(interval: Interval, metric: str) -> str:
    """Whether the claimed model is better than the baseline on ``metric`` (lower FD, higher
    everything else): the interval of claimed minus baseline lies wholly on the better side
    of zero (holds), wholly on the worse side (reversed), or straddles it."""
    better_is_lower = metric in LOWER_IS_BETTER
    if (interval.high < 0) if better_is_lower else (interval.low > 0):
        return HOLDS
    if (interval.low > 0) if better_is_lower else (interval.high < 0):
        return REVERSED
    return UNRESOLVED


def chance_verdicts(comparisons: int, level: float = 0.95) -> float:
    """How many of ``comparisons`` independent true-null comparisons are expected to give a
    verdict other than 'cannot be told apart' by chance alone."""
    return comparisons * (1 - level)
