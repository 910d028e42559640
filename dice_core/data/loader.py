"""The training loader: latent batches that depend only on (seed, batch index, layout).

Order. Every epoch the split's shards are permuted from (seed, epoch) and dealt to *lanes*, one
lane per (rank, loader worker): lane ``l`` of ``L`` takes shards ``perm[l::L]``. A lane reads its
shards in that order, each shard's samples in a permutation drawn from (seed, epoch, shard), and
epochs follow each other without a seam. A rank's batch ``j`` is its worker ``j % W``'s next
``batch_size`` samples, so batch ``j`` lives at a computable position of one lane's stream:
starting at batch ``k`` seeks there through the manifest's counts without reading earlier data.

Randomness per sample. Which view (image or mirror) and the ``eps`` of ``mean + std * eps`` are
drawn from a generator seeded by (seed, batch index, rank), never from global RNG state, so
every model and every run with the same seed and layout sees the same latents.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..seeding import LATENT_NOISE, SAMPLE_ORDER, SHARD_ORDER, seeded_generator
from .errors import DataError
from .shards import read_manifest, read_shard


# Decoded shards a loader worker keeps across epochs. The embedded data set (41 MB) fits whole;
# reading, checking and decoding its 10 shards again took 1.6 s of every 18 s epoch (about 30 s
# of each 1400-step run on 2 cores). ImageNet's do not fit, and stream as before.
SHARD_CACHE_BYTES = 512 * 2**20

Shard = tuple[list[str], np.ndarray, np.ndarray]     # keys, labels, moments


class ShardCache:
    """The shards ``load`` gives, each kept for good while they fit in ``max_bytes``; a shard
    that does not fit is held only while it is the one being read."""

    def __init__(self, load: Callable[[int], Shard], max_bytes: int):
        self.load, self.max_bytes, self.used = load, max_bytes, 0
        self.kept: dict[int, Shard] = {}
        self.current: tuple[int, Shard] | None = None

    def get(self, shard: int) -> Shard:
        if shard in self.kept:
            return self.kept[shard]
        if self.current is not None and self.current[0] == shard:
            return self.current[1]
        self.current = None             # freed before the next one is read
        data = self.load(shard)
        size = sum(part.nbytes for part in data[1:])
        if self.used + size <= self.max_bytes:
            self.kept[shard] = data
            self.used += size
        else:
            self.current = (shard, data)
        return data


class LatentBatch(NamedTuple):
    index: int                 # the rank's batch index (a training step, or a micro-step)
    latents: torch.Tensor      # float32 (B, C, h, w), already times the scale factor
    labels: torch.Tensor       # int64 (B,)
    keys: list[str]


def read_latent_manifest(folder: str | Path) -> dict:
    """The manifest of a latent shard set, refused when the folder holds something else."""
    manifest = read_manifest(folder)
    if manifest.get("kind") != "latents":
        raise DataError(f"{folder} does not hold latents; point the loader (train.data) at the "
                        "encode stage's output")
    return manifest


class LatentShards(IterableDataset):
    """Iterable of ``LatentBatch`` for one rank; use ``make_loader`` to get them in order."""

    def __init__(self, folder: str | Path, *, batch_size: int, seed: int, split: str = "train",
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 start_batch: int = 0):
        self.folder = Path(folder)
        manifest = read_latent_manifest(self.folder)
        self.records = [r for r in manifest["shards"] if r["split"] == split and r["count"] > 0]
        if not self.records:
            raise DataError(f"{self.folder} has no '{split}' samples; check prepare.splits")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside a world of {world_size}")
        self.workers = max(num_workers, 1)
        self.lanes = world_size * self.workers
        if self.lanes > len(self.records):
            raise DataError(
                f"{len(self.records)} '{split}' shards cannot feed {world_size} ranks x "
                f"{self.workers} loader workers (every lane needs a shard of its own): use fewer "
                "workers, or a smaller prepare.shard_size to get more shards")
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.start_batch = start_batch
        self.scale = float(manifest["scale_factor"])
        self.stochastic = bool(manifest["stochastic"])
        self.latent_shape = tuple(manifest["latent_shape"])
        self.num_classes = int(manifest["num_classes"])

    def lane_shards(self, epoch: int, lane: int) -> list[int]:
        """Indices (into this split's shards) that ``lane`` reads in ``epoch``, in order."""
        order = np.random.default_rng([self.seed, SHARD_ORDER, epoch]).permutation(
            len(self.records))
        return [int(i) for i in order[lane::self.lanes]]

    def sample_order(self, epoch: int, shard: int) -> np.ndarray:
        return np.random.default_rng([self.seed, SAMPLE_ORDER, epoch, shard]).permutation(
            self.records[shard]["count"])

    def lane_positions(self, lane: int, start: int) -> Iterator[tuple[int, int]]:
        """(shard, sample) pairs of the lane's endless stream, from position ``start``."""
        epoch, skip = 0, start
        while True:
            shards = self.lane_shards(epoch, lane)
            length = sum(self.records[s]["count"] for s in shards)
            if skip >= length:
                skip -= length
                epoch += 1
                continue
            for shard in shards:
                size = self.records[shard]["count"]
                if skip >= size:
                    skip -= size
                    continue
                for sample in self.sample_order(epoch, shard)[skip:]:
                    yield shard, int(sample)
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[LatentBatch]:
        info = get_worker_info()
        worker = info.id if info else 0
        if (info.num_workers if info else 1) != self.workers:
            raise RuntimeError("LatentShards was built for another number of loader workers")
        first = self.start_batch + (worker - self.start_batch) % self.workers
        lane = self.rank * self.workers + worker
        positions = self.lane_positions(lane, (first - worker) // self.workers * self.batch_size)
        shards = ShardCache(self._load, SHARD_CACHE_BYTES)
        for index in count(first, self.workers):
            picks = [next(positions) for _ in range(self.batch_size)]
            samples = []
            for shard, sample in picks:
                keys, labels, moments = shards.get(shard)
                samples.append((keys[sample], labels[sample], moments[sample]))
            yield self._batch(index, samples)

    def _load(self, shard: int) -> Shard:
        record = self.records[shard]
        samples = read_shard(self.folder / record["name"], record)
        keys = [key for key, _, _ in samples]
        labels = np.array([label for _, label, _ in samples], dtype=np.int64)
        outside = labels[(labels < 0) | (labels >= self.num_classes)]
        if outside.size:
            raise DataError(f"shard {self.folder / record['name']} holds label {outside[0]}, "
                            f"outside the manifest's {self.num_classes} classes (the last one "
                            "would be taken for the classifier-free null label); run `dvc "
                            "repro encode` to write the shard set again")
        moments = np.stack([arrays["moments"] for _, _, arrays in samples])
        return keys, labels, moments

    def _batch(self, index: int, samples: list) -> LatentBatch:
        generator = seeded_generator(self.seed, LATENT_NOISE, index, self.rank)
        moments = torch.from_numpy(np.stack([m for _, _, m in samples])).float()
        mirror = torch.rand(len(samples), generator=generator) < 0.5
        chosen = moments[torch.arange(len(samples)), mirror.long()]      # (B, M, C, h, w)
        latents = chosen[:, 0]
        if self.stochastic:
            eps = torch.randn(latents.shape, generator=generator)
            latents = latents + torch.exp(0.5 * chosen[:, 1]) * eps
        labels = torch.from_numpy(np.array([label for _, label, _ in samples], dtype=np.int64))
        return LatentBatch(index, latents * self.scale, labels, [k for k, _, _ in samples])


def in_index_order(batches, start: int) -> Iterator[LatentBatch]:
    """Yields batches by ascending index; worker round-robin can hand them over out of turn
    when the first batch is not worker 0's."""
    waiting: list = []
    expected = start
    for batch in batches:
        heapq.heappush(waiting, (batch.index, id(batch), batch))
        while waiting and waiting[0][0] == expected:
            yield heapq.heappop(waiting)[2]
            expected += 1


def check_lanes(folder: str | Path, world_size: int, num_workers: int,
                split: str = "train") -> None:
    """Refuses a layout with more (rank, loader worker) lanes than ``split`` has shards, as the
    loader would, without reading any shard."""
    LatentShards(folder, batch_size=1, seed=0, split=split, world_size=world_size,
                 num_workers=num_workers)


def make_loader(folder: str | Path, *, batch_size: int, seed: int, split: str = "train",
                rank: int = 0, world_size: int = 1, num_workers: int = 0,
                start_batch: int = 0) -> Iterator[LatentBatch]:
    """An endless iterator of this rank's batches ``start_batch, start_batch + 1, ...``."""
    dataset = LatentShards(folder, batch_size=batch_size, seed=seed, split=split, rank=rank,
                           world_size=world_size, num_workers=num_workers,
                           start_batch=start_batch)
    if num_workers == 0:
        return iter(dataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, prefetch_factor=4,
                        persistent_workers=False)
    return in_index_order(loader, start_batch)
