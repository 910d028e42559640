"""The prepare stage: decode, ADM centre crop and resize, written as uint8 RGB image shards.

Shard i of a split holds the prepared images of that split's source items
[i * shard_size, (i + 1) * shard_size) in the source's order, minus the ones that could not be
decoded; those are skipped, listed in the shard's record and counted in the manifest.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import DataError
from .preprocess import center_crop_resize
from .shards import ShardSetBuilder, make_sample
from .base import SourceItem, try_decode


def prepare_item(item: SourceItem, resolution: int) -> tuple[SourceItem, np.ndarray | None,
                                                             str | None]:
    image, reason = try_decode(item)
    if image is None:
        return item, None, reason
    return item, center_crop_resize(image, resolution), None


def limit_per_class(items: Sequence[SourceItem], limit: int | None) -> list[SourceItem]:
    """The first ``limit`` items of every class, in the source's order."""
    if limit is None:
        return list(items)
    seen: Counter = Counter()
    kept = []
    for item in items:
        if seen[item.label] < limit:
            seen[item.label] += 1
            kept.append(item)
    return kept


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def prepare_dataset(source, out_dir: str | Path, *, splits: Sequence[str], resolution: int,
                    shard_size: int, workers: int = 0, max_corrupt_fraction: float = 0.0,
                    limit: int | None = None, fingerprint: dict | None = None,
                    progress: bool = True) -> dict:
    """Writes ``out_dir/shard-*.tar`` (``image.npy`` uint8 HWC + ``cls``) and its manifest."""
    split_items = {split: limit_per_class(list(source.items(split)), limit) for split in splits}
    total = sum(len(items) for items in split_items.values())
    if total == 0:
        raise DataError(f"the {source.name} source has no images in {list(splits)}; check "
                        "`prepare.root` and `prepare.splits` in params.yaml")
    identity = source.identity()   # listing an ImageNet folder is slow: once
    builder = ShardSetBuilder(out_dir, {**(fingerprint or {}), "source": identity,
                                        "splits": list(splits), "resolution": resolution,
                                        "shard_size": shard_size, "limit_per_class": limit})
    allowed = max_corrupt_fraction * total
    skipped = sum(len(record["skipped"]) for record in builder.records)
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    bar = tqdm(total=total, unit="img", desc=f"prepare {source.name}", disable=not progress)
    index = 0
    try:
        for split, items in split_items.items():
            for chunk in chunks(items, shard_size):
                if builder.is_done(index):
                    bar.update(len(chunk))
                    index += 1
                    continue
                mapper = pool.map if pool else map
                results = list(mapper(prepare_item, chunk, [resolution] * len(chunk),
                                      **({"chunksize": 16} if pool else {})))
                bad = [{"key": item.key, "reason": reason}
                       for item, image, reason in results if image is None]
                good = [(item, image) for item, image, _ in results if image is not None]
                skipped += len(bad)
                if skipped > allowed:
                    examples = "; ".join(f"{b['key']}: {b['reason']}" for b in bad[:3])
                    raise DataError(
                        f"{skipped} of {total} images could not be decoded, more than "
                        f"prepare.max_corrupt_fraction = {max_corrupt_fraction} allows "
                        f"(for example {examples}); fix or remove those files, or raise "
                        "the fraction in params.yaml")
                builder.add(index, (make_sample(item.key, item.label, {"image": image})
                                    for item, image in good),
                            split=split, classes=dict(Counter(item.label for item, _ in good)),
                            skipped=bad)
                bar.update(len(chunk))
                index += 1
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return builder.finish(kind="images", source=identity, resolution=resolution,
                          image_shape=[resolution, resolution, 3],
                          num_classes=source.num_classes, class_names=list(source.class_names))
