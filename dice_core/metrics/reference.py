"""Reference statistics on disk, refused when they were made for another setting.

Our format, one ``.npz``: ``mu``/``sigma`` (pool), ``spatial_mu``/``spatial_sigma``, ``features``
(at most 10k pool rows, for precision/recall as ADM's 10k-image reference batch) and ``meta``,
a JSON string (network, resolution, encoder or source id, count...). ADM's own reference
batches (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, optionally the ``arr_0`` images) load as an
Inception reference.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from dice_core.durable import replace_atomically

from .errors import MetricsError, ReferenceMismatchError
from .feature_set import FeatureSet

MAX_REFERENCE_FEATURES = 10_000
ADM_SOURCE = "adm-reference-batch"


def save_reference(path: str | Path, features: FeatureSet, meta: dict) -> None:
    """Write ``features``' statistics, up to 10k of its pool rows and ``meta`` (``count``
    defaults to the number of pool rows) to ``path``, atomically."""
    path = Path(path)
    mu, sigma = features.pool_statistics()
    arrays = {"mu": mu, "sigma": sigma,
              "meta": np.array(json.dumps({"count": features.count, **meta}))}
    if features.has_spatial:
        arrays["spatial_mu"], arrays["spatial_sigma"] = features.spatial_statistics()
    if features.pool is not None:
        arrays["features"] = spread_subset(features.pool, MAX_REFERENCE_FEATURES)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda stream: np.savez(stream, **arrays))


def spread_subset(rows: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows evenly spread over ``rows``: prepared data is stored class by
    class, so the first rows would cover only the first classes."""
    if len(rows) <= limit:
        return rows
    return rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]


def load_reference(path: str | Path, expected: dict) -> tuple[FeatureSet, dict]:
    """The reference at ``path`` and its meta, refused unless every field of ``expected`` is
    recorded with that value. An ADM batch records ``network`` ("inception"), ``source`` and,
    when it holds ``arr_0``, ``resolution``; its ``features`` are absent (extract them from
    ``arr_0`` for precision/recall)."""
    path = Path(path)
    with np.load(path) as data:
        if "meta" in data.files:
            meta = json.loads(str(data["meta"]))
            features = FeatureSet(
                pool=_get(data, "features"), mu=data["mu"], sigma=data["sigma"],
                spatial_mu=_get(data, "spatial_mu"), spatial_sigma=_get(data, "spatial_sigma"))
        elif {"mu", "sigma", "mu_s", "sigma_s"} <= set(data.files):
            meta = _adm_meta(path, data.files)
            features = FeatureSet(mu=data["mu"], sigma=data["sigma"], spatial_mu=data["mu_s"],
                                  spatial_sigma=data["sigma_s"])
        else:
            raise MetricsError(
                f"{path} is neither a reference saved by save_reference nor an ADM reference "
                f"batch with precomputed statistics (mu, sigma, mu_s, sigma_s); it holds "
                f"{sorted(data.files)}")
    check_meta(path, meta, expected)
    return features, meta


def check_meta(path: Path, meta: dict, expected: dict) -> None:
    for field, value in json.loads(json.dumps(expected)).items():
        if field not in meta:
            raise ReferenceMismatchError(
                f"reference {path} does not record '{field}' (this evaluation needs "
                f"{field}={value!r}); rebuild the reference")
        if meta[field] != value:
            raise ReferenceMismatchError(
                f"reference {path} was made with {field}={meta[field]!r}, but this evaluation "
                f"uses {field}={value!r}; rebuild the reference or point to the matching one")


def _get(data, key: str) -> np.ndarray | None:
    return data[key] if key in data.files else None


def _adm_meta(path: Path, members: list[str]) -> dict:
    meta = {"network": "inception", "source": ADM_SOURCE}
    if "arr_0" in members:
        meta["resolution"] = int(_member_shape(path, "arr_0")[1])
    return meta


def _member_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape of an array in an .npz without reading it (ADM's arr_0 is 10k images)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        return read_header(member)[0]
