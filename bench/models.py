"""Forward+backward step time of DICE, DiT and DiMR, as ratios to DiT measured side by side,
and per multiply-add (attention counted): the cost of the same arithmetic in each design.

CPU: the tiny presets at 32x32x1 and at the embedded experiment's 8x8x4 latents (10 classes),
batch 16 and 128, fp32. GPU (when there is one): the paper presets in fp16 autocast at batch
32 and 128 with activation checkpointing, with peak memory. Each model runs eager, DICE also
without its kernels (kernels off: the plain model of dice.py, what the kernels are worth), and with
--compile each also torch.compile'd (timed after its compile, whose time is reported); ratios
are to DiT in the same mode. Rounds interleave the models (A B C A B C ...) so that a noisy,
shared machine slows all of them alike; the median round is reported. Results go to
bench/results/ with the device named.

    python bench/models.py [--batch-sizes 16 128] [--rounds 5] [--compile]
                           [--gpu-batch-sizes 32 128]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dice_core.analysis.static import preset_macs
from dice_core.benchmarking import (
    device_name,
    first_call_seconds,
    make_train_step,
    ratios_to_dit,
    synchronize,
    time_side_by_side,
    variants,
    write_record,
)
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.text_table import format_table, optional_cell

TINY = ["dice-t", "dit-t", "dimr-t"]
PAPER = ["dice-xl", "dit-xl-2", "dimr-xl-2r"]
RESULTS = Path(__file__).resolve().parent / "results"
# (in_channels, input_size): 32x32x1, and the embedded experiment's latents
CPU_SHAPES = [(1, 32), (4, 8)]
CPU_CLASSES = 10


def peak_memory_gib(model, step, device: torch.device) -> float:
    """Peak memory of one step of ``model`` alone: its weights, activations and gradients
    (no optimizer state), leaving out the other models held for side-by-side timing."""
    own_weights = sum(p.numel() * p.element_size() for p in model.parameters())
    others = torch.cuda.memory_allocated(device) - own_weights
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - others) / 2**30


def shape_overrides(shape: tuple[int, int] | None) -> dict:
    if shape is None:
        return {}
    return {"in_channels": shape[0], "input_size": shape[1], "num_classes": CPU_CLASSES}


def run_setting(presets: list[str], batch_size: int, device: torch.device, rounds: int,
                dtype: torch.dtype | None, checkpointing: bool,
                shape: tuple[int, int] | None = None, compiled: bool = False) -> list[dict]:
    """Every variant of ``presets`` (see ``variants``) timed side by side at one setting."""
    overrides = shape_overrides(shape)
    models = {}
    for variant in variants(presets, compiled):
        models[variant] = variant.build(**overrides).to(device)
        models[variant].set_activation_checkpointing(checkpointing)
    macs = {name: preset_macs(name, **overrides).total for name in presets}
    steps = {v: v.scoped(make_train_step(model, batch_size, device, dtype))
             for v, model in models.items()}
    first = first_call_seconds(steps, device)
    medians = time_side_by_side(steps, device, rounds)
    rows = []
    for variant, (time_ratio, per_mac_ratio) in ratios_to_dit(medians, macs).items():
        model = models[variant]
        row = {"model": variant.preset, "kernels": variant.kernels_label, "batch_size": batch_size,
               "shape": f"{model.input_size}x{model.input_size}x{model.in_channels}",
               "dtype": str(dtype).removeprefix("torch.") if dtype else "float32",
               "activation_checkpointing": checkpointing, "compiled": variant.compiled,
               "step_seconds": medians[variant], "images_per_s": batch_size / medians[variant],
               "macs_per_image": macs[variant.preset], "time_ratio_to_dit": time_ratio,
               "per_mac_ratio_to_dit": per_mac_ratio}
        if variant.compiled:
            row["compile_seconds"] = first[variant]
        if device.type == "cuda":
            row["peak_memory_gib"] = peak_memory_gib(model, steps[variant], device)
        rows.append(row)
    del models, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    header = ["model", "kernels", "shape", "batch", "dtype", "ckpt", "compiled", "step s",
              "img/s", "MMAC/img", "x DiT", "x DiT per MAC", "compile s", "peak GiB"]
    cells = [[r["model"], r["kernels"], r["shape"], r["batch_size"], r["dtype"],
              "on" if r["activation_checkpointing"] else "off",
              "yes" if r["compiled"] else "no", f"{r['step_seconds']:.4f}",
              f"{r['images_per_s']:.1f}", f"{r['macs_per_image'] / 1e6:.1f}",
              f"{r['time_ratio_to_dit']:.2f}", f"{r['per_mac_ratio_to_dit']:.2f}",
              optional_cell(r, "compile_seconds", ".0f"),
              optional_cell(r, "peak_memory_gib", ".2f")]
             for r in rows]
    return format_table(header, cells)


def record(rows: list[dict], device: torch.device) -> Path:
    return write_record(RESULTS, "models", "models: forward+backward step", device, rows,
                        format_rows(rows))


def cpu_rows(batch_sizes: list[int], rounds: int, compiled: bool) -> list[dict]:
    cpu = torch.device("cpu")
    return [row for shape in CPU_SHAPES for batch in batch_sizes
            for row in run_setting(TINY, batch, cpu, rounds, None, checkpointing=False,
                                   shape=shape, compiled=compiled)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 128],
                        help="CPU batch sizes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd models (compiling takes minutes)")
    parser.add_argument("--gpu-batch-sizes", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    reuse_freed_cpu_memory()

    cpu = torch.device("cpu")
    rows = cpu_rows(args.batch_sizes, args.rounds, args.compile)
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
