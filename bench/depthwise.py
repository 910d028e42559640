"""DICE's two depthwise 7x7 'hands' with signal extraction, forward+backward and forward
alone, in the ways they could be computed: implicit padding (the convolution pads), padding
by hand (``F.pad`` first), the two hands fused into one grouped convolution, and on the CPU
the two kernels of ``dice_core.models.kernels``: the convolutions with the bias gradient
taken as a plain sum, and each channel's convolutions as one dense matrix. At the
shapes of dice-t's stages; channels-last inputs, interleaved rounds, median per variant.
Results go to bench/results/depthwise-*.{json,md}.

    python bench/depthwise.py [--rounds 9]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dice_core.benchmarking import device_name, time_side_by_side, write_record
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.models.dice import signal_extraction
from dice_core.models.kernels.dense_hands import _DenseHands
from dice_core.models.kernels.depthwise import _CpuDepthwise
from dice_core.text_table import format_table

RESULTS = Path(__file__).resolve().parent / "results"
# (batch, channels, map size): dice-t's three stages on 8x8 latents at batch 16 and 128, its
# first stage on 32x32 at batch 16, and a 6x6 map (the largest below the kernel)
SHAPES = [(16, 64, 8), (16, 128, 4), (16, 192, 2), (128, 64, 8), (128, 128, 4), (128, 192, 2),
          (16, 64, 32), (128, 96, 6)]


def hand_variants(batch: int, channels: int, size: int, device: torch.device) -> dict:
    """{name: function of x giving the hands' output} with one set of random weights."""
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(channels, 1, 7, 7, generator=generator).div_(7).to(device)
                   .requires_grad_(True) for _ in range(2))
    left_bias, right_bias = (torch.randn(channels, generator=generator).to(device)
                             .requires_grad_(True) for _ in range(2))
    lam = torch.ones(1, device=device, requires_grad=True)

    def convolutions(padded: bool, conv=F.conv2d):
        def hands(x):
            inp, pad = (F.pad(x, (3, 3, 3, 3)), 0) if padded else (x, 3)
            return signal_extraction(conv(inp, left, left_bias, padding=pad, groups=channels),
                                     conv(inp, right, right_bias, padding=pad, groups=channels),
                                     lam)
        return hands

    def bias_summed(inp, weight, bias, padding, groups):
        return _CpuDepthwise.apply(inp, weight, bias, padding)

    def fused(x):
        weight = torch.stack([left, right], 1).view(2 * channels, 1, 7, 7)
        bias = torch.stack([left_bias, right_bias], 1).view(2 * channels)
        out = F.conv2d(x, weight, bias, padding=3, groups=channels)
        return signal_extraction(*out.view(batch, channels, 2, size, size).unbind(2), lam)

    variants = {"implicit padding": convolutions(False), "padded by hand": convolutions(True),
                "fused": fused}
    if device.type == "cpu":
        variants["implicit, bias grad summed"] = convolutions(False, bias_summed)
        variants["dense matrices"] = lambda x: _DenseHands.apply(x, left, left_bias, right,
                                                                 right_bias, 3, lam)
    return variants


def timed_steps(variants: dict, x: torch.Tensor, backward: bool) -> dict:
    def step(hands):
        def run():
            if backward:
                hands(x).sum().backward()
            else:
                with torch.no_grad():
                    hands(x)
        return run
    return {name: step(hands) for name, hands in variants.items()}


def shape_rows(batch: int, channels: int, size: int, device: torch.device,
               rounds: int) -> list[dict]:
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    x = x.to(device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    variants = hand_variants(batch, channels, size, device)
    both = time_side_by_side(timed_steps(variants, x, backward=True), device, rounds)
    forward = time_side_by_side(timed_steps(variants, x, backward=False), device, rounds)
    return [{"batch": batch, "channels": channels, "size": size, "variant": name,
             "ms": 1000 * both[name], "ratio_to_implicit": both[name] / both["implicit padding"],
             "forward_ms": 1000 * forward[name],
             "forward_ratio_to_implicit": forward[name] / forward["implicit padding"]}
            for name in variants]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    reuse_freed_cpu_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [row for shape in SHAPES for row in shape_rows(*shape, device, args.rounds)]
    table = format_table(
        ["batch", "channels", "map", "variant", "fwd+bwd ms", "x implicit", "fwd ms",
         "x implicit"],
        [[r["batch"], r["channels"], f"{r['size']}x{r['size']}", r["variant"], f"{r['ms']:.2f}",
          f"{r['ratio_to_implicit']:.2f}", f"{r['forward_ms']:.2f}",
          f"{r['forward_ratio_to_implicit']:.2f}"] for r in rows])
    print(f"{device_name(device)}: the two hands and signal extraction, channels-last")
    print(table)
    path = write_record(RESULTS, "depthwise", "depthwise hands: forward+backward and forward",
                        device, rows, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
