"""Reference statistics on disk, refused when they were made for another setting.

Our format, one ``.npz``: ``mu``/``sigma`` (pool), ``spatial_mu``/``spatial_sigma``, ``features``
(at most 10k pool rows, for precision/recall as ADM's 10k-image reference batch) and ``meta``,
a JSON string (network, resolution, encoder or source id, count...).

OpenAI's ADM reference batches (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, optionally the ``arr_0``
images) load as they are, with no pool features, or as our reference that the reference stage
makes of them once (their statistics, and pool features of ``arr_0``). Either way such a batch
says what it was made for by its name and its images: ImageNet (``VIRTUAL_imagenet256_labeled``)
at the images' resolution, in Inception features, whatever encoder made the latents.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from dice_core.durable import replace_atomically

from .errors import MetricsError, ReferenceMismatchError
from .feature_set import FeatureSet

MAX_REFERENCE_FEATURES = 10_000
ADM_ORIGIN = "adm-reference-batch"
ADM_DATA = "imagenet"   # the one data set of OpenAI's reference batches that this project prepares


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
    """The reference at ``path`` and its meta, refused unless it was made for ``expected``
    (see ``check_meta``). An ADM batch loaded as it is has no pool features (the reference
    stage takes them from its ``arr_0`` once, see ``adm_batch_images``)."""
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
    """Every field of ``expected`` must be recorded with that value; an ADM batch must fit
    (``check_adm_fit``)."""
    if meta.get("origin") == ADM_ORIGIN:
        check_adm_fit(path, meta, expected)
        return
    for field, value in json.loads(json.dumps(expected)).items():
        if field not in meta:
            raise ReferenceMismatchError(
                f"reference {path} does not record '{field}' (this evaluation needs "
                f"{field}={value!r}); rebuild the reference")
        if meta[field] != value:
            raise ReferenceMismatchError(
                f"reference {path} was made with {field}={meta[field]!r}, but this evaluation "
                f"uses {field}={value!r}; rebuild the reference or point to the matching one")


def check_adm_fit(path: Path, meta: dict, expected: dict) -> None:
    """An ADM batch fits an evaluation of the data its name names at the resolution of its
    images, in Inception features; the encoder and the data's folder do not matter."""
    made_for = {"network": meta["network"], "source": _source_name(meta["source"]),
                "resolution": meta["resolution"]}
    wanted = {field: _source_name(value) if field == "source" else value
              for field, value in expected.items() if field in made_for}
    if all(made_for[field] == value for field, value in wanted.items()):
        return
    evaluation = ", ".join(f"{field}={value!r}" for field, value in wanted.items())
    renamed = ("If it is OpenAI's ImageNet batch renamed, give it back its name "
               "(VIRTUAL_imagenet<resolution>_labeled.npz); otherwise point"
               if made_for["source"] is None else "Point")
    raise ReferenceMismatchError(
        f"reference {path} comes from OpenAI's ADM reference batch {meta['batch']}, made for "
        f"{_adm_description(made_for)} in Inception features, and fits only an evaluation of "
        f"that; this evaluation has {evaluation}. {renamed} evaluate.reference to a reference "
        "of this data: `dvc repro reference` (evaluate.reference_batch unset) builds one from "
        "its prepared images")


def adm_batch_images(path: str | Path) -> np.ndarray:
    """The ``arr_0`` images of an ADM reference batch (uint8 NHWC)."""
    with np.load(path) as data:
        if "arr_0" not in data.files:
            raise MetricsError(
                f"{path} holds no arr_0 images to take precision/recall features from; "
                "evaluate against it as it is (FID, sFID and IS only) or use a batch with images")
        return data["arr_0"]


def _get(data, key: str) -> np.ndarray | None:
    return data[key] if key in data.files else None


def _adm_meta(path: Path, members: list[str]) -> dict:
    """What an ADM batch was made for: ImageNet when its name says so, at the resolution of its
    ``arr_0`` images (else the one its name gives: ``imagenet256``), in Inception features."""
    name = path.name.lower()
    named = re.search(r"imagenet(\d+)", name)
    if "arr_0" in members:
        resolution = int(_member_shape(path, "arr_0")[1])
    else:
        resolution = int(named.group(1)) if named else None
    return {"network": "inception", "source": {"name": ADM_DATA if ADM_DATA in name else None},
            "resolution": resolution, "origin": ADM_ORIGIN, "batch": path.name}


def _adm_description(made_for: dict) -> str:
    data = "ImageNet" if made_for["source"] == ADM_DATA else "data its file name does not name"
    size = made_for["resolution"]
    return f"{data} at {size}x{size}" if size else f"{data} at a resolution it does not say"


def _source_name(source) -> str | None:
    """A data manifest records its source as a dict with the source's name."""
    return source.get("name") if isinstance(source, dict) else source


def _member_shape(path: Path, name: str) -> tuple[int, ...]:
    """Shape of an array in an .npz without reading it (ADM's arr_0 is 10k images)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        return read_header(member)[0]
