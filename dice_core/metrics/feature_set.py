"""Features from one feature network: per-sample arrays, precomputed statistics, or both."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adm import statistics
from .errors import MetricsError


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """``pool`` (N, D) for the Frechet distance and precision/recall, ``logits`` (N, classes) for
    the classifier score, ``spatial`` (N, S) for the spatial Frechet distance. A reference may
    carry its statistics instead (``mu``/``sigma``, ``spatial_mu``/``spatial_sigma``), made from
    more samples than the ``pool`` rows it keeps for precision/recall; stats win over rows."""

    pool: np.ndarray | None = None
    logits: np.ndarray | None = None
    spatial: np.ndarray | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    spatial_mu: np.ndarray | None = None
    spatial_sigma: np.ndarray | None = None

    @property
    def count(self) -> int | None:
        return None if self.pool is None else len(self.pool)

    @property
    def has_spatial(self) -> bool:
        return self.spatial_mu is not None or self.spatial is not None

    def pool_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return _statistics(self.mu, self.sigma, self.pool, "pool")

    def spatial_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return _statistics(self.spatial_mu, self.spatial_sigma, self.spatial, "spatial")


def _statistics(mu, sigma, features, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if mu is not None and sigma is not None:
        return np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if features is None:
        raise MetricsError(f"this feature set has neither {kind} statistics nor {kind} features")
    return statistics(features)
