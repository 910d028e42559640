"""Run a feature network over a sample set, a batch at a time."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import SampleError
from .feature_set import FeatureSet
from .samples import check_samples

FIELDS = ("pool", "logits", "spatial")


class FeatureCollector:
    """The features of ``count`` samples given a batch at a time (``add``), written into arrays
    allocated once: the samples themselves need never be in memory all at once."""

    def __init__(self, network: nn.Module, count: int):
        self.network, self.count, self.filled = network, count, 0
        self.device = next(network.parameters()).device
        self.arrays: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def add(self, images: np.ndarray) -> None:
        """Features of ``images`` (checked by ``check_samples``) on the network's device."""
        check_samples(images)
        if self.filled + len(images) > self.count:
            raise SampleError(f"more than the {self.count} samples this collector was made for")
        out = self.network(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        for field in FIELDS:
            rows = getattr(out, field).float().cpu().numpy()
            if field not in self.arrays:
                self.arrays[field] = np.empty((self.count, *rows.shape[1:]), np.float32)
            self.arrays[field][self.filled:self.filled + len(rows)] = rows
        self.filled += len(images)

    def result(self) -> FeatureSet:
        if self.filled != self.count:
            raise SampleError(f"features of {self.filled} samples, {self.count} expected")
        return FeatureSet(**self.arrays)


def extract_features(network: nn.Module, images: np.ndarray, batch_size: int = 64) -> FeatureSet:
    """Features of ``images`` (checked by ``check_samples``) on the network's device, float32."""
    check_samples(images)
    collector = FeatureCollector(network, len(images))
    for start in range(0, len(images), batch_size):
        collector.add(images[start:start + batch_size])
    return collector.result()
