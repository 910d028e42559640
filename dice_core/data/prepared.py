"""The prepare stage's images read back whole, for the stages that learn from real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .shards import read_manifest, read_shard


def prepared_images(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All prepared images of ``split`` (uint8 NHWC) and their labels."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    samples = [(arrays["image"], label) for record in manifest["shards"]
               if record["split"] == split
               for _, label, arrays in read_shard(prepared_dir / record["name"], record)]
    if not samples:
        raise DataError(f"{prepared_dir} has no '{split}' images; check prepare.splits")
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples], np.int64)
