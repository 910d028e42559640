"""The encode stage: prepared image shards -> latent shards of the VAE moments of every image
and of its mirror (flips are the only augmentation, applied at load time).

Encoded shard i comes from prepared shard i. Each sample stores ``moments.npy`` shaped
(2 views [image, mirror], M, C, h, w), where M = 2 (mean, logvar) for a stochastic encoder and
M = 1 (mean) for a deterministic one, in the configured storage dtype.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import DataError
from .shards import ShardSetBuilder, make_sample, read_manifest, read_shard

STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


def encode_views(encoder, images: np.ndarray, storage_dtype) -> np.ndarray:
    """uint8 (N, H, W, 3) -> moments (N, 2, M, C, h, w) for the images and their mirrors."""
    batch = torch.from_numpy(np.concatenate([images, images[:, :, ::-1]]))
    mean, logvar = encoder.moments(batch)
    parts = [mean] if logvar is None else [mean, logvar]
    moments = torch.stack(parts, dim=1).cpu().numpy()          # (2N, M, C, h, w)
    count = len(images)
    return np.stack([moments[:count], moments[count:]], axis=1).astype(storage_dtype)


def encode_dataset(encoder, prepared_dir: str | Path, out_dir: str | Path, *, batch_size: int,
                   storage_dtype: str = "float32", fingerprint: dict | None = None,
                   progress: bool = True) -> dict:
    prepared_dir = Path(prepared_dir)
    prepared = read_manifest(prepared_dir)
    if prepared.get("kind") != "images":
        raise DataError(f"{prepared_dir} does not hold prepared images; point encode.input at "
                        "the prepare stage's output")
    if storage_dtype not in STORAGE_DTYPES:
        raise DataError(f"storage dtype {storage_dtype!r} is not one of {list(STORAGE_DTYPES)}")
    dtype = STORAGE_DTYPES[storage_dtype]
    if hasattr(encoder, "check_made_for"):
        encoder.check_made_for(prepared)
    resolution = prepared["resolution"]
    latent_shape = encoder.latent_shape(resolution)
    builder = ShardSetBuilder(out_dir, {**(fingerprint or {}), "encoder": encoder.name,
                                        "encoder_identity": encoder.identity,
                                        "input_sha256": [r["sha256"] for r in prepared["shards"]],
                                        "storage_dtype": storage_dtype})
    total = sum(record["count"] for record in prepared["shards"])
    bar = tqdm(total=total, unit="img", desc=f"encode ({encoder.name})", disable=not progress)
    started, encoded = time.perf_counter(), 0
    try:
        for index, record in enumerate(prepared["shards"]):
            if builder.is_done(index):
                bar.update(record["count"])
                continue
            samples = read_shard(prepared_dir / record["name"], record)
            moments = []
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                images = np.stack([arrays["image"] for _, _, arrays in chunk])
                moments.append(encode_views(encoder, images, dtype))
                bar.update(len(chunk))
                encoded += len(chunk)
                bar.set_postfix(img_per_s=f"{encoded / (time.perf_counter() - started):.1f}")
            moments = np.concatenate(moments) if moments else np.empty((0,))
            builder.add(index, (make_sample(key, label, {"moments": m})
                                for (key, label, _), m in zip(samples, moments)),
                        split=record["split"], classes=record["classes"],
                        skipped=record["skipped"])
    finally:
        bar.close()
    return builder.finish(
        kind="latents", encoder=encoder.name, encoder_source=getattr(encoder, "source", None),
        encoder_identity=encoder.identity,
        stochastic=encoder.stochastic,
        scale_factor=encoder.scale_factor, latent_shape=list(latent_shape),
        storage_dtype=storage_dtype, resolution=resolution, source=prepared["source"],
        num_classes=prepared["num_classes"], class_names=prepared["class_names"])
