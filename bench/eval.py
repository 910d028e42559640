"""Evaluation throughput: sampling samples/s and feature-extraction images/s.

- sampling: each model family through ``sample_images`` with 250 DDPM steps, 50 DDIM steps and
  20 DPM-Solver steps, all samples in one batch. The decoder is the pixel encoder (an identity),
  so this is the generation alone: a VAE decode is not included.
  CPU: the tiny presets in fp32, 8 samples; the 250-step DDPM chain is timed over 25 respaced
  steps and scaled by 10 (each step is one forward of the batch whatever the spacing, so the
  only error is the per-call set-up, counted 10 times over: a slight underestimate of the rate).
  GPU (when there is one): the paper presets in fp16 autocast, 32 samples, every step timed.
- features: ``extract_features`` with EfficientNet-Lite0 (its wheel's weights) and the FID
  Inception-v3: its weights when they can be loaded, else the same architecture with random
  weights (the cost does not depend on the values), said so in its name. Random uint8 images,
  32 at 32 px on the CPU and 256 at 256 px on the GPU.
  Each model samples eager, DICE also without its kernels, and with --compile each also
  torch.compile'd (the first call's time, mostly the compile, is reported); the ratios of
  sampling time and of time per multiply-add are to DiT in the same mode and sampler.
Configurations are timed in interleaved rounds (see ``time_side_by_side``), median reported.

    python bench/eval.py [--rounds 2] [--ddpm-timed-steps 25] [--compile]
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dice_core.analysis.static import preset_macs
from dice_core.benchmarking import (
    device_name,
    first_call_seconds,
    ratios_to_dit,
    time_side_by_side,
    variants,
    write_record,
)
from dice_core.data.encoders import PixelEncoder
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.evaluation.sampling import sample_images
from dice_core.metrics import (
    FeatureNetworkError,
    FIDInceptionV3,
    extract_features,
    load_effnet_lite0,
    load_fid_inception,
)
from dice_core.text_table import format_table, optional_cell

RESULTS = Path(__file__).resolve().parent / "results"
TINY = ["dice-t", "dit-t", "dimr-t"]
PAPER = ["dice-xl", "dit-xl-2", "dimr-xl-2r"]
SAMPLERS = [("ddpm", 250), ("ddim", 50), ("dpm-solver", 20)]


def precision(dtype: torch.dtype | None) -> str:
    return f"{str(dtype).removeprefix('torch.')} autocast" if dtype else "fp32"


def generate(model, count: int, sampler: str, steps: int, dtype: torch.dtype | None) -> None:
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        sample_images(model, PixelEncoder(device), count=count, num_classes=model.num_classes,
                      seed=0, latent_shape=(model.in_channels, model.input_size,
                                            model.input_size),
                      sampler=sampler, steps=steps, batch_size=count)


def sampling_rows(presets: list[str], device: torch.device, count: int,
                  dtype: torch.dtype | None, ddpm_timed_steps: int, rounds: int,
                  compiled: bool) -> list[dict]:
    models = {v: v.build().to(device).eval() for v in variants(presets, compiled)}
    runs = {}
    for variant, model in models.items():
        for sampler, steps in SAMPLERS:
            timed = min(ddpm_timed_steps, steps) if sampler == "ddpm" else steps
            runs[variant, sampler, steps, timed] = variant.scoped(
                partial(generate, model, count, sampler, timed, dtype))
    first = first_call_seconds(runs, device)
    seconds = time_side_by_side(runs, device, rounds)
    macs = {name: preset_macs(name).total for name in presets}
    rows = []
    for sampler, steps in SAMPLERS:
        keys = {key[0]: key for key in runs if key[1] == sampler}
        totals = {v: seconds[key] * steps / key[3] for v, key in keys.items()}
        for variant, ratios in ratios_to_dit(totals, macs).items():
            key = keys[variant]
            rows.append(sampling_row(key, seconds[key], totals[variant], *ratios, device,
                                     dtype, count))
            if variant.compiled and sampler == SAMPLERS[0][0]:   # its first call compiles
                rows[-1]["compile_seconds"] = first[key]
    del models, runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def sampling_row(key: tuple, measured: float, total: float, time_ratio: float,
                 per_mac_ratio: float, device: torch.device, dtype: torch.dtype | None,
                 count: int) -> dict:
    variant, sampler, steps, timed = key
    return {"what": f"sampling {sampler} {steps} steps", "model": variant.preset,
            "kernels": variant.kernels_label, "compiled": variant.compiled, "device": str(device),
            "precision": precision(dtype), "sampler": sampler, "steps": steps,
            "timed_steps": timed, "count": count, "batch_size": count,
            "measured_seconds": measured, "seconds": total, "per_second": count / total,
            "unit": "samples/s", "time_ratio_to_dit": time_ratio,
            "per_mac_ratio_to_dit": per_mac_ratio,
            "how": "all steps timed" if timed == steps
            else f"{timed} respaced steps timed, x{steps / timed:g}"}


def feature_networks(device: torch.device) -> dict:
    networks = {"efficientnet-lite0": load_effnet_lite0(device)}
    try:
        networks["inception-v3 (FID weights)"] = load_fid_inception(device=device)
    except FeatureNetworkError as error:
        print(f"{str(error).split('. ')[0]}: timing the same architecture, random weights")
        networks["inception-v3 (random weights)"] = (
            FIDInceptionV3().requires_grad_(False).eval().to(device))
    return networks


def feature_rows(device: torch.device, resolution: int, count: int, batch_size: int,
                 rounds: int) -> list[dict]:
    images = np.random.default_rng(0).integers(0, 256, (count, resolution, resolution, 3),
                                               dtype=np.uint8)
    networks = feature_networks(device)
    seconds = time_side_by_side(
        {name: partial(extract_features, network, images, batch_size)
         for name, network in networks.items()}, device, rounds)
    return [{"what": f"features {resolution}px", "model": name, "device": str(device),
             "precision": "fp32", "resolution": resolution, "count": count,
             "batch_size": batch_size, "seconds": seconds[name],
             "per_second": count / seconds[name], "unit": "images/s",
             "how": "uint8 NHWC in, features out (incl. host-device copies)"}
            for name in networks]


def table(rows: list[dict]) -> str:
    return format_table(
        ["what", "model/network", "kernels", "compiled", "device", "per second", "unit",
         "x DiT time", "x DiT per MAC", "compile s", "how timed"],
        [[r["what"], r["model"], r.get("kernels", "-"), "yes" if r.get("compiled") else "no",
          f"{r['device']} {r['precision']}", f"{r['per_second']:.2f}", r["unit"],
          optional_cell(r, "time_ratio_to_dit", ".2f"),
          optional_cell(r, "per_mac_ratio_to_dit", ".2f"),
          optional_cell(r, "compile_seconds", ".0f"), r["how"]]
         for r in rows])


def report(rows: list[dict], device: torch.device) -> None:
    print(table(rows))
    path = write_record(RESULTS, "eval", "eval: sampling and feature extraction", device, rows,
                        table(rows))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ddpm-timed-steps", type=int, default=25,
                        help="CPU: DDPM steps actually run, scaled up to 250")
    parser.add_argument("--compile", action="store_true",
                        help="also sample with torch.compile'd models (compiling takes minutes)")
    args = parser.parse_args()
    reuse_freed_cpu_memory()

    cpu = torch.device("cpu")
    print(f"CPU ({device_name(cpu)}): tiny presets, fp32, 8 samples in one batch; "
          f"DDPM 250 timed over {args.ddpm_timed_steps} respaced steps and scaled; "
          "pixel decoder (no VAE decode)")
    rows = (sampling_rows(TINY, cpu, 8, None, args.ddpm_timed_steps, args.rounds, args.compile)
            + feature_rows(cpu, 32, 32, 32, args.rounds))
    report(rows, cpu)

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nGPU ({device_name(gpu)}): paper presets, fp16 autocast, 32 samples in one "
              "batch, every step timed; pixel decoder (no VAE decode)")
        rows = (sampling_rows(PAPER, gpu, 32, torch.float16, 250, args.rounds, args.compile)
                + feature_rows(gpu, 256, 256, 64, args.rounds))
        report(rows, gpu)
    else:
        print("\nno CUDA device: the paper-preset fp16 rows need a GPU and were not measured")


if __name__ == "__main__":
    main()
