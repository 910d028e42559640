"""DICE's two depthwise 7x7 'hands', forward+backward, in the ways they could be computed:
implicit padding (the convolution pads), padding by hand (``F.pad`` first), the two hands
fused into one grouped convolution, and on the CPU either padding with the bias gradient
taken as a plain sum (``dice_core.models.hands``), at the shapes of dice-t's stages.
Channels-last inputs, interleaved rounds, median per variant. Results go to
bench/results/depthwise-*.{json,md}.

    python bench/depthwise.py [--rounds 9]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dice_core.benchmarking import device_name, time_side_by_side, write_record
from dice_core.devices import reuse_freed_cpu_memory
from dice_core.models.hands import _CpuDepthwise
from dice_core.text_table import format_table

RESULTS = Path(__file__).resolve().parent / "results"
# (batch, channels, map size): dice-t's three stages on 8x8 latents at batch 64 and 128, and
# its first stage on 32x32 at batch 16
SHAPES = [(64, 64, 8), (64, 128, 4), (64, 192, 2), (128, 64, 8), (128, 128, 4), (128, 192, 2),
          (16, 64, 32)]


def hand_steps(batch: int, channels: int, size: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator).to(device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    left, right = (torch.randn(channels, 1, 7, 7, generator=generator).to(device)
                   .requires_grad_(True) for _ in range(2))
    left_bias, right_bias = (torch.randn(channels, generator=generator).to(device)
                             .requires_grad_(True) for _ in range(2))

    def two(padded: bool, conv=F.conv2d):
        def step():
            inp, pad = (F.pad(x, (3, 3, 3, 3)), 0) if padded else (x, 3)
            a = conv(inp, left, left_bias, padding=pad, groups=channels)
            b = conv(inp, right, right_bias, padding=pad, groups=channels)
            (a * b).sum().backward()
        return step

    def bias_summed(inp, weight, bias, padding, groups):
        return _CpuDepthwise.apply(inp, weight, bias, padding)

    def fused():
        weight = torch.stack([left, right], 1).view(2 * channels, 1, 7, 7)
        bias = torch.stack([left_bias, right_bias], 1).view(2 * channels)
        out = F.conv2d(x, weight, bias, padding=3, groups=channels)
        a, b = out.view(batch, channels, 2, size, size).unbind(2)
        (a * b).sum().backward()

    steps = {"implicit padding": two(False), "padded by hand": two(True), "fused": fused}
    if device.type == "cpu":
        steps["implicit, bias grad summed"] = two(False, bias_summed)
        steps["by hand, bias grad summed"] = two(True, bias_summed)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    reuse_freed_cpu_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for batch, channels, size in SHAPES:
        medians = time_side_by_side(hand_steps(batch, channels, size, device), device,
                                    args.rounds)
        base = medians["implicit padding"]
        rows += [{"batch": batch, "channels": channels, "size": size, "variant": name,
                  "ms": 1000 * seconds, "ratio_to_implicit": seconds / base}
                 for name, seconds in medians.items()]
    table = format_table(["batch", "channels", "map", "variant", "ms", "x implicit"],
                         [[r["batch"], r["channels"], f"{r['size']}x{r['size']}", r["variant"],
                           f"{r['ms']:.2f}", f"{r['ratio_to_implicit']:.2f}"] for r in rows])
    print(f"{device_name(device)}: the two hands, forward+backward, channels-last")
    print(table)
    path = write_record(RESULTS, "depthwise", "depthwise hands: forward+backward", device, rows,
                        table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
