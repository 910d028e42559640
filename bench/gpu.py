"""The prepared GPU benchmark: the paper's four models side by side at the paper's shapes
(4x32x32 latents, 1000 classes), in one process, in under 5 minutes on one H100/H200.

For dice-xl, dit-xl-2, dimr-xl-2r and dimr-dice-paper (the DICE paper's 107 M DiMR row):
- training images/s through the real DeepSpeed engine at global batch 128, fp16, activation
  checkpointing: eager, and torch.compile'd while the compile budget lasts (compile seconds
  reported; a compile that fails is reported, not fatal);
- peak GPU memory of training, and whether it fits the RTX 3090's 24 GB;
- 250-step DDPM samples/s at batch 32 and 128 (fp16 weights; a few steps are timed and
  scaled to 250, as `dice static` does);
- model FLOP utilisation: 3 x 2 x forward multiply-adds x images/s against the fp16 matmul
  peak this script measures on the same device;
and the encode images/s of the SD-VAE architecture (random weights) at 256 px.
Writes gpu.json and gpu.md (naming the device) into --output (bench/results) and prints one
table. --dry-run runs every code path with the tiny presets on the CPU (fp32, tiny batches,
a tiny VAE) and writes into a temporary folder unless --output says otherwise.

It imports only models, diffusion, the DeepSpeed engine and (for the VAE) diffusers: the GPU
machine has no MLflow, Ray, DVC or data stack. On that machine, where no Makefile target
runs, it is a plain script:

    python bench/gpu.py [--dry-run] [--compile-budget 150] [--output DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a plain script, no install

from dice_core.analysis.static import preset_macs, sampling_throughput  # noqa: E402
from dice_core.benchmarking import (  # noqa: E402
    device_name,
    engine_step,
    synchronize,
    time_side_by_side,
    write_record,
)
from dice_core.models import build_model, compile_model  # noqa: E402
from dice_core.text_table import format_table, optional_cell  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RTX_3090_GIB = 24.0
SD_VAE_BLOCKS = (128, 256, 512, 512)


@dataclass
class Plan:
    """What one run measures: the paper's setting on a GPU, a miniature of it on the CPU."""
    models: list[str]
    device: torch.device
    precision: str              # of training, through DeepSpeed
    sample_dtype: torch.dtype
    global_batch: int
    sample_batches: list[int]
    ddpm_timed_steps: int
    vae_blocks: tuple[int, ...]
    vae_resolution: int
    vae_batch: int
    matmul_size: int
    timed_train_steps: int
    compile_budget_s: float
    ddpm_steps: int = 250
    shape: dict = field(default_factory=dict)


def gpu_plan(compile_budget_s: float) -> Plan:
    return Plan(["dice-xl", "dit-xl-2", "dimr-xl-2r", "dimr-dice-paper"],
                torch.device("cuda"), "fp16", torch.float16, global_batch=128,
                sample_batches=[32, 128], ddpm_timed_steps=5, vae_blocks=SD_VAE_BLOCKS,
                vae_resolution=256, vae_batch=32, matmul_size=8192, timed_train_steps=5,
                compile_budget_s=compile_budget_s)


def dry_run_plan(compile_budget_s: float) -> Plan:
    return Plan(["dice-t", "dit-t", "dimr-t"], torch.device("cpu"), "fp32", torch.float32,
                global_batch=4, sample_batches=[2], ddpm_timed_steps=2, vae_blocks=(8, 16),
                vae_resolution=32, vae_batch=2, matmul_size=256, timed_train_steps=1,
                compile_budget_s=compile_budget_s,
                shape={"in_channels": 4, "input_size": 8, "num_classes": 10})


def matmul_peak_tflops(plan: Plan) -> float:
    """The dense matmul rate of this device in the training dtype: the MFU's denominator."""
    dtype = torch.float16 if plan.device.type == "cuda" else torch.float32
    n = plan.matmul_size
    a, b = (torch.randn(n, n, device=plan.device, dtype=dtype) for _ in range(2))
    seconds = time_side_by_side({"matmul": lambda: a @ b}, plan.device, 20)["matmul"]
    return 2 * n**3 / seconds / 1e12


