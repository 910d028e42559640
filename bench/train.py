"""Training throughput through the real DeepSpeed engine: images/s and peak memory.

Each model runs eager, DICE also without its kernels (the plain model: what the kernels are
worth), and with --compile each also torch.compile'd as train.compile does it (the first
step's time, mostly the compile, is reported); the DICE/DiT and DiMR/DiT ratios of step time
and of step time per multiply-add are to DiT in the same mode.
CPU: the tiny presets at global batch 128 in fp32, every engine built in one process and
timed in interleaved rounds; peak memory (eager, kernels on) is how far a fresh process's
resident memory rises while it builds the engine and runs two steps (one child process per
model).
GPU (when there is one): the paper presets at global batch 128 in fp16 with activation
checkpointing, micro-batch 128 (no accumulation), with peak GPU memory and whether it fits the
24 GB of the paper's RTX 3090; one model at a time is on the device, so these ratios come from
back-to-back rather than interleaved timing.

    python bench/train.py [--rounds 3] [--gpu-micro-batch 128] [--compile]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from dice_core.analysis.static import preset_macs
from dice_core.benchmarking import (
    Variant,
    device_name,
    engine_step,
    first_call_seconds,
    ratios_to_dit,
    synchronize,
    time_side_by_side,
    variants,
    write_record,
)
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.models import build_model
from dice_core.text_table import format_table, optional_cell
from dice_core.training.engine import child_process_env, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"
GLOBAL_BATCH = 128
TINY = ["dice-t", "dit-t", "dimr-t"]
PAPER = ["dice-xl", "dit-xl-2", "dimr-xl-2r"]
RTX_3090_GIB = 24.0


def rss_growth_gib(name: str, steps: int = 2) -> float:
    """Peak resident memory above the level before the model was built, while building the
    engine and running ``steps`` steps (sampled every 2 ms; this process only)."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, step = engine_step(build_model(name), torch.device("cpu"), GLOBAL_BATCH, GLOBAL_BATCH,
                          "fp32", False)
    for _ in range(steps):
        step()
    done.set()
    sampler.join()
    return (peak - baseline) / 2**30


def cpu_peak_gib(name: str) -> float:
    """``rss_growth_gib`` in a fresh process, so that no other model's memory is counted."""
    output = subprocess.run([sys.executable, __file__, "--measure-rss", name],
                            capture_output=True, text=True, check=True,
                            env=child_process_env()).stdout.split()
    return float(output[-1])


def gpu_peak_gib(step, device: torch.device) -> float:
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def engine_steps(runs: list[Variant], device: torch.device, micro_batch: int, precision: str,
                 checkpointing: bool) -> dict:
    return {v: v.scoped(engine_step(v.build(), device, GLOBAL_BATCH, micro_batch, precision,
                                    checkpointing)[1]) for v in runs}


def time_on_gpu(runs: list[Variant], micro_batch: int, precision: str, rounds: int) -> tuple:
    """One paper-size engine at a time: each is measured alone on the device."""
    gpu = torch.device("cuda")
    first, seconds, peaks = {}, {}, {}
    for variant in runs:
        steps = engine_steps([variant], gpu, micro_batch, precision, True)
        first.update(first_call_seconds(steps, gpu))
        peaks[variant] = gpu_peak_gib(steps[variant], gpu)
        seconds.update(time_side_by_side(steps, gpu, rounds))
        del steps
        torch.cuda.empty_cache()
    return first, seconds, peaks


def time_on_cpu(runs: list[Variant], rounds: int) -> tuple:
    cpu = torch.device("cpu")
    steps = engine_steps(runs, cpu, GLOBAL_BATCH, "fp32", False)
    first = first_call_seconds(steps, cpu)
    seconds = time_side_by_side(steps, cpu, rounds)
    del steps
    peaks = {v: cpu_peak_gib(v.preset) for v in runs if not v.compiled and v.kernels}
    return first, seconds, peaks


def measure(runs: list[Variant], device: torch.device, micro_batch: int, precision: str,
            checkpointing: bool, rounds: int) -> list[dict]:
    if device.type == "cuda":
        first, seconds, peaks = time_on_gpu(runs, micro_batch, precision, rounds)
    else:
        first, seconds, peaks = time_on_cpu(runs, rounds)
    macs = {v.preset: preset_macs(v.preset).total for v in runs}
    rows = []
    for variant, (time_ratio, per_mac_ratio) in ratios_to_dit(seconds, macs).items():
        row = {"model": variant.preset, "kernels": variant.kernels_label,
               "compiled": variant.compiled, "device": str(device), "precision": precision,
               "global_batch": GLOBAL_BATCH, "micro_batch": micro_batch,
               "activation_checkpointing": checkpointing, "step_seconds": seconds[variant],
               "images_per_s": GLOBAL_BATCH / seconds[variant],
               "macs_per_image": macs[variant.preset], "time_ratio_to_dit": time_ratio,
               "per_mac_ratio_to_dit": per_mac_ratio}
        if variant.compiled:
            row["compile_seconds"] = first[variant]
        if variant in peaks:
            row["peak_memory_gib"] = peaks[variant]
            row["memory_kind"] = "cuda max allocated" if device.type == "cuda" else "RSS growth"
            if device.type == "cuda":
                row["fits_rtx_3090"] = peaks[variant] < RTX_3090_GIB
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    return format_table(
        ["model", "kernels", "compiled", "precision", "micro", "ckpt", "img/s", "x DiT time",
         "x DiT per MAC", "compile s", "peak GiB", "fits 24G"],
        [[r["model"], r["kernels"], "yes" if r["compiled"] else "no", r["precision"],
          r["micro_batch"], "on" if r["activation_checkpointing"] else "off",
          f"{r['images_per_s']:.1f}", f"{r['time_ratio_to_dit']:.2f}",
          f"{r['per_mac_ratio_to_dit']:.2f}",
          optional_cell(r, "compile_seconds", ".0f"), optional_cell(r, "peak_memory_gib", ".2f"),
          {True: "yes", False: "NO"}.get(r.get("fits_rtx_3090"), "-")] for r in rows])


def report(rows: list[dict], device: torch.device) -> None:
    print(table(rows))
    path = write_record(RESULTS, "train", "train: DeepSpeed step", device, rows, table(rows))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-micro-batch", type=int, default=GLOBAL_BATCH)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd models (compiling takes minutes)")
    parser.add_argument("--measure-rss", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    reuse_freed_cpu_memory()
    if args.measure_rss:
        print(rss_growth_gib(args.measure_rss))
        return

    cpu = torch.device("cpu")
    rows = measure(variants(TINY, args.compile), cpu, GLOBAL_BATCH, "fp32", False, args.rounds)
    print(f"CPU ({device_name(cpu)}): tiny presets, DeepSpeed fp32, global batch {GLOBAL_BATCH}")
    report(rows, cpu)

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        precision = resolve_precision("auto", gpu)
        rows = measure(variants(PAPER, args.compile), gpu, args.gpu_micro_batch, precision,
                       True, args.rounds)
        print(f"\nGPU ({device_name(gpu)}): paper presets, {precision}, activation checkpointing")
        report(rows, gpu)
    else:
        print("\nno CUDA device: the paper-preset fp16 rows need a GPU and were not measured")


if __name__ == "__main__":
    main()
