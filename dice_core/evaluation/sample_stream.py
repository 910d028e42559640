"""What an evaluation keeps of samples that pass by a batch at a time, on their way to disk or
nowhere: their features, their predicted classes and the first few, for the grid. 50,000 samples
of 256x256 (9.8 GB) are then never in memory at once."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from torch import nn

from dice_core.metrics.extract import FeatureCollector

from .classifier import predict

GRID_SAMPLES = 64


class SampleStream:
    def __init__(self, network: nn.Module, classifier: nn.Module | None, count: int):
        self.features = FeatureCollector(network, count)
        self.classifier = classifier
        self.predictions: list[np.ndarray] = []
        self.first: list[np.ndarray] = []

    def watch(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``batches`` as they come, each measured on the way."""
        for batch in batches:
            self.features.add(batch)
            if self.classifier is not None:
                self.predictions.append(predict(self.classifier, batch))
            kept = sum(len(images) for images in self.first)
            if kept < GRID_SAMPLES:
                self.first.append(batch[:GRID_SAMPLES - kept].copy())
            yield batch

    @property
    def predicted(self) -> np.ndarray | None:
        """The classifier's class of every sample, or None without a classifier."""
        return np.concatenate(self.predictions) if self.classifier is not None else None

    @property
    def grid_samples(self) -> np.ndarray:
        return np.concatenate(self.first)
