"""Forward+backward step time of DICE, DiT and DiMR, as ratios to DiT measured side by side.

CPU: the tiny presets at one batch size. GPU (when there is one): the paper presets in fp16
autocast at batch 32 and 128 with activation checkpointing, with peak memory.
Rounds interleave the models (A B C A B C ...) so that a noisy, shared machine slows all of
them alike; the median round is reported. Results go to bench/results/ with the device named.

    python bench/models.py [--batch-size 16] [--rounds 7] [--gpu-batch-sizes 32 128]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dice_core.benchmarking import (device_name, make_train_step, synchronize, time_side_by_side,
                                     write_record)
from dice_core.models import build_model
from dice_core.text_table import format_table

TINY = {"dice": "dice-t", "dit": "dit-t", "dimr": "dimr-t"}
PAPER = {"dice": "dice-xl", "dit": "dit-xl-2", "dimr": "dimr-xl-2r"}
RESULTS = Path(__file__).resolve().parent / "results"


def peak_memory_gib(model, step, device: torch.device) -> float:
    """Peak memory of one step of ``model`` alone: its weights, activations and gradients
    (no optimizer state), leaving out the other models held for side-by-side timing."""
    own_weights = sum(p.numel() * p.element_size() for p in model.parameters())
    others = torch.cuda.memory_allocated(device) - own_weights
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - others) / 2**30


def run_setting(presets: dict, batch_size: int, device: torch.device, rounds: int,
                dtype: torch.dtype | None, checkpointing: bool) -> list[dict]:
    models = {}
    for family, name in presets.items():
        model = build_model(name).to(device)
        model.set_activation_checkpointing(checkpointing)
        models[family] = model
    steps = {f: make_train_step(m, batch_size, device, dtype) for f, m in models.items()}
    medians = time_side_by_side(steps, device, rounds)
    rows = []
    for family, model in models.items():
        row = {"model": presets[family], "batch_size": batch_size,
               "dtype": str(dtype).removeprefix("torch.") if dtype else "float32",
               "activation_checkpointing": checkpointing,
               "step_seconds": medians[family], "images_per_s": batch_size / medians[family],
               "time_ratio_to_dit": medians[family] / medians["dit"]}
        if device.type == "cuda":
            row["peak_memory_gib"] = peak_memory_gib(model, steps[family], device)
        rows.append(row)
    del models, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    header = ["model", "batch", "dtype", "ckpt", "step s", "img/s", "x DiT", "peak GiB"]
    cells = [[r["model"], r["batch_size"], r["dtype"],
              "on" if r["activation_checkpointing"] else "off", f"{r['step_seconds']:.4f}",
              f"{r['images_per_s']:.1f}", f"{r['time_ratio_to_dit']:.2f}",
              f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else "-"]
             for r in rows]
    return format_table(header, cells)


def record(rows: list[dict], device: torch.device) -> Path:
    return write_record(RESULTS, "models", "models: forward+backward step", device, rows,
                        format_rows(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="CPU batch size")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gpu-batch-sizes", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()

    cpu = torch.device("cpu")
    rows = run_setting(TINY, args.batch_size, cpu, args.rounds, None, checkpointing=False)
    print(f"CPU ({device_name(cpu)}): tiny presets, fp32")
    print(format_rows(rows))
    print(f"wrote {record(rows, cpu)}")

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        rows = [row for batch in args.gpu_batch_sizes
                for row in run_setting(PAPER, batch, gpu, args.rounds, torch.float16,
                                       checkpointing=True)]
        print(f"\nGPU ({device_name(gpu)}): paper presets, fp16 autocast")
        print(format_rows(rows))
        print(f"wrote {record(rows, gpu)}")
    else:
        print("\nno CUDA device: the paper-preset fp16 rows need a GPU and were not measured")


if __name__ == "__main__":
    main()