def train_rate(plan: Plan, name: str, compiled: bool) -> dict:
    """Images/s of one DeepSpeed step (after a warm-up step, which compiles), peak memory."""
    model = build_model(name, **plan.shape)
    if compiled:
        compile_model(model)
    start = time.perf_counter()
    engine, step = engine_step(model, plan.device, plan.global_batch, plan.global_batch,
                               plan.precision, checkpointing=True)
    if plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(plan.device)
    step()                                        # the first step (and the compile)
    synchronize(plan.device)
    first_s = time.perf_counter() - start
    seconds = time_side_by_side({name: step}, plan.device, plan.timed_train_steps)[name]
    result = {"images_per_s": plan.global_batch / seconds, "first_step_s": first_s}
    if plan.device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(plan.device) / 2**30
    del engine, step, model
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def compiled_rate(plan: Plan, name: str, budget_left_s: float) -> dict:
    """The compiled training rate, or why there is none."""
    if budget_left_s <= 0:
        return {"compiled": "skipped: compile budget spent"}
    try:
        rate = train_rate(plan, name, compiled=True)
    except Exception as error:   # a first contact with a new stack: report, do not stop
        return {"compiled": f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"}
    return {"compiled": "yes", "compiled_images_per_s": rate["images_per_s"],
            "compile_s": rate["first_step_s"]}


def sampling_rates(plan: Plan, name: str) -> dict:
    rates = {}
    for batch in plan.sample_batches:
        model = build_model(name, **plan.shape)
        rates[f"samples_per_s_b{batch}"] = sampling_throughput(
            model, str(plan.device), plan.sample_dtype, batch, plan.ddpm_steps,
            plan.ddpm_timed_steps).samples_per_s
        del model
    return rates


def model_row(plan: Plan, name: str, peak_tflops: float, budget_left_s: float) -> dict:
    macs = preset_macs(name, **plan.shape).total
    eager = train_rate(plan, name, compiled=False)
    row = {"model": name, "forward_macs_per_image": macs,
           "train_images_per_s": eager["images_per_s"],
           "mfu": 6 * macs * eager["images_per_s"] / (peak_tflops * 1e12)}
    if "peak_gib" in eager:
        row.update(peak_gib=eager["peak_gib"], fits_rtx_3090=eager["peak_gib"] < RTX_3090_GIB)
    row.update(compiled_rate(plan, name, budget_left_s))
    row.update(sampling_rates(plan, name))
    return row


def vae_encode_rate(plan: Plan) -> dict:
    """Images/s of the SD-VAE architecture's encoder (random weights: the cost does not
    depend on them), or why it was not measured."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        return {"vae": f"skipped: {error}"}
    blocks = len(plan.vae_blocks)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=plan.vae_blocks, layers_per_block=2,
                        latent_channels=4, sample_size=plan.vae_resolution,
                        norm_num_groups=min(32, plan.vae_blocks[0]))
    vae = vae.to(plan.device, plan.sample_dtype).eval()
    images = torch.randn(plan.vae_batch, 3, plan.vae_resolution, plan.vae_resolution,
                         device=plan.device, dtype=plan.sample_dtype)
    with torch.inference_mode():
        encode = {"vae": lambda: vae.encode(images).latent_dist.mean}
        seconds = time_side_by_side(encode, plan.device, 3)["vae"]
    return {"vae": "SD-VAE architecture" if plan.vae_blocks == SD_VAE_BLOCKS else "tiny VAE",
            "vae_resolution": plan.vae_resolution, "vae_encode_images_per_s":
            plan.vae_batch / seconds}


def run(plan: Plan) -> tuple[list[dict], dict]:
    peak = matmul_peak_tflops(plan)
    rows, compile_spent = [], 0.0
    for name in plan.models:
        print(f"{name} ...", flush=True)
        row = model_row(plan, name, peak, plan.compile_budget_s - compile_spent)
        compile_spent += row.get("compile_s", 0.0)
        rows.append(row)
    extras = {"matmul_peak_tflops": peak, "precision": plan.precision,
              "global_batch": plan.global_batch, "activation_checkpointing": True,
              "ddpm_steps": plan.ddpm_steps, "ddpm_timed_steps": plan.ddpm_timed_steps,
              **vae_encode_rate(plan)}
    return rows, extras


def table(rows: list[dict], plan: Plan) -> str:
    batches = plan.sample_batches
    header = ["model", "GMAC/img", "train img/s", "compiled img/s", "compile s", "MFU",
              "peak GiB", "fits 24G", *(f"samples/s b{b}" for b in batches)]
    cells = [[r["model"], f"{r['forward_macs_per_image'] / 1e9:.2f}",
              f"{r['train_images_per_s']:.1f}",
              f"{r['compiled_images_per_s']:.1f}" if "compiled_images_per_s" in r
              else r["compiled"].split(":")[0],
              optional_cell(r, "compile_s", ".0f"), f"{r['mfu']:.1%}",
              optional_cell(r, "peak_gib", ".1f"),
              {True: "yes", False: "NO"}.get(r.get("fits_rtx_3090"), "-"),
              *(f"{r[f'samples_per_s_b{b}']:.2f}" for b in batches)] for r in rows]
    return format_table(header, cells)


def summary(extras: dict) -> str:
    vae = (f"{extras['vae']} encode at {extras['vae_resolution']} px: "
           f"{extras['vae_encode_images_per_s']:.1f} images/s"
           if "vae_encode_images_per_s" in extras else f"VAE: {extras['vae']}")
    return (f"matmul peak {extras['matmul_peak_tflops']:.1f} TFLOP/s; training "
            f"{extras['precision']}, global batch {extras['global_batch']}, activation "
            f"checkpointing; sampling {extras['ddpm_steps']} DDPM steps (timed "
            f"{extras['ddpm_timed_steps']}, scaled); {vae}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="every code path with the tiny presets on the CPU")
    parser.add_argument("--compile-budget", type=float, default=150.0,
                        help="seconds of torch.compile to spend in all (0: eager only)")
    parser.add_argument("--output", help="folder for gpu.json and gpu.md")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    plan = (dry_run_plan if args.dry_run else gpu_plan)(args.compile_budget)
    output = Path(args.output or (tempfile.mkdtemp(prefix="gpu-bench-") if args.dry_run
                                  else RESULTS))
    started = time.perf_counter()
    rows, extras = run(plan)
    extras["wall_s"] = time.perf_counter() - started
    text = f"{table(rows, plan)}\n\n{summary(extras)}; {extras['wall_s']:.0f} s in all"
    print(f"{device_name(plan.device)}\n{text}")
    path = write_record(output, "gpu", "gpu: the paper's models side by side", plan.device,
                        rows, text, extras=extras, stem="gpu")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
