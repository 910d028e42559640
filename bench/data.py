"""Data throughput: encode images/s, loader latents/s, and whether the loader keeps up.

- encode: the pixel encoder at 32 px (the embedded default) and the SD-VAE architecture
  (AutoencoderKL with sd-vae-ft-ema's configuration, random weights: no pretrained VAE ships
  offline, and the weights do not change the cost) at 256 px, images and mirrors together.
- loader: SD-shaped latents (4x32x32, mean and logvar, image and mirror) from shards made
  here, at the paper's batch of 128, in the main process and with 2 loader workers.
- consumption: a training step (forward+backward) at batch 128 of the fastest model
  measured (tiny presets on a CPU; the paper presets in fp16 on a GPU). The loader must
  deliver at least 10x that; the last line says whether it does.

    python bench/data.py [--vae-images 16] [--loader-batches 40]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dice_core.benchmarking import device_name, make_train_step, time_side_by_side, write_record
from dice_core.data.encode import encode_views
from dice_core.data.encoders import PixelEncoder, VAEEncoder
from dice_core.data.loader import make_loader
from dice_core.data.shards import ShardSetBuilder, make_sample
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.models import build_model
from dice_core.text_table import format_table

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_BATCH = 128
SD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                     latent_channels=4, norm_num_groups=32, sample_size=256,
                     down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4)


def encode_rate(encoder, resolution: int, count: int, batch_size: int) -> float:
    images = np.random.default_rng(0).integers(0, 256, (count, resolution, resolution, 3),
                                               dtype=np.uint8)
    encode_views(encoder, images[:batch_size], np.float32)  # warm-up
    start = time.perf_counter()
    for first in range(0, count, batch_size):
        encode_views(encoder, images[first:first + batch_size], np.float32)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    return count / (time.perf_counter() - start)


def sd_vae_encoder(folder: Path, device: torch.device) -> VAEEncoder:
    from diffusers import AutoencoderKL
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(folder)
    return VAEEncoder(str(folder), device)


def write_latent_shards(folder: Path, shards: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    builder = ShardSetBuilder(folder, {"benchmark": "loader"})
    for index in range(shards):
        moments = rng.standard_normal((per_shard, 2, 2, 4, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 1000, per_shard)
        builder.add(index, (make_sample(f"{index}/{i}", labels[i], {"moments": moments[i]})
                            for i in range(per_shard)),
                    split="train", classes={}, skipped=[])
    builder.finish(kind="latents", stochastic=True, scale_factor=0.18215,
                   latent_shape=[4, 32, 32])


def loader_rate(folder: Path, workers: int, batches: int) -> float:
    loader = make_loader(folder, batch_size=PAPER_BATCH, seed=0, num_workers=workers)
    next(loader)  # start-up (worker processes, first shard) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * PAPER_BATCH / (time.perf_counter() - start)


def consumption_rows(device: torch.device) -> list[dict]:
    if device.type == "cuda":
        presets, dtype, note = ["dice-xl", "dit-xl-2", "dimr-xl-2r"], torch.float16, "fp16"
    else:
        presets, dtype, note = ["dice-t", "dit-t", "dimr-t"], None, "fp32"
    models = {name: build_model(name).to(device) for name in presets}
    for model in models.values():
        model.set_activation_checkpointing(device.type == "cuda")
    steps = {name: make_train_step(m, PAPER_BATCH, device, dtype) for name, m in models.items()}
    seconds = time_side_by_side(steps, device, rounds=3)
    return [{"what": f"train step {name} ({note}, batch {PAPER_BATCH})", "device": str(device),
             "per_s": PAPER_BATCH / seconds[name], "unit": "img/s"} for name in presets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae-images", type=int, default=8)
    parser.add_argument("--loader-batches", type=int, default=40)
    args = parser.parse_args()
    reuse_freed_cpu_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae_images = args.vae_images * (16 if device.type == "cuda" else 1)

    rows = [{"what": "encode pixels (32 px)", "device": "cpu",
             "per_s": encode_rate(PixelEncoder(), 32, 4096, 256), "unit": "img/s"}]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        vae = sd_vae_encoder(scratch / "vae", device)
        rows.append({"what": "encode SD-VAE architecture (256 px)", "device": str(device),
                     "per_s": encode_rate(vae, 256, vae_images, min(vae_images, 32)),
                     "unit": "img/s"})
        del vae
        write_latent_shards(scratch / "latents", shards=8, per_shard=256)
        for workers in (0, 2):
            rows.append({"what": f"loader, {workers} workers (batch {PAPER_BATCH}, 4x32x32)",
                         "device": "cpu", "unit": "latents/s",
                         "per_s": loader_rate(scratch / "latents", workers,
                                              args.loader_batches)})
    consumption = consumption_rows(device)
    rows += consumption
    loader_best = max(r["per_s"] for r in rows if r["unit"] == "latents/s")
    fastest = max(consumption, key=lambda r: r["per_s"])
    margin = loader_best / fastest["per_s"]
    verdict = (f"loader {loader_best:,.0f} latents/s vs {fastest['per_s']:,.1f} img/s consumed "
               f"by the fastest model: {margin:,.1f}x -> "
               f"{'meets' if margin >= 10 else 'MISSES'} the 10x goal")

    table = format_table(["measurement", "device", "per second", "unit"],
                         [[r["what"], r["device"], f"{r['per_s']:,.1f}", r["unit"]]
                          for r in rows])
    report = f"{table}\n{verdict}"
    print(f"{device_name(device)}\n{report}")
    rows.append({"what": "verdict", "loader_over_consumption": margin, "meets_10x": margin >= 10})
    path = write_record(RESULTS, "data", "data: encode and loader throughput", device, rows,
                        report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
